"""Benchmark `transfer` against references measured in the same run (issue 5).

    python scripts/bench.py [--quick] [--repeat N] [--out FILE] [--install-nginx]

Every scenario runs on loopback (127.0.0.1) with real `transfer serve` / `transfer send`
processes. The repeats are interleaved: each round runs every reference and every
scenario once, so a slow spell of the (virtual) disk or a busy neighbour hits references
and scenarios alike; the table shows medians of the rounds and ratios of medians.

References: `dd` with and without `conv=fsync`; in-process xxh3-128; a minimal aiohttp
PUT sink fed by `curl -T` (with and without one fsync at the end); nginx WebDAV PUT fed
by `curl -T` (with and without a `sync` inside the timing) when nginx is installed.

Scenarios (issue 5's targets): S1 one large file with fsync, by chunk size; S2 the same
with `--fsync never`; S3 CPU per GiB and the hashing share; S4 many small files and the
brief's schedule; S5 peak RSS; S6 bytes re-sent after a `kill -9` of the sender.
Peers (issue 13, `benchlib/peers.py`): P1 the S4 job and P2 the large file, both through
`transfer send --protocol tus`, to `transfer serve` (fsync always and never), to
`@tus/server` under Node (tests/node-tus-server) and to tusd when `$TUSD` names a binary.

Invariants:
- `os.sync()` runs before every timed run, so no run pays for its predecessor's writeback.
- Every child is started through the one process harness (`transfer.testing.harness`,
  children in their own session), which SIGTERMs and then SIGKILLs (the child's whole
  process group) whatever is still running when the script ends.
- Nothing is asserted: figures and targets are reported, never enforced.

The benchmark itself is the package `scripts/benchlib/` (see its docstring for the
module map); this file is only its entry point.
"""

from __future__ import annotations

import sys

from benchlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
