"""Rolling-window and exponential kernels on float64 arrays, causal by construction.

Every kernel's value at index i depends only on ``x[: i + 1]``. A window with fewer than `w`
values, or with a NaN in it, gives NaN. Short arrays (a live window of a few hundred bars) use
exact per-window arithmetic with no per-call overhead; long ones use pandas' O(n) online
algorithms. Both agree to ~1e-15 relative, so a feature computed on a trailing window equals
the one computed on the full history.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import as_strided
from scipy.signal import lfilter

_SMALL = 400_000  # n × w below which exact per-window arithmetic is cheaper than pandas


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """Read-only (n − w + 1, w) view of every window (a lean sliding_window_view)."""
    x = np.ascontiguousarray(x)
    return as_strided(x, shape=(x.size - w + 1, w), strides=(x.strides[0], x.strides[0]), writeable=False)


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    out[n - values.size :] = values
    return out


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    if x.size < w:
        return np.full(x.size, np.nan)
    if x.size * w <= _SMALL:
        return _pad(_windows(x, w).mean(axis=1), x.size)
    return pd.Series(x).rolling(w).mean().to_numpy()


def rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    """Population standard deviation (ddof=0) over the last `w` values."""
    if x.size < w:
        return np.full(x.size, np.nan)
    if x.size * w <= _SMALL:
        return _pad(_windows(x, w).std(axis=1), x.size)
    return np.sqrt(np.maximum(pd.Series(x).rolling(w).var(ddof=0).to_numpy(), 0.0))


def rolling_max(x: np.ndarray, w: int) -> np.ndarray:
    if x.size < w:
        return np.full(x.size, np.nan)
    if x.size * w <= _SMALL:
        return _pad(_windows(x, w).max(axis=1), x.size)
    return pd.Series(x).rolling(w).max().to_numpy()


def rolling_min(x: np.ndarray, w: int) -> np.ndarray:
    if x.size < w:
        return np.full(x.size, np.nan)
    if x.size * w <= _SMALL:
        return _pad(_windows(x, w).min(axis=1), x.size)
    return pd.Series(x).rolling(w).min().to_numpy()


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
