"""Tools for testing `transfer` as it runs; only tests and scripts import this package.

- `harness` (with `children`, `logs`, `polling`): the one way to start `python -m
  transfer serve|send ...` (or any command) as a child process, read the URL it
  announces, follow its JSON log, wait for a condition with a deadline, kill -9 it or
  stop it with SIGTERM, and leave no child behind; `free_port`.
- `faultproxy` (and `proxythread`, for synchronous callers): a seeded TCP proxy that
  cuts, resets, stalls, delays or throttles connections.
- `chaos`: the chaos runner behind `scripts/chaos.py`.

The corruptor (`--inject-corruption`) is not here: it is part of the sender
(`transfer.sender.client.Corruptor`), which may not import this package.

May import anything in `transfer` except `cli`: every `transfer` it runs is a child
process (enforced by the import contracts in pyproject.toml).
"""
