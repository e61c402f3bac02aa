"""Rolling-window and exponential kernels on float64 arrays, causal by construction.

Every kernel's value at index i depends only on ``x[: i + 1]``. A window with fewer than `w`
values, or with a NaN in it, gives NaN. Short arrays (a live window of a few hundred bars) use
exact per-window arithmetic with no per-call overhead; long ones use O(n) algorithms (re-centred
block-wise cumulative sums for means and variances, pandas for maxima and minima). Both agree
to ~1e-12 relative, so a feature computed on a trailing window equals the one computed on the
full history.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import as_strided
from scipy.signal import lfilter

_SMALL = 400_000  # n × w below which exact per-window arithmetic is the cheaper way


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """Read-only (n − w + 1, w) view of every window (a lean sliding_window_view)."""
    x = np.ascontiguousarray(x)
    return as_strided(x, shape=(x.size - w + 1, w), strides=(x.strides[0], x.strides[0]), writeable=False)


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    out[n - values.size :] = values
    return out


def _block_moments(x: np.ndarray, w: int, with_var: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Rolling mean (and population variance) from cumulative sums, block by block.

    Each block of rows is re-centred on a value inside it before summing, so the sums stay
    small and the variance keeps ~1e-12 relative accuracy even for price levels (mean² ≫ var).
    Block boundaries depend only on the row index, so row i never depends on rows after it.
    """
    n = x.size
    mean = np.full(n, np.nan)
    var = np.full(n, np.nan) if with_var else None
    block = 1 << 15
    for start in range(w - 1, n, block):
        lo, hi = start - (w - 1), min(start + block, n)
        chunk = x[lo:hi]
        missing = np.isnan(chunk)
        finite = chunk[~missing]
        if finite.size == 0:
            continue
        y = np.where(missing, 0.0, chunk - finite[0])
        c1 = np.concatenate(([0.0], np.cumsum(y)))
        s1 = (c1[w:] - c1[:-w]) / w
        bad = np.concatenate(([0], np.cumsum(missing)))
        has_nan = (bad[w:] - bad[:-w]) > 0
        m = s1 + finite[0]
        m[has_nan] = np.nan
        mean[start:hi] = m
        if var is not None:
            c2 = np.concatenate(([0.0], np.cumsum(y * y)))
            v = np.maximum((c2[w:] - c2[:-w]) / w - s1 * s1, 0.0)
            v[has_nan] = np.nan
            var[start:hi] = v
    return mean, var


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    if x.size < w:
        return np.full(x.size, np.nan)
    if x.size * w <= _SMALL:
        return _pad(_windows(x, w).mean(axis=1), x.size)
    return _block_moments(x, w, with_var=False)[0]


def rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    """Population standard deviation (ddof=0) over the last `w` values."""
    if x.size < w:
        return np.full(x.size, np.nan)
    if x.size * w <= _SMALL:
        return _pad(_windows(x, w).std(axis=1), x.size)
    var = _block_moments(x, w, with_var=True)[1]
    return np.sqrt(var)  # type: ignore[arg-type]


def _rolling_extreme(x: np.ndarray, w: int, how: str) -> np.ndarray:
    """Rolling ``max`` or ``min`` over the last `w` values (NaN in a window gives NaN)."""
    if x.size < w:
        return np.full(x.size, np.nan)
    if x.size * w <= _SMALL:
        return _pad(getattr(_windows(x, w), how)(axis=1), x.size)
    return getattr(pd.Series(x).rolling(w), how)().to_numpy()


def rolling_max(x: np.ndarray, w: int) -> np.ndarray:
    return _rolling_extreme(x, w, "max")


def rolling_min(x: np.ndarray, w: int) -> np.ndarray:
    return _rolling_extreme(x, w, "min")


def ema(x: np.ndarray, alpha: float) -> np.ndarray:
    """y[i] = α·x[i] + (1−α)·y[i−1], started at the first non-NaN value (NaN before it).

    NaNs must only lead the series (as in lagged inputs).
    """
    out = np.full(x.size, np.nan)
    valid = np.flatnonzero(~np.isnan(x))
    if valid.size == 0:
        return out
    first = int(valid[0])
    tail = x[first:]
    out[first:], _ = lfilter([alpha], [1.0, alpha - 1.0], tail, zi=[(1.0 - alpha) * tail[0]])
    return out


def ema_memory(alpha: float, tolerance: float = 1e-12) -> int:
    """Bars after which an EMA has forgotten its start to `tolerance` (relative)."""
    return int(math.ceil(math.log(tolerance) / math.log(1.0 - alpha)))


def lag(x: np.ndarray, k: int) -> np.ndarray:
    """x shifted `k` bars into the future (value at i is x[i − k]); NaN for the first k."""
    out = np.full(x.size, np.nan)
    if k < x.size:
        out[k:] = x[: x.size - k]
    return out
