"""The promotion decision: may a challenger replace the champion? A pure function of labels
and probabilities on the same holdout rows — no MLflow; `pipelines.registry` only records the
decision and moves the aliases.

Every rule must hold (the reason names each one that does not):

1. **Skill.** The challenger's log-loss improvement over the base rate (always predicting the
   holdout's own frequency of label 1 — of each class, for three-class models: the best
   constant in hindsight, the strictest one) must
   have a lower confidence bound above zero. The interval is a block bootstrap over stretches
   of calendar time (`models.uncertainty`: UTC days, longer when a label spans more than a
   day, every symbol of a stretch in one block), so overlapping labels and symbols moving
   together count as what they are. The first challenger too: "no model has skill here" is an
   outcome, recorded as ``gate_skill = none``.
2. **Calibration.** The challenger's ECE (classwise for three-class models) must be within
   ``max(max_ece, min(noise floor, ece_ceiling))``, the floor being the 95th percentile of
   the ECE a *perfectly calibrated* model with the challenger's own probabilities would show
   on these rows
   (`models.metrics.ece_noise_floor`); the ceiling bounds how far that floor may raise the
   limit, so a small or heavily overlapping holdout cannot wave calibration through.
3. **Beat the champion.** With a champion, the challenger's log-loss improvement over it,
   paired on the same rows, must have a lower confidence bound above zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.metrics import base_rate, constant, ece, ece_noise_floor, is_multiclass, log_loss, row_log_loss
from models.uncertainty import DAY, Interval, block_ids, bootstrap_mean


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and the figures it decided on. Versions are filled in by the
    adapter that knows them (``None`` when decided on arrays alone). `skill`: the challenger's
    log-loss improvement over the base rate (nats per row, positive = better) with its
    interval; `vs_champion`: its improvement over the champion on the same rows."""

    promoted: bool
    reason: str
    challenger_log_loss: float
    champion_log_loss: float | None
    challenger_ece: float
    ece_limit: float
    ece_noise_floor: float
    rows: int
    skill: Interval
    base_rate: float | tuple[float, ...]  # P(label 1); three-class: each class's frequency
    vs_champion: Interval | None = None
    ece_ceiling: float = 1.0
    challenger: str | None = None
    champion: str | None = None

    @property
    def has_skill(self) -> bool:
        """The improvement over the base rate is significantly above zero."""
        return self.skill.low > 0

    def tags(self) -> dict[str, str]:
        """The decision as MLflow version tags (``gate_*``)."""
        vs = self.vs_champion
        return {
            "gate_decision": "promoted" if self.promoted else "rejected",
            "gate_reason": self.reason[:5000],
            "gate_skill": "demonstrated" if self.has_skill else "none",
            "gate_edge": f"{self.skill.estimate:.6f}",
            "gate_edge_low": f"{self.skill.low:.6f}",
            "gate_edge_high": f"{self.skill.high:.6f}",
            "gate_edge_level": f"{self.skill.level:g}",
            "gate_blocks": str(self.skill.blocks),
            "gate_base_rate": (
                ",".join(f"{r:.6f}" for r in self.base_rate)
                if isinstance(self.base_rate, tuple)
                else f"{self.base_rate:.6f}"
            ),
            "gate_challenger_log_loss": f"{self.challenger_log_loss:.6f}",
            "gate_challenger_ece": f"{self.challenger_ece:.6f}",
            "gate_ece_limit": f"{self.ece_limit:.6f}",
            "gate_ece_noise_floor": f"{self.ece_noise_floor:.6f}",
            "gate_ece_ceiling": f"{self.ece_ceiling:.6f}",
            "gate_champion_version": self.champion or "",
            "gate_rows": str(self.rows),
            "gate_champion_log_loss": (
                "" if self.champion_log_loss is None else f"{self.champion_log_loss:.6f}"
            ),
            "gate_vs_champion": "" if vs is None else f"{vs.estimate:.6f}",
            "gate_vs_champion_low": "" if vs is None else f"{vs.low:.6f}",
            "gate_vs_champion_high": "" if vs is None else f"{vs.high:.6f}",
        }


