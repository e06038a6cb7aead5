"""Benchmarks and demos for fastrnn (run from the repository root, e.g. `python -m bench.demo`)."""
