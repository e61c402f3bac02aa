"""NaN-aware column statistics for imputation and standardisation, fitted on training rows."""

from __future__ import annotations

import warnings

import numpy as np


def center_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the median (0 where a column is all NaN, e.g. a long-window feature still
    warming up over the whole window) and the standard deviation (1 where it is 0 or NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
        center = np.nan_to_num(np.nanmedian(X, axis=0))
        spread = np.nanstd(X, axis=0)
    return center, np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
