"""`python -m transfer` is the `transfer` command.

Run by a Python that lacks the project's dependencies (the system `python3` rather than
`.venv`'s), it says so in one line instead of a traceback; an import error inside
`transfer` itself is a bug and still raises.
"""

import sys

from transfer.cli import main

try:
    # The CLI imports a subcommand's dependencies only when it runs (transfer.cli).
    status = main()
except ModuleNotFoundError as exc:
    if exc.name is None or exc.name.partition(".")[0] == "transfer":
        raise
    sys.exit(
        f"transfer is not installed for this Python ({sys.executable}: no module "
        f"{exc.name!r}): run `bash scripts/test.sh` once, then `source .venv/bin/activate` "
        "(or use .venv/bin/python -m transfer)"
    )

raise SystemExit(status)
