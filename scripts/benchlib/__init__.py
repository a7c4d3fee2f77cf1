"""The benchmark behind `scripts/bench.py` (docs/benchmarks.md), one module per concern.

Why here and not in `transfer.testing`: the benchmark measures `transfer` only through
processes, and `--transfer-src` swaps the package those processes import for another
tree (a `git archive` snapshot). The measuring side must not be part of the measured
package, nor be installed with it: it reads the checkout's git HEAD, may apt-get
nginx, and its sink child (`sink.py`) must start without importing `transfer` at all.
It still starts every child through the one process harness, `transfer.testing`.

Modules:
- `plan`: sizes and units (`FULL`, `QUICK`), hash-pass counts.
- `measure`: a child run to its end with wall time, CPU (wait4) and peak RSS (VmHWM).
- `context`: `Bench`, a run's inputs and samples; `server()` and `send()`.
- `references`: dd, xxh3, start-up, the sink, nginx, and curl into `transfer serve`.
- `nginx`: finding, installing and starting nginx as a WebDAV reference.
- `sink`: the minimal aiohttp PUT sink, run as a script of its own.
- `scenarios`: S1-S6.
- `longrun`: S7-S8 (issue 15), the server soak and the sender's journal compaction;
  `soak`: the soak itself, also a script of its own.
- `peers`: P1/P2, `send --protocol tus` to `transfer serve`, `@tus/server` and tusd.
- `rows`, `tables`: the report's rows and targets; `facts`: the machine and the report.
- `cli`: flags, rounds, `main`.
"""
