"""Fault-injection suite: `python -m chaos` (see docs/chaos.md)."""
