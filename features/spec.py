"""Typed descriptions of which features and labels to build. Built from params.yaml by the
entry points (`pipelines.config`); this package never reads configuration itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from features.gaps import MarketHours


@dataclass(frozen=True)
class Windows:
    """Window lengths, in bars of the timeframe a family is computed on."""

    return_lags: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    volatility: tuple[int, ...] = (16, 64)
    atr: int = 14
    range: tuple[int, ...] = (16, 64)
    rsi: int = 14
    macd: tuple[int, int, int] = (12, 26, 9)
    bollinger: int = 20
    moving_average: tuple[int, ...] = (20, 50, 200)
    tick_volume: int = 64
    sequence: int = 32  # bars of normalised one-bar returns for sequence models


BASE_FAMILIES = (
    "returns",
    "volatility",
    "atr",
    "range_position",
    "rsi",
    "macd",
    "bollinger",
    "moving_average",
    "tick_volume",
    "spread",
    "calendar",
    "session",
    "previous_day",
)
# calendar, session, previous-day, spread and tick-volume features describe the base bar
# itself; on a higher timeframe they would repeat what the base row already says
HTF_FAMILIES = tuple(
    f for f in BASE_FAMILIES if f not in ("tick_volume", "spread", "calendar", "session", "previous_day")
)


@dataclass(frozen=True)
class FeatureSpec:
    """Families on the base timeframe, families on each higher timeframe, their windows, and
    the market's hours (a window that spans bars missing in trading hours is NaN:
    `features.gaps`)."""

    base_timeframe: str = "M5"
    higher_timeframes: tuple[str, ...] = ("M15", "H1", "H4", "D1")
    families: tuple[str, ...] = BASE_FAMILIES
    htf_families: tuple[str, ...] = HTF_FAMILIES
    windows: Windows = field(default_factory=Windows)
    market_hours: MarketHours = field(default_factory=MarketHours)


@dataclass(frozen=True)
class DirectionLabelSpec:
    """Fixed-horizon direction: up if close[t+h] − close[t] > dead zone, down if < −dead zone.

    `dead_zone` is in ATR multiples (``unit="atr"``, ATR of `atr_window` bars at t) or pips
    (``unit="pips"``). Moves exactly equal to ± the dead zone are *flat* (strict inequalities).
    Flat moves are dropped (NaN label) or get their own class (``neutral="class"``).
    """

    horizon: int = 12
    dead_zone: float = 0.0
    unit: Literal["atr", "pips"] = "atr"
    neutral: Literal["drop", "class"] = "drop"
    atr_window: int = 14


@dataclass(frozen=True)
class TripleBarrierSpec:
    """Take-profit / stop-loss at ATR multiples from close[t], vertical barrier at t + horizon.

    Barriers are checked on bars t+1 … t+h with each bar's high and low. When one bar touches
    both, `both_touched` decides: ``"stop"`` (the conservative default: assume the stop came
    first) or ``"take"``. At the vertical barrier the label is 0, or the sign of the return
    when ``vertical="sign"``.
    """

    horizon: int = 12
    take_profit_atr: float = 2.0
    stop_loss_atr: float = 2.0
    atr_window: int = 14
    both_touched: Literal["stop", "take"] = "stop"
    vertical: Literal["zero", "sign"] = "zero"
