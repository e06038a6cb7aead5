"""fastrnn's benchmarks: the CLI (`python -m bench`, see bench/cli.py) and the pytest-benchmark micro-suite."""
