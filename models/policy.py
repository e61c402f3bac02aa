"""The threshold policy: a model's probabilities → long, short or flat.

One rule for every place that turns probabilities into positions: the evaluation backtest
(symmetric thresholds from ``models.backtest.threshold``), each tenant's signals (its own
``long_above`` / ``short_below``) and live scoring (which stores the tenant's signal).

What the probability means decides which sides it can give (`for_label_kind`):

* **direction** — p = P(up), and 1 − p = P(down): long above ``long_above``, short below
  ``short_below``.
* **triple_barrier** — p = P(take-profit touched first). A low p says the long trade's
  take-profit is unlikely to come first (the stop or the vertical barrier is): a reason not to
  go long, *not* a prediction that a short would pay. So this kind is long or flat, never
  short.
* **up_flat_down** — p = [P(down), P(flat), P(up)]: the same rule on the *net* probability of
  up over down, P(up) − P(down), which for binary labels is 2p − 1: long when
  (1 + P(up) − P(down)) / 2 > ``long_above``, short when it is < ``short_below`` — i.e. when
  P(up) − P(down) > 0.10, or P(down) − P(up) > 0.10, at the default 0.55 / 0.45. With a
  symmetric move size the expected move is proportional to P(up) − P(down), as to 2p − 1 for
  a binary model, so one pair of thresholds means the same in both. (Comparing P(up) itself
  with 0.55 would almost never signal: the three classes sit near 1/3 each.) Probability on
  flat lowers both sides' net: a probable flat move is flat. Both sides cannot fire at once
  (``short_below ≤ long_above``).
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
    long_only: bool = False  # never short (triple-barrier probabilities: see module)

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

    @classmethod
    def for_label_kind(cls, label_kind: str, long_above: float, short_below: float) -> ThresholdPolicy:
        """The policy for probabilities of `label_kind` (see module): triple barrier never
        shorts; direction and up/flat/down use both thresholds."""
        return cls(long_above, short_below, long_only=label_kind == "triple_barrier")

    def sides(self, p: np.ndarray) -> np.ndarray:
        """+1 (long), −1 (short) or 0 (flat) per row, as float: `p` is P(label 1) per row
        (n,), or [P(down), P(flat), P(up)] per row (n, 3)."""
        p = np.asarray(p, dtype=float)
        if p.ndim == 2:  # three classes: the net probability of up over down (see module), as
            q = (1.0 + p[:, 2] - p[:, 0]) / 2.0  # the binary P(up) with the same net, (1 + net) / 2
            up, short = q > self.long_above, q < self.short_below
        else:
            up, short = p > self.long_above, p < self.short_below
        if self.long_only:
            short = np.zeros_like(up)
        return np.where(up, 1.0, np.where(short, -1.0, 0.0))

    def signal(self, p: float | np.ndarray) -> str:
        """``long``, ``short`` or ``flat`` for one probability (or one row of three)."""
        row = np.asarray(p, dtype=float)
        side = self.sides(row[None, :] if row.ndim == 1 else row[None])[0]
        return SIGNALS[int(side) + 1]
