"""`@tus/server` with `@tus/file-store` under Node (tests/node-tus-server): a real
third-party tus server, for the tests and the benchmark's peer comparison alike.

Node and tests/node-tus-server/node_modules come from scripts/test.sh
(`npm ci --prefix tests/node-tus-server`). The server listens on 127.0.0.1, port 0, and
announces `{"event": "listening", "port": N}` on stdout once it accepts connections.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

NODE_SERVER = Path(__file__).resolve().parents[2] / "tests" / "node-tus-server"


def node_missing() -> str | None:
    """Why the Node server cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_SERVER / "node_modules" / "@tus" / "server").is_dir():
        return "tests/node-tus-server/node_modules is missing: run scripts/test.sh"
    return None


def node_argv(store: Path) -> list[str]:
    """The command serving `store` (its file store's directory)."""
    return ["node", str(NODE_SERVER / "server.mjs"), str(store)]


def announced_port(out: Path) -> int | None:
    """The port announced on the server's stdout (written to `out`), None before."""
    lines = out.read_text().splitlines() if out.exists() else []
    return next((int(json.loads(line)["port"]) for line in lines if '"port"' in line), None)
