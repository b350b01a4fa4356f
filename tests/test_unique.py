"""slimify.analysis.unique gives np.unique's answers (it replaces np.unique for speed)."""
from __future__ import annotations

import numpy as np
import pytest

from slimify.analysis.unique import unique, unique_counts


@pytest.mark.parametrize("values", [
    np.zeros(0, np.int64), np.array([5]), np.array([3, 1, 3, 2, 1, 1]), np.arange(12).reshape(3, 4) % 5,
    np.random.default_rng(0).integers(-50, 50, 10_000), [4, 4, 0], np.array([2.5, -1.0, 2.5]),
])
def test_same_as_numpy(values) -> None:
    want, counts = np.unique(values, return_counts=True)
    got = unique(values)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    got, got_counts = unique_counts(values)
    assert np.array_equal(got, want) and np.array_equal(got_counts, counts)
