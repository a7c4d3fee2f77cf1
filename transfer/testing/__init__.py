"""Tools for testing `transfer` as it runs: the fault proxy, the corruptor and the one
process harness used by the tests, the chaos runner and the benchmarks.

May import anything in `transfer` except `cli`; only tests and scripts import it.
"""
