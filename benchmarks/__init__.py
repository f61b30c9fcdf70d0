"""Benchmarks: measured speed of every hot path, as ratios against a baseline run in the same process."""
