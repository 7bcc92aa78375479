from usbwire.cli import main

raise SystemExit(main())
