"""`python -m transfer` is the `transfer` command."""

from transfer.cli import main

raise SystemExit(main())
