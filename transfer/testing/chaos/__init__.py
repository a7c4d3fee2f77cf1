"""The chaos runner: real `transfer serve` and `transfer send` processes, real SIGKILLs.

`scripts/chaos.py` is its command line (docs/reliability.md); `tests/test_chaos.py`
calls `run_chaos` directly. For each of `--cycles` cycles a `random.Random(seed)` picks a
side and a moment (`moments`), the runner waits for that moment by polling logs and the
server's `uploads/` directory (never by sleeping), SIGKILLs the side and restarts it on
the same directories (`run`). Then the sender is restarted until it exits 0, the server
gets SIGTERM, and the invariants are checked (`invariants`, `offsets`): any failure is a
violation and `scripts/chaos.py` exits 1. Everything is bounded in time and talks to
127.0.0.1 only.

It lives in `transfer.testing`, beside the process harness and the fault proxy it
drives, because tests import it as well as the script, and the import contracts then
hold it to what `transfer.testing` may use (never `transfer.cli`: every `transfer` it
runs is a child process).

Modules: `config` (ChaosConfig, ChaosReport), `moments` (the kill moments and their
probes), `uploads` (the server's `.part` files watched), `offsets` (the acknowledged
offset invariant), `run` (one run's processes and cycles), `invariants` (the end
state), `cli` (flags and `run_chaos`).
"""

from transfer.testing.chaos.cli import build_parser, main, run_chaos
from transfer.testing.chaos.config import ChaosConfig, ChaosError, ChaosReport
from transfer.testing.chaos.invariants import check_invariants
from transfer.testing.chaos.run import Run

__all__ = [
    "ChaosConfig",
    "ChaosError",
    "ChaosReport",
    "Run",
    "build_parser",
    "check_invariants",
    "main",
    "run_chaos",
]
