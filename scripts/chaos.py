"""Chaos runner: real `transfer serve` and `transfer send` processes, real SIGKILLs.

    python scripts/chaos.py --cycles 200 --seed 1            # the long run (docs/reliability.md)
    python scripts/chaos.py --cycles 20 --fault-rate 0.2     # with the fault proxy in between

Starts the server (first on `--port 0`, then always on the port it announced, so the
sender's `--server` URL stays valid) and the sender, each logging JSON lines into the work
directory (appended across restarts). Optionally a `FaultProxy` (in a thread) sits between
them. For each of `--cycles` cycles a `random.Random(seed)` picks a side and a moment, the
runner waits for that moment by polling logs and the server's `uploads/` directory (never
by sleeping), SIGKILLs the side and restarts it on the same directories. The moments
(sender: generation, mid_chunk, before_confirm; server: mid_chunk, publish; both:
random) are described in `transfer/testing/chaos/moments.py`.

Then the sender is restarted until it exits 0 (within a deadline), the server gets SIGTERM,
and these invariants are checked; any failure is a violation and the exit status is 1:

- the journal (`transfer status --json`) holds exactly `--count` files, indices 0..count-1
  of one run, every one confirmed with the server's digest equal to its own;
- every journaled file is in `DATA_DIR/files/`, byte-identical to its spool copy; every
  name there is a journaled file (nothing partial or temporary); no `.part` is left for it;
- no upload id was completed twice (`transfer report --json` over both logs);
- an acknowledged offset never goes backwards: after every server restart each partial
  upload's `HEAD` offset is at least the highest offset the sender logged as acknowledged,
  and no chunk is ever sent from below an offset acknowledged earlier.

The last stdout line is one JSON object: cycles, kills per side, files expected,
confirmed, lost, corrupted, duplicated, bytes re-sent, wall time, violations. Everything
is bounded in time and talks to 127.0.0.1 only.

`--protocol native|tus|ietf` (default native) picks the sender's upload protocol.

The runner itself is the package `transfer.testing.chaos` (config, moments, uploads,
offsets, run, invariants, cli), built on the one process harness
`transfer.testing.harness`; this file is only its entry point.
"""

from __future__ import annotations

import sys

from transfer.testing.chaos import main

if __name__ == "__main__":
    sys.exit(main())
