"""Benchmarks: `make bench` prints one JSON line per figure (DESIGN.md §8)."""
