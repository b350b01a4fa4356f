"""Sorted distinct values of an id array, by one sort.

``np.unique`` in numpy 2.3+ hashes its input and sorts the result; on the id arrays analysis
works with (10^3 to 10^6 int64 ids) that is 6-16x slower than sorting once and keeping each
first of a run: on EfficientNet-B0 its calls took ~15 ms of a conversion. Same results as
``np.unique(values)`` and ``np.unique(values, return_counts=True)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["unique", "unique_counts"]


def _firsts(values: Any) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(np.ravel(values))
    first = np.empty(ordered.size, bool)
    if ordered.size:
        first[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered, first


def unique(values: Any) -> np.ndarray:
    """``np.unique(values)``: the distinct values, sorted, flattened."""
    ordered, first = _firsts(values)
    return ordered[first]


def unique_counts(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_counts=True)``."""
    ordered, first = _firsts(values)
    starts = np.flatnonzero(first)
    return ordered[starts], np.diff(np.append(starts, ordered.size))
