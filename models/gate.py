"""The promotion decision: may a challenger replace the champion? A pure function of labels
and probabilities on the same holdout rows — no MLflow; `pipelines.registry` only records the
decision and moves the aliases.

Rules, in order:

1. **Calibration.** The challenger's ECE must be within ``max(max_ece, noise floor)``, the
   floor being the 95th percentile of the ECE a *perfectly calibrated* model with the
   challenger's own probabilities would show on these rows (labels overlapping over
   `horizon` bars within each of `groups`; `models.metrics.ece_noise_floor`): on a small
   holdout even the true probabilities exceed a fixed limit.
2. **Beat the champion.** With a champion, the challenger's log loss must be strictly lower on
   the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.metrics import ece, ece_noise_floor, log_loss


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and the figures it decided on. Versions are filled in by the
    adapter that knows them (``None`` when decided on arrays alone)."""

    promoted: bool
    reason: str
    challenger_log_loss: float
    champion_log_loss: float | None
    challenger_ece: float
    ece_limit: float
    ece_noise_floor: float
    rows: int
    challenger: str | None = None
    champion: str | None = None

    def tags(self) -> dict[str, str]:
        """The decision as MLflow version tags (``gate_*``)."""
        return {
            "gate_decision": "promoted" if self.promoted else "rejected",
            "gate_reason": self.reason,
            "gate_challenger_log_loss": f"{self.challenger_log_loss:.6f}",
            "gate_challenger_ece": f"{self.challenger_ece:.6f}",
            "gate_ece_limit": f"{self.ece_limit:.6f}",
            "gate_ece_noise_floor": f"{self.ece_noise_floor:.6f}",
            "gate_champion_version": self.champion or "",
            "gate_rows": str(self.rows),
            "gate_champion_log_loss": (
                "" if self.champion_log_loss is None else f"{self.champion_log_loss:.6f}"
            ),
        }


def decide(
    y: np.ndarray,
    p_challenger: np.ndarray,
    p_champion: np.ndarray | None = None,
    *,
    max_ece: float,
    horizon: int = 1,
    groups: np.ndarray | None = None,
) -> GateDecision:
    """Decide on holdout labels `y` (0/1, rows in time order within each group) and the
    challenger's (and, if there is one, the champion's) P(label 1) on the same rows."""
    y = np.asarray(y, dtype=float)
    p_new = np.asarray(p_challenger, dtype=float)
    if p_new.shape != y.shape or (p_champion is not None and np.shape(p_champion) != y.shape):
        raise ValueError(f"labels and probabilities differ in shape: {y.shape} vs {p_new.shape}")
    if y.size == 0:
        raise ValueError("no holdout rows to gate on")
    new_ll, new_ece = log_loss(y, p_new), ece(y, p_new)
    floor = ece_noise_floor(p_new, horizon, groups)
    limit = max(max_ece, floor)
    old_ll = None if p_champion is None else log_loss(y, np.asarray(p_champion, dtype=float))
    if new_ece > limit:
        promoted, reason = (
            False,
            f"challenger ECE {new_ece:.4f} above the limit {limit:.4f} (max_ece {max_ece}; "
            f"sampling-noise floor on these {len(y):,} rows {floor:.4f})",
        )
    elif old_ll is not None and new_ll >= old_ll:
        promoted, reason = False, f"challenger log loss {new_ll:.5f} does not beat champion {old_ll:.5f}"
    elif old_ll is None:
        promoted, reason = True, "no champion yet"
    else:
        promoted, reason = True, f"challenger log loss {new_ll:.5f} beats champion {old_ll:.5f}"
    return GateDecision(promoted, reason, new_ll, old_ll, new_ece, limit, floor, int(len(y)))
