#!/usr/bin/env bash
# The README's main command: the 100-file job with defaults. Sets up .venv if missing,
# starts `transfer serve` on a free port with a temporary data dir, runs `transfer send`
# to the end, verifies every file against the server, and stops the server.
# Extra arguments go to `transfer send` (e.g. --count 10 --max-interval 100ms); the
# banner states the parameters the sender will really use, read by its own parser.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c 'import transfer.cli' 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e .
fi
# A bad argument fails here, in one line, before anything starts.
plan=$(.venv/bin/python - "$@" <<'PY'
import sys
from transfer.cli import build_parser
from transfer.cli.progress import plan
args = build_parser().parse_args(["send", "--server", "-", "--spool-dir", "-", *sys.argv[1:]])
print(plan(args))
PY
)
work=$(mktemp -d -t transfer-demo.XXXXXX)
server_log="$work/server.log"
.venv/bin/transfer serve --port 0 --data-dir "$work/server" --log-file "$server_log" &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(grep -o '"url": "[^"]*"' "$server_log" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "demo: the server did not start:"; cat "$server_log"; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "demo: the server did not announce its URL"; exit 1; }
echo "server: $url"
echo "  files: $work/server/files  (partial uploads: $work/server/uploads)"
echo "  log:   $server_log"
echo "sender: $plan"
echo "  spool: $work/spool"
echo "  log:   $work/sender.log"
echo "  (logs are JSON lines; \`.venv/bin/transfer report $work/sender.log $server_log\` sums them up)"
.venv/bin/transfer send --server "$url" --spool-dir "$work/spool" --log-file "$work/sender.log" "$@"
.venv/bin/transfer verify --server "$url" --spool-dir "$work/spool" --log-file "$work/verify.log"
echo "done: files in $work/server/files, spool $work/spool, logs in $work"
