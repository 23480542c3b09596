from tracelet.cli import main

raise SystemExit(main())
