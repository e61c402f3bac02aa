"""Labels: fixed-horizon direction, triple barrier (López de Prado) and up/flat/down, with event
end times.

Every label at bar t is decided by bars t+1 … t1 only; ``t1`` (UTC epoch seconds, the *close*
time of the bar that decided it) is returned so validation can purge overlapping samples.
Rows whose horizon runs past the end of the data, that lack the ATR the label needs, or whose
horizon spans a hole (bars missing while the market was open, `features.gaps`) get NaN —
never a guess.
"""

from __future__ import annotations

import numpy as np

from features.bars import Bars, pip_size
from features.families import _wilder_atr
from features.gaps import MarketHours, holes, spans_hole_ahead
from features.spec import DirectionLabelSpec, TripleBarrierSpec

Labels = dict[str, np.ndarray]


def _ahead(x: np.ndarray, k: int) -> np.ndarray:
    """x[i + k] at index i; NaN past the end."""
    out = np.full(x.size, np.nan)
    if k < x.size:
        out[: x.size - k] = x[k:]
    return out


def _across_hole(b: Bars, horizon: int, hours: MarketHours | None) -> np.ndarray:
    """Rows whose next `horizon` bars span a hole (default hours: `MarketHours()`)."""
    return spans_hole_ahead(holes(b.time, b.seconds, hours or MarketHours()), horizon)


def direction_labels(b: Bars, spec: DirectionLabelSpec, hours: MarketHours | None = None) -> Labels:
    """Direction of close[t+h] − close[t] against a dead zone (see `DirectionLabelSpec`).

    ``label``: with ``neutral="drop"`` 1 = up, 0 = down, NaN = flat; with ``"class"``
    0 = down, 1 = flat, 2 = up. ``ret`` is the log return over the horizon.
    """
    h = spec.horizon
    future = _ahead(b.close, h)
    move = future - b.close
    if spec.unit == "atr":
        dead = spec.dead_zone * _wilder_atr(b, spec.atr_window) if spec.dead_zone else np.zeros(len(b))
    else:
        dead = np.full(len(b), spec.dead_zone * pip_size(b.point))
    valid = ~np.isnan(move) & ~np.isnan(dead) & ~_across_hole(b, h, hours)
    up, down = valid & (move > dead), valid & (move < -dead)
    flat = valid & ~up & ~down
    label = np.full(len(b), np.nan)
    if spec.neutral == "drop":
        label[up], label[down] = 1.0, 0.0
    else:
        label[up], label[flat], label[down] = 2.0, 1.0, 0.0
    t1 = np.where(valid, _ahead(b.close_time.astype(float), h), np.nan)
    return {"label": label, "t1": t1, "ret": np.where(valid, np.log(future / b.close), np.nan)}


