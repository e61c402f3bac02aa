"""Request bodies → model inputs, each bad input a 400 naming the problem. Pure functions:
the bar checks and the trailing window come from the scoring core (`features.window`),
imported on first use (BentoML also imports this module in its supervisor process, which
never scores)."""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import numpy as np

from serving.errors import ApiError
from serving.schemas import BarsInput, ResultRow


def as_utc(value: datetime) -> datetime:
    """A naive datetime is UTC; an aware one is converted to UTC; one whose UTC instant falls
    outside years 1..9999 (``0001-01-01T00:00:00+01:00``) is a 400."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{value.isoformat()} is out of range in UTC") from exc


def result_rows(frame: Any) -> list[ResultRow]:
    """Rows of a results-store frame as response rows."""
    return [
        ResultRow(
            symbol=r.symbol,
            timeframe=r.timeframe,
            bar_time=r.bar_time.isoformat(),
            horizon=int(r.horizon),
            label_kind=r.label_kind,
            probability=float(r.probability),
            probabilities=r.probabilities,
            signal=r.signal,
            model_name=r.model_name,
            model_version=str(r.model_version),
            scored_at=r.scored_at.isoformat(),
            bar_closed_at=r.bar_closed_at.isoformat(),
            event_id=int(r.event_id),
        )
        for r in frame.itertuples(index=False)
    ]


def matrix_grid(follows: Any, frame: Any) -> tuple[dict[str, Any], list[str]]:
    """A tenant's followed subscriptions (`follows`) and its newest results (`frame`: one row
    per symbol, timeframe, horizon, label kind) as the /matrix grid — symbol → timeframe →
    label kind → horizon → `MatrixCell`, None where nothing has been scored yet — and those
    followed cells with no result (``SYMBOL:TF:HORIZON:KIND``). Results of cells no longer
    followed are left out. Ordered for reading: symbols by name, timeframes shortest first,
    label kinds by name, horizons shortest first."""
    from pipelines.mt5.constants import timeframe_seconds
    from serving.schemas import MatrixCell

    newest = {(r.symbol, r.timeframe, int(r.horizon), r.label_kind): r for r in frame.itertuples(index=False)}
    grid: dict[str, Any] = {}
    missing = []
    order = lambda s: (s.symbol, timeframe_seconds(s.timeframe), s.label_kind, int(s.horizon))  # noqa: E731
    for sub in sorted(follows, key=order):
        key = (sub.symbol, sub.timeframe, int(sub.horizon), sub.label_kind)
        r = newest.get(key)
        cell = None
        if r is None:
            missing.append(":".join(map(str, key)))
        else:
            cell = MatrixCell(
                probability=float(r.probability),
                probabilities=r.probabilities,
                signal=r.signal,
                bar_time=r.bar_time.isoformat(),
                model=r.model_name,
                version=str(r.model_version),
                scored_at=r.scored_at.isoformat(),
            )
        grid.setdefault(key[0], {}).setdefault(key[1], {}).setdefault(key[3], {})[str(key[2])] = cell
    return grid, missing


def feature_matrix(
    rows: list[list[float | None]], columns: list[str] | None, expected: list[str]
) -> np.ndarray:
    """Rows as a float32 matrix in the model's column order, or ApiError naming the problem.
    ``None`` (JSON null) is a missing value (NaN, imputed as in training). The request schema
    (`serving.schemas.Number`) already refused NaN and infinities sent as numbers; infinities
    are refused here too, for callers in Python. Vectorised: a 10,000 × 143 batch of warm-up
    nulls costs one conversion, not a Python step per cell."""
    width = len(expected)
    if isinstance(rows, np.ndarray):  # parsed and checked in the body parser's process
        X = rows.astype(np.float64)
    else:
        first = len(rows[0])
        bad = next((i for i, r in enumerate(rows) if len(r) != first), None)
        if bad is not None:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"row {bad} has {len(rows[bad])} values, row 0 has {first}"
            )
        X = np.array(rows, dtype=np.float64)  # None → NaN
    if columns is not None:
        if len(columns) != X.shape[1]:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"{len(columns)} column names for rows of {X.shape[1]} values"
            )
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in set(expected)]
        if missing or extra or len(set(columns)) != len(columns):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"columns do not match the model's {width}: missing {_names(missing)}, "
                f"unexpected {_names(extra)}"
                + (" (duplicates)" if len(set(columns)) != len(columns) else ""),
            )
        if columns != expected:
            X = X[:, [columns.index(c) for c in expected]]
    elif X.shape[1] != width:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"rows have {X.shape[1]} values; the model expects {width} columns (first: {expected[:3]}); "
            "send `columns` to check names",
        )
    if np.isinf(X).any():
        r, c = np.argwhere(np.isinf(X))[0]
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"non-finite value at row {r} column {expected[c]!r}; send null for a missing value",
        )
    if np.nanmax(np.abs(X), initial=0.0) > np.finfo(np.float32).max:
        raise ApiError(HTTPStatus.BAD_REQUEST, "values beyond float32 range")
    return X.astype(np.float32)


def _names(names: list[str], n: int = 5, width: int = 40) -> str:
    """The first `n` of `names`, each cut at `width` characters (a caller's input is never
    echoed whole)."""
    return repr([c[:width] for c in names[:n]]) + (f" and {len(names) - n} more" if len(names) > n else "")


def features_from_bars(
    bars: dict[str, BarsInput], spec: Any, point: float | None, max_bars: int, columns: list[str]
) -> np.ndarray:
    """The newest base bar's feature row (float32, NaN where a feature is still warming up),
    through the scoring core's bar checks and trailing window — the rows live scoring computes
    for the same bars. `spec` is the model's `features.spec.FeatureSpec`."""
    from features.bars import BAR_COLUMNS, Bars
    from features.matrix import feature_columns
    from features.window import BarCheckError, check_bars, trailing_window
    from pipelines.mt5.constants import timeframe_seconds

    need_tfs = [spec.base_timeframe, *spec.higher_timeframes]
    missing = [tf for tf in need_tfs if tf not in bars]
    if missing:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, f"bars missing for timeframe(s) {missing}; the model needs {need_tfs}"
        )
    if feature_columns(spec) != columns:
        raise ApiError(HTTPStatus.BAD_REQUEST, "the model's feature spec does not reproduce its columns")
    built: dict[str, Bars] = {}
    for tf in need_tfs:
        b = bars[tf]
        seconds = timeframe_seconds(tf)
        try:
            if len(b.time) > max_bars:  # before any conversion
                raise BarCheckError(f"{tf}: {len(b.time)} bars is over the limit of {max_bars}")
            arrays = {
                f: np.asarray(getattr(b, f), dtype=np.int64 if f == "time" else np.float64)
                for f in BAR_COLUMNS
            }
            check_bars(tf, seconds, arrays, max_bars)
        except OverflowError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: a time is beyond 64-bit epoch seconds") from exc
        except BarCheckError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from exc
        built[tf] = Bars.from_rates(arrays, seconds, point)
    base = built[spec.base_timeframe]
    base_close = int(base.time[-1]) + base.seconds
    for tf in spec.higher_timeframes:
        if int(built[tf].time[0]) + built[tf].seconds > base_close:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"{tf}: bars start after the newest {spec.base_timeframe} bar"
            )
    window = trailing_window(built, spec, len(base) - 1)
    if window.short:
        detail = ", ".join(f"{tf}: have {have}, need {k}" for tf, (have, k) in window.short.items())
        raise ApiError(HTTPStatus.BAD_REQUEST, f"too few bars for the feature windows ({detail})")
    X, _ = window.features(spec)
    return np.where(np.isfinite(X[0]), X[0], np.nan).astype(np.float32)
