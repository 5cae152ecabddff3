"""meshscope's shared contracts: what the relay, collector and dashboard all speak.

The flow record format, settings parsing, the server runner, backoff, topic
grammar, logging and metrics live here. This package imports none of
``router``, ``collector``, ``dashboard`` or ``meshscope``, so the arrows run one
way: meshscope -> dashboard -> collector -> meshcore, and router -> meshcore.
"""
