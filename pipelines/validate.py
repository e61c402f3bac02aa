"""Data contracts for bars and ticks, enforced with great-expectations 1.x.

`DataContract` holds one GX suite for bars and one for ticks (built once per process). A batch
is validated row by row: rows failing a *hard* rule (an invariant no genuine bar breaks) are
*quarantined* with the names of the rules they broke; rows failing only *soft* rules
(`SOFT_RULES`: the spike checks — a genuine news bar can be huge) are kept and *flagged*
(`ValidationResult.flagged`, stored in the bar store's flag log); the rest are good. Schema
problems (missing columns, wrong dtypes) reject the whole batch with `ContractError`.

Rules on bars (per symbol and timeframe): prices not null, finite and > 0; high ≥ max(open,
close); low ≤ min(open, close); spread, tick and real volume ≥ 0; times strictly increasing
(so unique), on the timeframe's grid in *server* time (the broker's bar boundaries); and a
soft spike check (flagged, kept): a bar's range above ``spike_atr_multiple`` × the ATR of the preceding
``atr_window`` bars, or an opening gap above that multiple scaled by √(elapsed bars) (so a
weekend gap is judged against the volatility expected over a weekend). The ATR uses only
earlier bars (the stored tail passed as `context`, then the batch itself); the first bars of a
new series, without enough history, are not spike-checked.

Rules on ticks: bid and ask not null, finite and > 0; ask ≥ bid; volume ≥ 0; times
non-decreasing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.bar_store import (
    BAR_COLUMNS,
    BAR_SCHEMA,
    TICK_COLUMNS,
    TICK_SCHEMA,
    SeriesKey,
    frame_times,
)
from pipelines.mt5.bars import bar_open_times
from pipelines.mt5.constants import TIMEFRAME_MN1, timeframe_seconds, timeframe_value
from pipelines.mt5.server_time import ServerClock

PRICES = ["open", "high", "low", "close"]
_MAX_PRICE = 1e12
# rules a genuine bar may break (an FOMC-hour range of 170 pips, a gap over a news weekend):
# such a bar is stored and flagged, never dropped; every other rule quarantines
SOFT_RULES = frozenset({"spike_range", "spike_gap"})


class ContractError(ValueError):
    """A batch cannot be validated at all (schema), or too many of its rows are bad."""


@dataclass(frozen=True)
class ValidationRules:
    """Thresholds of the contracts. `max_bad_ratio` applies to batches of ≥ `ratio_min_rows`."""

    max_bad_ratio: float = 0.01
    ratio_min_rows: int = 100
    spike_atr_multiple: float = 12.0
    atr_window: int = 14


@dataclass
class ValidationResult:
    """Outcome of validating one batch of one series."""

    key: SeriesKey
    good: pd.DataFrame
    quarantined: pd.DataFrame  # the bad rows, with a ``rules`` column ("rule_a;rule_b")
    rule_counts: dict[str, int] = field(default_factory=dict)  # rows breaking each rule, soft too
    # kept rows that broke only soft rules: ``time`` and ``rules`` (they are also in `good`)
    flagged: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"time": [], "rules": []}))

    @property
    def n_flagged(self) -> int:
        return len(self.flagged)

    def describe_flagged(self) -> str:
        """'<key>: kept N flagged bars, first at <UTC time> (<rules>)' or '' when none."""
        if not self.n_flagged:
            return ""
        return f"{self.key}: kept {self.n_flagged} flagged bar(s) (soft rules only), {_first(self.flagged)}"

    @property
    def n_rows(self) -> int:
        return len(self.good) + len(self.quarantined)

    @property
    def n_bad(self) -> int:
        return len(self.quarantined)

    @property
    def bad_ratio(self) -> float:
        return self.n_bad / self.n_rows if self.n_rows else 0.0

    def describe_bad(self) -> str:
        """'<key>: N bad rows of M, first at <UTC time> (<rules>)' or '' when clean."""
        if not self.n_bad:
            return ""
        return (
            f"{self.key}: {self.n_bad} bad rows of {self.n_rows} ({self.bad_ratio:.2%}), "
            f"{_first(self.quarantined)}; by rule: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.rule_counts.items()))
        )

    def check_ratio(self, rules: ValidationRules) -> None:
        """Raise `ContractError` when the batch has more bad rows than the rules allow."""
        if self.n_rows >= rules.ratio_min_rows and self.bad_ratio > rules.max_bad_ratio:
            raise ContractError(
                f"bad-row ratio above {rules.max_bad_ratio:.2%}: {self.describe_bad()}; "
                "nothing was written (inspect the source, or raise "
                "data.validation.max_bad_ratio)"
            )


def _first(rows: pd.DataFrame) -> str:
    """'first at <UTC time> (<rules>)' of the earliest of `rows` (``time``, ``rules``)."""
    first = rows.sort_values("time").iloc[0]
    return f"first at {first['time']:%Y-%m-%d %H:%M:%S} UTC ({first['rules']})"


def _expectations(kind: str) -> list[tuple[str, Any]]:
    """(rule name, GX expectation) pairs of a suite."""
    import great_expectations as gx

    E = gx.expectations
    if kind == "bars":
        out: list[tuple[str, Any]] = [
            (
                "columns",
                E.ExpectTableColumnsToMatchOrderedList(
                    column_list=BAR_COLUMNS + ["advance_s", "grid_offset_s", "range_atr", "gap_atr"]
                ),
            )
        ]
        out += [
            (f"dtype:{f.name}", E.ExpectColumnValuesToBeOfType(column=f.name, type_=_dtype_name(f)))
            for f in BAR_SCHEMA
            if f.name != "time"
        ]  # time: checked in _epoch (tz-aware)
        out += [(f"not_null:{c}", E.ExpectColumnValuesToNotBeNull(column=c)) for c in PRICES]
        out += [
            (
                f"positive_finite:{c}",
                E.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True, max_value=_MAX_PRICE),
            )
            for c in PRICES
        ]
        out += [
            (
                f"high>={c}",
                E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B=c, or_equal=True),
            )
            for c in ("open", "close")
        ]
        out += [
            (
                f"low<={c}",
                E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=c, column_B="low", or_equal=True),
            )
            for c in ("open", "close")
        ]
        out += [
            (f"non_negative:{c}", E.ExpectColumnValuesToBeBetween(column=c, min_value=0))
            for c in ("spread", "tick_volume", "real_volume")
        ]
        out += [
            ("time_increasing_unique", E.ExpectColumnValuesToBeBetween(column="advance_s", min_value=1)),
            (
                "time_on_grid",
                E.ExpectColumnValuesToBeBetween(column="grid_offset_s", min_value=0, max_value=0),
            ),
            ("spike_range", E.ExpectColumnValuesToBeBetween(column="range_atr", max_value=1.0)),
            ("spike_gap", E.ExpectColumnValuesToBeBetween(column="gap_atr", max_value=1.0)),
        ]
        return out
    out = [("columns", E.ExpectTableColumnsToMatchOrderedList(column_list=TICK_COLUMNS + ["advance_ms"]))]
    out += [
        (f"dtype:{f.name}", E.ExpectColumnValuesToBeOfType(column=f.name, type_=_dtype_name(f)))
        for f in TICK_SCHEMA
        if f.name != "time"
    ]
    out += [(f"not_null:{c}", E.ExpectColumnValuesToNotBeNull(column=c)) for c in ("bid", "ask")]
    out += [
        (
            f"positive_finite:{c}",
            E.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True, max_value=_MAX_PRICE),
        )
        for c in ("bid", "ask")
    ]
    out += [
        ("ask>=bid", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="ask", column_B="bid", or_equal=True))
    ]
    out += [
        (f"non_negative:{c}", E.ExpectColumnValuesToBeBetween(column=c, min_value=0))
        for c in ("volume", "volume_real")
    ]
    out += [("time_non_decreasing", E.ExpectColumnValuesToBeBetween(column="advance_ms", min_value=0))]
    return out


def _dtype_name(field_: Any) -> str:
    import pyarrow as pa

    t = field_.type
    return {pa.float64(): "float64", pa.int64(): "int64", pa.int32(): "int32"}[t]


Engine = Literal["gx", "numpy"]


class DataContract:
    """The GX suites for bars and ticks; build once and reuse (context setup costs seconds).

    `engine` = ``gx`` runs each batch through great-expectations. ``numpy`` evaluates the *same
    suite* — the same expectation objects, read for their kind and arguments — with vectorised
    NumPy, for the live path, where GX's fixed cost per batch (~0.25 s) is longer than the
    whole latency budget of a bar close; a test keeps the two engines' verdicts equal on
    batches with every kind of bad row."""

    def __init__(self, rules: ValidationRules | None = None, engine: Engine = "gx") -> None:
        if engine not in ("gx", "numpy"):
            raise ValueError(f"engine must be 'gx' or 'numpy', got {engine!r}")
        self.rules = rules or ValidationRules()
        self.engine = engine
        self._suites: dict[str, list[tuple[str, Any]]] = {}
        self._definitions: dict[str, tuple[Any, list[tuple[str, Any]]]] = {}
        self._context: Any = None

    def _definition(self, kind: str, expectations_of: Any = None) -> tuple[Any, list[tuple[str, Any]]]:
        if kind in self._definitions:
            return self._definitions[kind]
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        if self._context is None:
            self._context = gx.get_context(mode="ephemeral")
            self._context.variables.progress_bars = ProgressBarsConfig(
                globally=False, metric_calculations=False
            )
            self._source = self._context.data_sources.add_pandas("mt5")
        asset = self._source.add_dataframe_asset(kind)
        batch = asset.add_batch_definition_whole_dataframe(f"{kind}-batch")
        expectations = expectations_of() if expectations_of else _expectations(kind)
        suite = self._context.suites.add(gx.ExpectationSuite(name=f"{kind}-contract"))
        for _, expectation in expectations:
            suite.add_expectation(expectation)
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{kind}-validation", data=batch, suite=suite)
        )
        self._definitions[kind] = (definition, expectations)
        return self._definitions[kind]

    def _run(
        self,
        kind: str,
        key: SeriesKey,
        frame: pd.DataFrame,
        derived: dict[str, np.ndarray],
        columns: list[str],
    ) -> ValidationResult:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ContractError(f"{key}: batch lacks column(s) {missing}; expected {columns}")
        bad_rules: dict[int, list[str]] = {}
        counts: dict[str, int] = {}
        if self.engine == "numpy":
            view = _Columns(frame, derived, columns)
            for name, expectation in self._expectations(kind):
                rows = _unexpected_rows(key, name, expectation, view)
                if rows.size:
                    counts[name] = int(rows.size)
                    for row in rows.tolist():
                        bad_rules.setdefault(row, []).append(name)
        else:
            batch = pd.concat([frame[columns].reset_index(drop=True), pd.DataFrame(derived)], axis=1)
            definition, expectations = self._definition(kind)
            result = definition.run(
                batch_parameters={"dataframe": batch}, result_format={"result_format": "COMPLETE"}
            )
            names = {expectation.id: name for name, expectation in expectations}
            for res in result.results:
                name = names[res.expectation_config.id]
                if res.success:
                    continue
                rows = res.result.get("unexpected_index_list")
                if rows is None or name in ("columns",) or name.startswith("dtype:"):
                    observed = res.result.get("observed_value")
                    raise ContractError(
                        f"{key}: schema rule {name} failed (observed {observed!r}); "
                        "the batch was rejected and nothing was written"
                    )
                counts[name] = len(rows)
                for row in rows:
                    bad_rules.setdefault(int(row), []).append(name)
        out = frame if list(frame.columns) == columns else frame[columns]
        if not isinstance(out.index, pd.RangeIndex) or out.index.start != 0 or out.index.step != 1:
            out = out.reset_index(drop=True)
        if not bad_rules:  # the usual case (a live close): no row copies, no frame surgery
            empty = out.iloc[:0].assign(rules=pd.Series([], dtype=str))
            return ValidationResult(key, out, empty, counts)
        order = {name: i for i, (name, _) in enumerate(self._expectations(kind))}  # the suite's order
        named = {i: ";".join(sorted(r, key=order.__getitem__)) for i, r in bad_rules.items()}
        soft = sorted(i for i, r in bad_rules.items() if SOFT_RULES.issuperset(r))
        flagged = pd.DataFrame(
            {"time": out["time"].iloc[soft].reset_index(drop=True), "rules": [named[i] for i in soft]}
        )
        bad_idx = np.array(sorted(set(bad_rules) - set(soft)), dtype=np.int64)
        quarantined = out.iloc[bad_idx].copy()
        quarantined["rules"] = [named[i] for i in bad_idx]
        good = out.drop(index=bad_idx) if bad_idx.size else out
        return ValidationResult(
            key, good.reset_index(drop=True), quarantined.reset_index(drop=True), counts, flagged
        )

    def _expectations(self, kind: str) -> list[tuple[str, Any]]:
        """The suite's (rule name, expectation) pairs, built once (no GX context needed)."""
        if kind not in self._suites:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
            self._suites[kind] = _expectations(kind)
        return self._suites[kind]

    def validate_features(
        self,
        name: str,
        frame: pd.DataFrame,
        columns: list[str],
        warmup: dict[str, int],
        bounds: dict[str, tuple[float, float]],
        masked: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Check a feature frame (``time`` + `columns`, in that order); raise `ContractError`.

        Rules: the recorded columns in order; every value finite, except NaN within a column's
        warm-up (its first ``warmup[col]`` rows) and at the rows ``masked[col]`` (a window
        spanning a hole in the bars, `features.gaps`); bounded columns (RSI in [0, 100], cyclic
        time in [−1, 1], range position and session flags in [0, 1]) inside their bounds.
        """
        import hashlib

        digest = hashlib.sha1(repr((columns, sorted(bounds.items()))).encode()).hexdigest()[:12]

        def expectations() -> list[tuple[str, Any]]:
            import great_expectations as gx

            E = gx.expectations
            out: list[tuple[str, Any]] = [
                ("columns", E.ExpectTableColumnsToMatchOrderedList(column_list=["time", *columns]))
            ]
            out += [
                (
                    f"finite_after_warmup:{c}",
                    E.ExpectColumnValuesToBeBetween(column=c, min_value=-_MAX_PRICE, max_value=_MAX_PRICE),
                )
                for c in columns
            ]
            out += [
                (f"bounds:{c}", E.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi))
                for c, (lo, hi) in bounds.items()
                if c in columns
            ]
            return out

        missing = [c for c in ["time", *columns] if c not in frame.columns]
        if missing:
            raise ContractError(f"{name}: feature frame lacks {missing[:5]}; expected the recorded columns")
        checked = frame[["time", *columns]].copy()
        for c in columns:
            values = checked[c].to_numpy(dtype=float, copy=True)
            head = min(warmup.get(c, 0), values.size)
            values[:head] = 0.0  # NaN allowed in the warm-up
            if masked and c in masked:
                values[masked[c]] = 0.0  # and where the window spans a hole
            values[head:][np.isnan(values[head:])] = np.inf  # NaN after it is a failure
            checked[c] = values
        definition, named = self._definition(f"features-{digest}", expectations)
        result = definition.run(
            batch_parameters={"dataframe": checked.reset_index(drop=True)},
            result_format={"result_format": "COMPLETE"},
        )
        names = {expectation.id: rule for rule, expectation in named}
        failures = []
        for res in result.results:
            if not res.success:
                rows = res.result.get("unexpected_index_list") or []
                where = f", first at {frame['time'].iloc[int(rows[0])]}" if rows else ""
                failures.append(f"{names[res.expectation_config.id]} ({len(rows)} rows{where})")
        if failures:
            raise ContractError(f"{name}: feature contract failed: " + "; ".join(failures[:10]))

    def validate_bars(
        self, key: SeriesKey, frame: pd.DataFrame, clock: ServerClock, context: pd.DataFrame | None = None
    ) -> ValidationResult:
        """Validate a batch of bars (UTC `time` = bar open) after the committed `context` rows."""
        if frame.empty:
            return ValidationResult(key, frame.copy(), frame.assign(rules=pd.Series(dtype=str)))
        derived = bar_checks(frame, key.timeframe or "M1", clock, self.rules, context)
        return self._run("bars", key, frame, derived, BAR_COLUMNS)

    def validate_ticks(
        self, key: SeriesKey, frame: pd.DataFrame, context: pd.DataFrame | None = None
    ) -> ValidationResult:
        """Validate a batch of ticks (UTC `time`, ms) after the committed `context` rows."""
        if frame.empty:
            return ValidationResult(key, frame.copy(), frame.assign(rules=pd.Series(dtype=str)))
        t = _epoch(frame, "ms").astype(float)
        has_context = context is not None and len(context)
        prev = float(_epoch(context, "ms").max()) if has_context else -np.inf
        before = np.maximum.accumulate(np.r_[prev, t[:-1]])
        derived = {"advance_ms": np.where(np.isfinite(before), t - before, np.nan)}
        return self._run("ticks", key, frame, derived, TICK_COLUMNS)


class _Columns:
    """The batch GX would see — `frame`'s `columns`, then the `derived` ones — as float arrays
    and null masks, converted once per column (no concatenated frame is built)."""

    def __init__(self, frame: pd.DataFrame, derived: dict[str, np.ndarray], columns: list[str]) -> None:
        self.names = list(columns) + list(derived)
        dtypes = frame.dtypes
        self.dtypes = {c: str(dtypes[c]) for c in columns} | {c: str(v.dtype) for c, v in derived.items()}
        self._frame = frame
        self._derived = derived
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(values as float64 with NaN for nulls, null mask) of `column`."""
        if column not in self._cache:
            if column in self._derived:
                values = np.asarray(self._derived[column], dtype=float)
                null = np.isnan(values)
            else:
                series = self._frame[column]
                if series.dtype.kind in "iu":  # numpy integers cannot be null
                    values = series.to_numpy(dtype=float)
                    null = np.zeros(values.shape, dtype=bool)
                elif series.dtype.kind == "f":
                    values = series.to_numpy(dtype=float)
                    null = np.isnan(values)
                else:
                    null = series.isna().to_numpy()
                    values = series.to_numpy(dtype=float, na_value=np.nan)
            self._cache[column] = (values, null)
        return self._cache[column]


def _unexpected_rows(key: SeriesKey, name: str, expectation: Any, batch: _Columns) -> np.ndarray:
    """Row positions `expectation` finds unexpected in `batch`, as GX would (nulls are not
    judged by range or pair rules; a pair with one missing value is unexpected); schema rules
    raise `ContractError`. Only the expectation kinds the contracts use are understood."""
    kind = type(expectation).__name__

    def schema_error(observed: Any) -> ContractError:
        return ContractError(
            f"{key}: schema rule {name} failed (observed {observed!r}); "
            "the batch was rejected and nothing was written"
        )

    if kind == "ExpectTableColumnsToMatchOrderedList":
        if batch.names != list(expectation.column_list):
            raise schema_error(batch.names)
        return np.empty(0, dtype=np.int64)
    if kind == "ExpectColumnValuesToBeOfType":
        if batch.dtypes[expectation.column] != expectation.type_:
            raise schema_error(batch.dtypes[expectation.column])
        return np.empty(0, dtype=np.int64)
    if kind == "ExpectColumnValuesToNotBeNull":
        return np.flatnonzero(batch(expectation.column)[1])
    if kind == "ExpectColumnValuesToBeBetween":
        v, null = batch(expectation.column)
        ok = np.ones(v.shape, dtype=bool)
        lo, hi = expectation.min_value, expectation.max_value
        with np.errstate(invalid="ignore"):
            if lo is not None:
                ok &= v > lo if expectation.strict_min else v >= lo
            if hi is not None:
                ok &= v < hi if expectation.strict_max else v <= hi
        return np.flatnonzero(~ok & ~null)
    if kind == "ExpectColumnPairValuesAToBeGreaterThanB":
        if expectation.ignore_row_if != "both_values_are_missing":
            raise NotImplementedError(f"{name}: ignore_row_if={expectation.ignore_row_if!r}")
        (av, a_null), (bv, b_null) = batch(expectation.column_A), batch(expectation.column_B)
        with np.errstate(invalid="ignore"):
            ok = av >= bv if expectation.or_equal else av > bv
        return np.flatnonzero(~ok & ~(a_null & b_null))
    raise NotImplementedError(f"{name}: the numpy engine does not know {kind}")


def _epoch(frame: pd.DataFrame, unit: str) -> np.ndarray:
    values = frame["time"]
    if not isinstance(values.dtype, pd.DatetimeTZDtype) or str(values.dtype.tz) != "UTC":
        raise ContractError(f"column time has dtype {values.dtype}; expected UTC datetimes")
    return frame_times(frame, unit)


def bar_checks(
    frame: pd.DataFrame,
    timeframe: str,
    clock: ServerClock,
    rules: ValidationRules,
    context: pd.DataFrame | None = None,
) -> dict[str, np.ndarray]:
    """Derived per-row quantities the bar suite checks (all causal: earlier rows only), one
    float array per quantity, aligned with `frame`'s rows.

    ``advance_s``: seconds since the latest earlier bar (must be ≥ 1); ``grid_offset_s``:
    seconds off the timeframe grid in server time (must be 0); ``range_atr`` and ``gap_atr``:
    range and opening gap as fractions of the allowed spike size (must be ≤ 1).
    """
    n_ctx = 0 if context is None else len(context)
    parts = [frame] if not n_ctx else [context, frame]

    def col(name: str) -> np.ndarray:
        arrays = [p[name].to_numpy(float) for p in parts]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    times = [_epoch(p, "s") for p in parts]
    t = times[0] if len(times) == 1 else np.concatenate(times)
    high, low, open_, close = col("high"), col("low"), col("open"), col("close")
    prev_close = np.r_[np.nan, close[:-1]]
    true_range = np.fmax(high, prev_close) - np.fmin(low, prev_close)
    atr = (
        pd.Series(true_range)
        .rolling(rules.atr_window, min_periods=max(2, rules.atr_window // 2))
        .mean()
        .shift(1)
        .to_numpy()
    )
    tf = timeframe_value(timeframe)
    bar_sec = 30 * 86400 if tf == TIMEFRAME_MN1 else timeframe_seconds(tf)
    tf_float = t.astype(float)
    before = np.maximum.accumulate(np.r_[-np.inf, tf_float[:-1]])
    elapsed_bars = np.maximum(1.0, (tf_float - before) / bar_sec)
    limit = rules.spike_atr_multiple * atr
    limit = np.where(limit > 0, limit, np.nan)  # flat history: no basis for a spike check
    server = clock.to_server(t)
    derived = {
        "advance_s": np.where(np.isfinite(before), tf_float - before, np.nan),
        "grid_offset_s": (server - bar_open_times(server, tf)).astype(float),
        "range_atr": (high - low) / limit,
        "gap_atr": np.abs(open_ - prev_close) / (limit * np.sqrt(elapsed_bars)),
    }
    return {name: values[n_ctx:] for name, values in derived.items()}
