"""Request and response schemas of the scoring API (they become its OpenAPI document).

Probabilities are P(label 1) — P(up) for direction labels — over the model's horizon; bar
times are bar open times, UTC.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field


class ScoreResponse(BaseModel):
    model: str = Field(description="registered model name")
    version: str = Field(description="registered model version that produced the probabilities")
    alias: str | None = Field(None, description="the alias the request resolved through, if any")
    probabilities: list[float] = Field(description="P(up) per input row, in input order")


class BarsInput(BaseModel):
    """Closed bars of one timeframe, oldest first; ``time`` is the bar open, UTC epoch seconds;
    ``spread`` in points."""

    time: list[int]
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    tick_volume: list[float]
    spread: list[float]


class BarsScoreResponse(BaseModel):
    model: str
    version: str
    alias: str | None = None
    symbol: str
    bar_time: str = Field(description="open time (UTC, ISO 8601) of the scored bar: the newest given")
    probability: float = Field(description="P(up) over the model's horizon from that bar's close")
    features: int = Field(description="number of feature columns computed")


class ModelInfo(BaseModel):
    name: str
    aliases: dict[str, str]
    loaded_versions: list[str]
    default_version: str | None = Field(description="what a request without a version gets (pin or alias)")
    columns: int | None = None


class ModelsResponse(BaseModel):
    tenant: str
    models: list[ModelInfo]


class ResultRow(BaseModel):
    symbol: str
    timeframe: str
    bar_time: str
    horizon: int
    label_kind: str
    probability: float
    signal: str
    model_name: str
    model_version: str
    scored_at: str = Field(description="when the score was committed (UTC)")
    bar_closed_at: str = Field(description="when its bar closed (UTC); scored_at − bar_closed_at is the lag")
    event_id: int = Field(description="position in your result stream (GET /stream resumes after it)")


class ResultsResponse(BaseModel):
    tenant: str
    rows: list[ResultRow]


ROWS_EXAMPLE = [[0.0001, -0.0002, 0.5]]
OwnTenant = Annotated[str | None, Field(description="tenant id or name; only your own is allowed")]
