"""Fault-injection suite: `python -m chaos` (see README, "Fault injection")."""
