"""Benchmarks: the project's own commands, each comparing against baselines run in the same process."""
