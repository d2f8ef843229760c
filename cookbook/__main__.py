from cookbook.cli import main

raise SystemExit(main())
