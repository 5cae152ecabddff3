from meshscope.cli import main

raise SystemExit(main())
