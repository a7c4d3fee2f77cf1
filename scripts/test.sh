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
echo "== npm (tests/js: tus-js-client)"
# The JavaScript clients the interop tests drive; `npm ci` from the committed lock file,
# skipped when node_modules already matches it. Without node/npm the tests that need
# them skip, or fail under CI=true: say so loudly here.
if command -v npm >/dev/null && command -v node >/dev/null; then
  if [ ! -f tests/js/node_modules/.package-lock.json ] \
    || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
  fi
else
  echo "!! node/npm not found: the tus-js-client tests will skip (and FAIL under CI=true)" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
fi
echo "== ruff"
.venv/bin/ruff check transfer tests scripts
.venv/bin/ruff format --check transfer tests scripts
echo "== import contracts"
.venv/bin/lint-imports
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