def decide(
    y: np.ndarray,
    p_challenger: np.ndarray,
    p_champion: np.ndarray | None = None,
    *,
    max_ece: float,
    ece_ceiling: float = 0.05,
    horizon: int = 1,
    groups: np.ndarray | None = None,
    times: np.ndarray | None = None,
    block_seconds: int = DAY,
    level: float = 0.95,
    draws: int = 2000,
) -> GateDecision:
    """Decide on holdout labels `y` (0/1, rows in time order within each group) and the
    challenger's (and, if there is one, the champion's) P(label 1) on the same rows — or,
    for three-class models, labels 0/1/2 and (n, 3) class probabilities. `times`:
    each row's bar open time (UTC epoch seconds), grouped into `block_seconds` stretches for
    the bootstrap; without them, runs of max(horizon, 24) consecutive rows are the blocks.
    `level`: two-sided confidence level of the intervals (their lower bounds decide)."""
    y = np.asarray(y, dtype=float)
    p_new = np.asarray(p_challenger, dtype=float)
    rows_of = p_new.shape[:1]
    if rows_of != y.shape or (p_champion is not None and np.shape(p_champion) != p_new.shape):
        raise ValueError(
            f"labels and probabilities differ in shape: {y.shape} vs {p_new.shape}"
            + ("" if p_champion is None else f" (champion {np.shape(p_champion)})")
        )
    if y.size == 0:
        raise ValueError("no holdout rows to gate on")
    blocks = block_ids(times, y.size, block_seconds, rows_per_block=max(int(horizon), 24))
    new_rows = row_log_loss(y, p_new)
    rate = base_rate(y, p_new.shape[1] if is_multiclass(p_new) else None)
    skill = bootstrap_mean(row_log_loss(y, constant(y, rate)) - new_rows, blocks, level, draws)
    new_ll, new_ece = log_loss(y, p_new), ece(y, p_new)
    floor = ece_noise_floor(p_new, horizon, groups)
    limit = max(max_ece, min(floor, ece_ceiling))
    old_ll, vs = None, None
    if p_champion is not None:
        old_rows = row_log_loss(y, np.asarray(p_champion, dtype=float))
        old_ll = float(old_rows.mean())
        vs = bootstrap_mean(old_rows - new_rows, blocks, level, draws, seed=1)
    pct = f"{level:.0%}"
    failed = []
    if skill.low <= 0:
        failed.append(
            f"no skill: log-loss improvement over the base rate {skill.text(5)} nats/row "
            f"({pct} interval over {skill.blocks} independent time blocks) does not exclude zero"
        )
    if new_ece > limit:
        why = (
            f"sampling-noise floor {floor:.4f} is above the ceiling {ece_ceiling} — too few independent "
            "rows to check calibration"
            if floor > limit
            else f"max_ece {max_ece}; sampling-noise floor on these {len(y):,} rows {floor:.4f}"
        )
        failed.append(f"challenger ECE {new_ece:.4f} above the limit {limit:.4f} ({why})")
    if vs is not None and vs.low <= 0:
        failed.append(
            f"does not beat champion: log loss {new_ll:.5f} vs {old_ll:.5f}, improvement "
            f"{vs.text(5)} ({pct} paired interval) does not exclude zero"
        )
    if failed:
        promoted, reason = False, "; ".join(failed)
    elif vs is None:
        promoted, reason = True, f"no champion yet; skill over the base rate {skill.text(5)} ({pct})"
    else:
        promoted, reason = (
            True,
            f"beats champion: log loss {new_ll:.5f} vs {old_ll:.5f}, improvement {vs.text(5)}",
        )
    return GateDecision(
        promoted,
        reason,
        new_ll,
        old_ll,
        new_ece,
        limit,
        floor,
        int(len(y)),
        skill,
        tuple(float(r) for r in rate) if isinstance(rate, np.ndarray) else rate,
        vs,
        ece_ceiling,
    )
