"""Benchmarks against baselines (`make bench`, `python -m bench [--smoke] [--only NAME]`)."""
