"""Request and response schemas of the scoring API (they become its OpenAPI document).

Probabilities are P(label 1) — P(up) for direction labels — over the model's horizon; bar
times are bar open times, UTC.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from pipelines.mt5.constants import TIMEFRAMES

# Strict types for everything a caller sends (issue 14): a number is a JSON number — never
# ``true`` or ``"0.5"`` — and finite (NaN, Infinity and overflowing literals are refused);
# lists stop at their first bad item (``fail_fast``) so a 10 MB body of strings is one error,
# not 1.4 million of them built on the event loop; every string has a bounded length.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Row = Annotated[list[Number | None], Field(fail_fast=True, max_length=100_000)]
Timeframe = Literal[tuple(TIMEFRAMES)]  # type: ignore[valid-type]
Symbol = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._#+&-]{1,32}$",
        max_length=32,
        description="MT5 symbol: 1-32 letters, digits or . _ # + & -",
        examples=["EURUSD"],
    ),
]
ModelName = Annotated[
    str, Field(max_length=200, description="registered model name; default: the first served")
]
# spelling checked by `pipelines.model_cache.canonical_ref` (its message says what is accepted)
VersionRef = Annotated[
    str,
    Field(max_length=64, description="alias (champion, challenger) or version number (ASCII digits)"),
]
# bar open times, UTC epoch seconds: from 1970 to 2100 (anything else is not a bar of ours)
EpochSeconds = Annotated[int, Field(strict=True, ge=0, le=4_102_444_800)]


class ScoreResponse(BaseModel):
    model: str = Field(description="registered model name")
    version: str = Field(description="registered model version that produced the probabilities")
    alias: str | None = Field(None, description="the alias the request resolved through, if any")
    probabilities: list[float] = Field(
        description="P(label 1) per input row, in input order: P(up) for direction and up/flat/down models, "
        "P(take-profit first) for triple barrier"
    )
    classes: list[str] | None = Field(
        None,
        description="three-class (up/flat/down) models: the order of class_probabilities, [down, flat, up]",
    )
    class_probabilities: list[list[float]] | None = Field(
        None,
        description="three-class models: [P(down), P(flat), P(up)] per input row, summing to 1; "
        "null otherwise",
    )
    skill: str = Field(
        "unknown",
        description="the promotion gate's verdict on this version: 'demonstrated' (its log-loss improvement "
        "over the base rate has a lower confidence bound above zero), 'none' (it does not: these "
        "probabilities carry no demonstrated information), 'unknown' (gated before the gate asked)",
    )


class BarsInput(BaseModel):
    """Closed bars of one timeframe, oldest first; ``time`` is the bar open, UTC epoch seconds;
    ``spread`` in points."""

    time: Annotated[list[EpochSeconds], Field(fail_fast=True, min_length=1)]
    open: Annotated[list[Number], Field(fail_fast=True, min_length=1)]
    high: Annotated[list[Number], Field(fail_fast=True, min_length=1)]
    low: Annotated[list[Number], Field(fail_fast=True, min_length=1)]
    close: Annotated[list[Number], Field(fail_fast=True, min_length=1)]
    tick_volume: Annotated[list[Number], Field(fail_fast=True, min_length=1)]
    spread: Annotated[list[Number], Field(fail_fast=True, min_length=1)]


class BarsScoreResponse(BaseModel):
    model: str
    version: str
    alias: str | None = None
    symbol: str
    bar_time: str = Field(description="open time (UTC, ISO 8601) of the scored bar: the newest given")
    probability: float = Field(
        description="P(label 1) over the model's horizon from that bar's close: P(up) for direction and "
        "up/flat/down models, P(take-profit first) for triple barrier"
    )
    probabilities: dict[str, float] | None = Field(
        None, description="three-class models: {down, flat, up} probabilities summing to 1; null otherwise"
    )
    features: int = Field(description="number of feature columns computed")
    skill: str = Field(
        "unknown",
        description="the promotion gate's verdict on this version: 'demonstrated' (its log-loss improvement "
        "over the base rate has a lower confidence bound above zero), 'none' (it does not: these "
        "probabilities carry no demonstrated information), 'unknown' (gated before the gate asked)",
    )


class ModelInfo(BaseModel):
    name: str
    aliases: dict[str, str]
    loaded_versions: list[str]
    default_version: str | None = Field(description="what a request without a version gets (pin or alias)")
    columns: int | None = None
    no_skill: str | None = Field(
        None,
        description="why this model has no champion when the promotion gate refused it (no skill, or "
        "another rule)",
    )
    state: str = Field(
        "serving",
        description="serving (has a champion), no skill (the gate found none: 409), refused by the gate "
        "(skill shown, another rule failed, e.g. calibration: 409), no champion, or not built (no version "
        "registered yet: train its cell)",
    )
    cell: str | None = Field(None, description="its cell of the probability matrix (GROUP-TF-KIND-hH)")
    symbols: list[str] | None = Field(None, description="the symbols it was trained for")
    timeframe: str | None = None
    horizon: int | None = Field(None, description="label horizon in bars of its timeframe")
    label_kind: str | None = None


class ModelsResponse(BaseModel):
    tenant: str
    models: list[ModelInfo]


class MatrixCell(BaseModel):
    """Your newest probability of one followed (symbol, timeframe, label kind, horizon)."""

    probability: float = Field(
        description="P(label 1): P(up) for direction and up/flat/down, take-profit first for triple barrier"
    )
    probabilities: dict[str, float] | None = Field(
        None, description="up/flat/down cells: {down, flat, up} probabilities summing to 1; null otherwise"
    )
    signal: str = Field(
        description="long / short / flat by your thresholds (triple barrier: long or flat; up/flat/down: "
        "long when (1 + P(up) − P(down)) / 2 > long_above, short when it is < short_below)"
    )
    bar_time: str = Field(description="open time (UTC, ISO 8601) of the bar it was scored on")
    model: str
    version: str
    scored_at: str = Field(description="when the score was committed (UTC)")


class MatrixResponse(BaseModel):
    tenant: str
    follows: int = Field(description="cells you follow")
    missing: list[str] = Field(
        description="followed cells (SYMBOL:TIMEFRAME:HORIZON:LABEL_KIND) with no probability yet "
        "(null in the grid)"
    )
    grid: dict[str, dict[str, dict[str, dict[str, MatrixCell | None]]]] = Field(
        description="symbol → timeframe → label kind → horizon (bars of that timeframe) → your newest "
        "probability, null where none has been scored yet"
    )


class ResultRow(BaseModel):
    symbol: str
    timeframe: str
    bar_time: str
    horizon: int
    label_kind: str
    probability: float = Field(description="P(label 1): P(up), or take-profit first for triple barrier")
    probabilities: dict[str, float] | None = Field(
        None, description="up/flat/down results: {down, flat, up} probabilities; null otherwise"
    )
    signal: str
    model_name: str
    model_version: str
    scored_at: str = Field(description="when the score was committed (UTC)")
    bar_closed_at: str = Field(description="when its bar closed (UTC); scored_at − bar_closed_at is the lag")
    event_id: int = Field(description="position in your result stream (GET /stream resumes after it)")


class ResultsResponse(BaseModel):
    tenant: str
    rows: list[ResultRow]


OwnTenant = Annotated[
    str | None, Field(max_length=200, description="tenant id or name; only your own is allowed")
]


ROWS_EXAMPLE = [[0.0001, -0.0002, 0.5]]
# `/score`'s fields, declared once: the endpoint and `ScoreBody` (its helper-process parser) share them
Rows = Annotated[
    list[Row],
    Field(
        description="feature rows, one list per row, columns in the model's order; null marks "
        "a missing value (a feature still in its warm-up), imputed as in training; values are "
        "JSON numbers (not strings or booleans); NaN and Infinity are rejected",
        examples=[ROWS_EXAMPLE],
        fail_fast=True,
        min_length=1,
    ),
]
Columns = Annotated[
    list[Annotated[str, Field(max_length=200)]],
    Field(
        description="column names of `rows` (checked against the model's; may be reordered)",
        fail_fast=True,
        max_length=100_000,
    ),
]


class ScoreBody(BaseModel):
    """The `/score` request body, as the endpoint declares it: used to parse large bodies in
    a separate process (`serving.bodies`), where the conversion holds no lock the service's
    event loop needs."""

    model_config = {"extra": "ignore"}

    rows: Rows
    columns: Columns | None = None
    model: ModelName | None = None
    version: VersionRef | None = None
