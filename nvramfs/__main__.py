from nvramfs.cli import main

raise SystemExit(main())
