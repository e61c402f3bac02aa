"""The threshold policy: a probability of the label (P(up)) → long, short or flat.

One rule for every place that turns probabilities into positions: the evaluation backtest
(symmetric thresholds from ``models.backtest.threshold``), each tenant's signals (its own
``long_above`` / ``short_below``) and live scoring (which stores the tenant's signal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGNALS = ("short", "flat", "long")  # index = side + 1


@dataclass(frozen=True)
class ThresholdPolicy:
    """Long when p > `long_above`, short when p < `short_below`, flat otherwise (boundaries
    are flat). Needs 0 ≤ short_below ≤ long_above ≤ 1."""

    long_above: float = 0.55
    short_below: float = 0.45

    def __post_init__(self) -> None:
        if not (0.0 <= self.short_below <= self.long_above <= 1.0):
            raise ValueError(
                f"thresholds need 0 <= short_below ({self.short_below}) <= "
                f"long_above ({self.long_above}) <= 1"
            )

    @classmethod
    def symmetric(cls, threshold: float) -> ThresholdPolicy:
        """Long above `threshold`, short below 1 − `threshold` (`threshold` ≥ 0.5)."""
        if not 0.5 <= threshold <= 1.0:
            raise ValueError(f"a symmetric threshold must be in [0.5, 1], got {threshold}")
        return cls(long_above=threshold, short_below=1.0 - threshold)

    def sides(self, p: np.ndarray) -> np.ndarray:
        """+1 (long), −1 (short) or 0 (flat) per probability, as float."""
        p = np.asarray(p, dtype=float)
        return np.where(p > self.long_above, 1.0, np.where(p < self.short_below, -1.0, 0.0))

    def signal(self, p: float) -> str:
        """``long``, ``short`` or ``flat`` for one probability."""
        if p > self.long_above:
            return "long"
        if p < self.short_below:
            return "short"
        return "flat"
