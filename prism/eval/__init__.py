"""Benchmarks: one run per model variant, normalised to one JSON per benchmark."""
