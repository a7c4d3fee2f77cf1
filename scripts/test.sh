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
echo "== npm (tests/js: tus-js-client; tests/node-tus-server: @tus/server)"
# The JavaScript clients the interop tests drive; `npm ci` from the committed lock file,
# skipped when node_modules already matches it. Without node/npm the tests that need
# them skip, or fail under CI=true: say so loudly here.
if command -v npm >/dev/null && command -v node >/dev/null; then
  if [ ! -f tests/js/node_modules/.package-lock.json ] \
    || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
  fi
  # @tus/server with @tus/file-store: the third-party tus server `send --protocol tus`
  # is tested against (tests/test_send_tus.py), in its own folder and lock file.
  if [ ! -f tests/node-tus-server/node_modules/.package-lock.json ] \
    || [ tests/node-tus-server/package-lock.json -nt tests/node-tus-server/node_modules/.package-lock.json ]; then
    npm ci --prefix tests/node-tus-server --no-audit --no-fund --loglevel=error
  fi
else
  echo "!! node/npm not found: the tus-js-client and @tus/server tests will skip (and FAIL under CI=true)" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
fi
echo "== browser (tests/browser: Debian's Chromium, playwright-core, tus-js-client)"
# tests/test_browser.py drives the system Chromium; playwright-core never downloads a
# browser. Chromium comes from Debian's packages, installed only as root and only when
# missing; anything still missing skips those tests, or fails them under CI=true.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
      || echo "!! apt-get could not install chromium: the browser tests will skip" \
        "(and FAIL under CI=true)" >&2
  else
    echo "!! /usr/bin/chromium missing and not root: the browser tests will skip" \
      "(and FAIL under CI=true); install it with: sudo apt-get install chromium" >&2
  fi
fi
echo "== nginx (tests/test_cluster.py: Debian's nginx-light in front of the replicas)"
# The cluster tests (and scripts/cluster.sh) put nginx in front of three replicas; it
# comes from Debian's packages, installed only as root and only when missing; without it
# those tests skip, or fail under CI=true.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends nginx-light \
      || echo "!! apt-get could not install nginx-light: the cluster tests will skip" \
        "(and FAIL under CI=true)" >&2
  else
    echo "!! nginx missing and not root: the cluster tests will skip" \
      "(and FAIL under CI=true); install it with: sudo apt-get install nginx-light" >&2
  fi
fi
if command -v npm >/dev/null && command -v node >/dev/null; then
  if [ ! -f tests/browser/node_modules/.package-lock.json ] \
    || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund \
      --loglevel=error
  fi
else
  echo "!! node/npm not found: the browser tests will skip (and FAIL under CI=true)" >&2
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
