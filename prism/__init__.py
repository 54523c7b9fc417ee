"""PRISM post-training pipeline: the algorithm code and the per-stage engines run by the workflow."""

__version__ = "0.1.0"