def triple_barrier_labels(
    b: Bars, spec: TripleBarrierSpec, side: np.ndarray | None = None, hours: MarketHours | None = None
) -> Labels:
    """First barrier touched over bars t+1 … t+h, from each bar's high and low.

    ``label`` is +1 when the take-profit is touched first, −1 for the stop-loss, and at the
    vertical barrier 0 (or the sign of the side-adjusted return with ``vertical="sign"``).
    `side` (+1 long, −1 short, per bar; default long) flips the barriers for meta-labelling.
    ``t1`` is the close time of the deciding bar; ``ret`` the side-adjusted log return from
    close[t] to that bar's close.
    """
    n, h = len(b), spec.horizon
    s = np.ones(n) if side is None else np.asarray(side, dtype=float)
    a = _wilder_atr(b, spec.atr_window)
    upper = b.close + np.where(s > 0, spec.take_profit_atr, spec.stop_loss_atr) * a
    lower = b.close - np.where(s > 0, spec.stop_loss_atr, spec.take_profit_atr) * a
    m = max(n - h, 0)  # rows with a complete horizon
    never = h + 1
    first_up = np.full(m, never)
    first_dn = np.full(m, never)
    for k in range(1, h + 1):
        hit_up = b.high[k : k + m] >= upper[:m]
        hit_dn = b.low[k : k + m] <= lower[:m]
        first_up[(first_up == never) & hit_up] = k
        first_dn[(first_dn == never) & hit_dn] = k
    both = (first_up == first_dn) & (first_up != never)
    stop_is_upper = s[:m] < 0
    upper_first = (first_up < first_dn) | (both & ((spec.both_touched == "stop") == stop_is_upper))
    lower_first = (first_dn < first_up) | (both & ~((spec.both_touched == "stop") == stop_is_upper))
    k_hit = np.where(upper_first, first_up, np.where(lower_first, first_dn, h))
    rows = np.arange(m)
    exit_close = b.close[rows + k_hit]
    ret = s[:m] * np.log(exit_close / b.close[:m])
    raw = np.where(upper_first, 1.0, np.where(lower_first, -1.0, 0.0)) * s[:m]
    if spec.vertical == "sign":
        vertical = ~upper_first & ~lower_first
        raw = np.where(vertical, np.sign(ret), raw)
    valid = ~np.isnan(a[:m]) & ~_across_hole(b, h, hours)[:m]
    label = np.full(n, np.nan)
    t1 = np.full(n, np.nan)
    out_ret = np.full(n, np.nan)
    label[:m] = np.where(valid, raw, np.nan)
    t1[:m] = np.where(valid, b.close_time[rows + k_hit].astype(float), np.nan)
    out_ret[:m] = np.where(valid, ret, np.nan)
    return {"label": label, "t1": t1, "ret": out_ret}


def meta_labels(
    b: Bars, spec: TripleBarrierSpec, side: np.ndarray, hours: MarketHours | None = None
) -> Labels:
    """Meta-labels for a primary model's `side`: 1 when trading that side would have hit the
    take-profit first (or closed positive at the vertical barrier with ``vertical="sign"``),
    else 0; NaN where the triple-barrier label is NaN."""
    tb = triple_barrier_labels(b, spec, side, hours)
    meta = np.where(np.isnan(tb["label"]), np.nan, (tb["label"] > 0).astype(float))
    return {"label": meta, "t1": tb["t1"], "ret": tb["ret"]}


def up_flat_down_labels(
    b: Bars, horizon: int, flat_within: float, atr_window: int = 14, hours: MarketHours | None = None
) -> Labels:
    """Three classes over the next `horizon` bars: 0 = down, 1 = flat, 2 = up, flat when
    |close[t+h] − close[t]| ≤ `flat_within` × ATR(`atr_window`, at t) × √horizon — the dead
    zone grows with the horizon as a random walk's typical move does, so the classes stay
    comparably balanced across horizons. ``t1`` and ``ret`` as for `direction_labels`."""
    if flat_within <= 0:
        raise ValueError(f"flat_within must be > 0 (ATR × √horizon), got {flat_within}")
    spec = DirectionLabelSpec(horizon, flat_within * float(np.sqrt(horizon)), "atr", "class", atr_window)
    return direction_labels(b, spec, hours)


LABEL_KINDS = ("direction", "triple_barrier", "up_flat_down")
THREE_CLASS = ("down", "flat", "up")  # class index → name (up_flat_down labels)


def model_target(label_kind: str, label: np.ndarray) -> np.ndarray:
    """The target a probability model of `label_kind` predicts, from the labels above:
    direction (``neutral="drop"``) as it is, 1 up / 0 down; triple barrier 1 when the
    take-profit was touched first, else 0; up/flat/down as it is, 0 down / 1 flat / 2 up.
    NaN stays NaN."""
    label = np.asarray(label, dtype=float)
    if label_kind in ("direction", "up_flat_down"):
        return label
    if label_kind == "triple_barrier":
        return np.where(np.isnan(label), np.nan, (label == 1).astype(float))
    raise ValueError(f"unknown label kind {label_kind!r}: one of {', '.join(LABEL_KINDS)}")
