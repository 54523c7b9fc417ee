"""95% bootstrap intervals over a benchmark's samples, from the per-sample values its record keeps.

A row's average resamples every benchmark on its own and averages the resampled means, as the table
averages its columns; a difference between two variants resamples the same items for both (paired),
since every variant answers the same benchmark items.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
SEED = 0


def _resampled_means(values: list[float], indices: np.ndarray) -> np.ndarray:
    return 100 * np.asarray(values, dtype=float)[indices].mean(axis=1)


def _indices(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(RESAMPLES, n))


def interval(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def mean_interval(columns: list[list[float]]) -> tuple[float, float]:
    """The interval of the unweighted mean over columns, each a benchmark's per-sample values (0-1)."""
    rng = np.random.default_rng(SEED)
    draws = [_resampled_means(values, _indices(len(values), rng)) for values in columns]
    return interval(np.mean(draws, axis=0))


def difference_interval(first: list[list[float]], second: list[list[float]]) -> tuple[float, float]:
    """The interval of mean(first) - mean(second) over columns, items resampled together (paired)."""
    rng = np.random.default_rng(SEED)
    draws = []
    for a, b in zip(first, second, strict=True):
        if len(a) != len(b):
            raise ValueError(f"a paired difference needs the same items; got {len(a)} and {len(b)} samples")
        indices = _indices(len(a), rng)
        draws.append(_resampled_means(a, indices) - _resampled_means(b, indices))
    return interval(np.mean(draws, axis=0))
