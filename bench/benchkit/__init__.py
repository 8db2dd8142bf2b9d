"""Helpers shared by the benches in bench/ (not a bench: `make bench` runs only bench/*.py)."""
