#!/usr/bin/env bash
# The README's test command: sets up .venv if missing, installs the package with
# its dev extra, then runs ruff, the import contracts, mypy --strict and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
echo "== ruff"
.venv/bin/ruff check transfer tests scripts
.venv/bin/ruff format --check transfer tests scripts
echo "== import contracts"
.venv/bin/lint-imports
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
