from targetd.cli import main

raise SystemExit(main())
