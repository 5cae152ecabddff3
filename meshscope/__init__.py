"""meshscope command line and the ``up`` supervisor."""
