"""Causal features and labels: pure functions from bars to frames (no I/O, no orchestration)."""
