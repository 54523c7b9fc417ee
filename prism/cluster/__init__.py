"""Cluster-side helpers: the cost plan (and, later, Slurm/Ray bring-up)."""
