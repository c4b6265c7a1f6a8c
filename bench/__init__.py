"""Benchmarks: `ghostls bench` (engines.py) and the scripts beside it, runnable as files too."""
