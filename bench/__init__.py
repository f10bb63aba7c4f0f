"""Benchmarks for dragonfly: real processes, real servers (see bench/README.md).

Run with ``python -m bench.run`` (``make bench``); ``--quick`` for a smoke run.
"""
