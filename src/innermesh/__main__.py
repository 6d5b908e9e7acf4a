from innermesh.cli.main import main

raise SystemExit(main())
