"""An embedded MT5 terminal backed by a market model with a planted, known signal.

The model, per symbol, on the index k of *open trading minutes* (UTC):

    x[k+1] = λ·x[k] + (1-λ)·ε[k]                 (an EMA of past shocks: the planted signal)
    r[k]   = a[k]·ε[k] + b[k]·x[k],  ε ~ N(0, 1)  (log-return of the bid over minute k)
    L[k]   = L[k-1] + r[k]                        (log bid at the minute's last tick)

``a[k]`` is the session-dependent volatility (Asia quiet, London/New York busy, a larger
shock on the first minute after a weekend or daily break), ``b[k] = strength·σ_session[k]``
and ``λ = 0.5 ** (1 / halflife_minutes)``. With ``strength = 0`` prices are a pure random walk.

Because the model is linear-Gaussian, the sum of future returns over any horizon, given the
state at a bar's close, is Gaussian with a computable mean and variance: the *true*
probability of a direction label is exact (`true_direction_probability`), which makes the
Bayes-optimal log loss computable.

Ticks inside each minute are a Brownian bridge pinned to L[k] at the minute's last tick, with
Poisson tick counts and session-dependent spreads; bars are aggregated from ticks exactly as
an MT5 terminal does (`pipelines.mt5.bars`). Markets are open Sunday 22:00 → Friday 22:00
UTC; metals also pause 21:00–22:00 UTC each day. Everything is deterministic from the seed:
each (symbol, UTC day) draws from its own seeded stream, so any query returns the same data.

``texture="market"`` adds the texture of a real market on top (no signal of its own):
volatility that clusters (a daily log-volatility level with a persistence of ~0.94 per day and
hourly swings within the day), fat-tailed shocks (Student t with 4 degrees of freedom, unit
variance), news — some weekdays at 13:30 and 19:00 UTC a jump (a normal with 50 minute-σ: up to
~150 pips on EURUSD) followed by half an hour of tripled volatility — and holidays
(25 December and 1 January closed). `true_direction_probability` then is the Gaussian
approximation with the right variance (exact at ``signal_strength = 0``: every probability is
one half up to price rounding).

Results are stamped in the configured broker server time (`ServerClock`), as a real broker's
terminal would. In live mode the simulated clock advances with wall time × `speed`.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtr

from pipelines.mt5.bars import aggregate_rates, bar_close_times, bar_open_times, ticks_to_m1
from pipelines.mt5.client import LocalTerminal, SymbolInfo
from pipelines.mt5.constants import (
    RATES_DTYPE,
    RES_E_INTERNAL_FAIL_CONNECT,
    RES_E_INTERNAL_FAIL_INIT,
    TICK_FLAG_ASK,
    TICK_FLAG_BID,
    TICKS_DTYPE,
    TIMEFRAME_M1,
    timeframe_value,
)
from pipelines.mt5.server_time import ServerClock, as_utc

DAY = 86_400
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class SymbolSpec:
    """Static description of a simulated instrument (price in quote currency)."""

    name: str
    description: str
    currency_base: str
    currency_profit: str
    start_price: float
    digits: int
    spread_points: int
    annual_vol: float
    daily_break: bool = False
    path: str = "Forex\\Majors"

    @property
    def point(self) -> float:
        return 10.0**-self.digits


DEFAULT_SYMBOLS: dict[str, SymbolSpec] = {
    s.name: s
    for s in (
        SymbolSpec("EURUSD", "Euro vs US Dollar", "EUR", "USD", 1.08500, 5, 7, 0.07),
        SymbolSpec("GBPUSD", "Great Britain Pound vs US Dollar", "GBP", "USD", 1.26500, 5, 9, 0.08),
        SymbolSpec("USDJPY", "US Dollar vs Japanese Yen", "USD", "JPY", 148.500, 3, 9, 0.09),
        SymbolSpec("AUDUSD", "Australian Dollar vs US Dollar", "AUD", "USD", 0.65500, 5, 8, 0.10),
        SymbolSpec("USDCHF", "US Dollar vs Swiss Franc", "USD", "CHF", 0.88000, 5, 9, 0.08),
        SymbolSpec("USDCAD", "US Dollar vs Canadian Dollar", "USD", "CAD", 1.35500, 5, 10, 0.06),
        SymbolSpec("NZDUSD", "New Zealand Dollar vs US Dollar", "NZD", "USD", 0.61000, 5, 10, 0.10),
        SymbolSpec(
            "EURJPY", "Euro vs Japanese Yen", "EUR", "JPY", 161.000, 3, 12, 0.09, path="Forex\\Crosses"
        ),
        SymbolSpec(
            "GBPJPY",
            "Great Britain Pound vs Japanese Yen",
            "GBP",
            "JPY",
            188.000,
            3,
            15,
            0.10,
            path="Forex\\Crosses",
        ),
        SymbolSpec(
            "XAUUSD",
            "Gold vs US Dollar",
            "XAU",
            "USD",
            2050.00,
            2,
            25,
            0.14,
            daily_break=True,
            path="Metals\\Spot",
        ),
    )
}

# UTC-hour multipliers: volatility/activity and spread widening (Asia, London, overlap, NY, rollover)
_VOL_BY_HOUR = np.array([0.6] * 7 + [1.2] * 5 + [1.5] * 4 + [1.0] * 5 + [0.4] + [0.6] * 2)
_SPREAD_BY_HOUR = np.array([1.4] * 7 + [1.0] * 14 + [3.0] + [1.4] * 2)
_GAP_SCALE = 0.3  # first minute after a closure: σ·(1 + 0.3·sqrt(closed minutes))
# texture="market" (see module docstring)
_HOLIDAYS = ("12-25", "01-01")
_VOL_PERSISTENCE = 0.94  # daily log-volatility AR(1) coefficient
_VOL_DAILY_SD = 0.35  # its stationary standard deviation
_VOL_MEMORY_DAYS = 90  # 0.94**90 < 0.004: older days no longer matter
_VOL_HOURLY_PERSISTENCE = 0.7
_VOL_HOURLY_SD = 0.25
_TAIL_DF = 4.0  # Student t degrees of freedom of the shocks
_NEWS = ((13 * 60 + 30, 0.15), (19 * 60, 0.04))  # (UTC minute of day, chance on a weekday)
_NEWS_JUMP_SIGMAS = 50.0  # news jump: normal with this many minute-σ
_NEWS_AFTER_MINUTES, _NEWS_AFTER_VOL = 30, 3.0  # volatility after news: ×3, decaying over 30 min


@dataclass(frozen=True)
class SimulatorConfig:
    """Simulator settings.

    `start` is where history begins (UTC). In history mode the terminal's "now" is `end`; in
    live mode the clock reads `live_start` (default `end`, else wall-clock now) at the wall-clock
    moment `live_anchor` (default: when the terminal is created) and advances with wall time ×
    `speed`; terminals of several processes given the same anchor share one clock, as
    processes attached to one real terminal do. `signal_strength` = 0 gives a pure random walk.
    """

    seed: int = 7
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    end: datetime | None = datetime(2024, 3, 1, tzinfo=UTC)
    symbols: tuple[str, ...] = tuple(DEFAULT_SYMBOLS)
    signal_strength: float = 0.3
    signal_halflife_minutes: float = 30.0
    ticks_per_minute: float = 6.0
    texture: str = "plain"  # plain | market (see the module docstring)
    live: bool = False
    speed: float = 1.0
    live_start: datetime | None = None
    live_anchor: datetime | None = None
    # live mode: scheduled terminal outages, (wall seconds after the anchor, duration seconds);
    # during one every call and `initialize` fail, as when the terminal stops responding
    outages: tuple[tuple[float, float], ...] = ()
    clock: ServerClock = field(default_factory=ServerClock)

    def __post_init__(self) -> None:
        unknown = [s for s in self.symbols if s not in DEFAULT_SYMBOLS]
        if unknown:
            raise ValueError(f"simulator has no symbol(s) {unknown}; available: {sorted(DEFAULT_SYMBOLS)}")
        if self.signal_halflife_minutes <= 0 or self.ticks_per_minute <= 0 or self.speed <= 0:
            raise ValueError("signal_halflife_minutes, ticks_per_minute and speed must be > 0")
        if not self.live and self.end is None:
            raise ValueError("history mode needs `end` (the simulated 'now')")
        if self.texture not in ("plain", "market"):
            raise ValueError(f"texture must be 'plain' or 'market', got {self.texture!r}")


@dataclass
class _DayState:
    x: float  # signal state for the day's first open minute
    log_price: float  # log bid before the day's first open minute
    closed_minutes: int  # closed minutes just before the day's first open minute


@dataclass
class _Skeleton:
    """One UTC day of one symbol, per open minute."""

    minute: np.ndarray  # UTC epoch minutes
    a: np.ndarray  # shock scale
    b: np.ndarray  # signal loading
    eps: np.ndarray
    x: np.ndarray
    log_price: np.ndarray  # log bid at the minute's last tick
    sigma: np.ndarray  # session σ (without gap)


def _open_mask(day_start: int, daily_break: bool, holidays: tuple[str, ...] = ()) -> np.ndarray:
    """Open minutes of the UTC day starting at `day_start` (epoch seconds); `holidays` are
    ``"MM-DD"`` days closed all day."""
    date = datetime.fromtimestamp(day_start, UTC)
    weekday = date.weekday()  # Mon=0
    minute = np.arange(MINUTES_PER_DAY)
    hour = minute // 60
    if weekday == 5 or f"{date:%m-%d}" in holidays:
        return np.zeros(MINUTES_PER_DAY, dtype=bool)
    if weekday == 6:
        return hour >= 22
    mask = np.ones(MINUTES_PER_DAY, dtype=bool)
    if weekday == 4:
        mask &= hour < 22
    if daily_break:
        mask &= hour != 21
    return mask


class MarketSimulator(LocalTerminal):
    """The default MT5 backend: see the module docstring for the market model."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        super().__init__()
        self.config = config or SimulatorConfig()
        self._lambda = 0.5 ** (1.0 / self.config.signal_halflife_minutes)
        self._start_day = int(as_utc(self.config.start).timestamp()) // DAY
        self._states: dict[str, list[_DayState]] = {}
        self._skeletons: OrderedDict[tuple[str, int], _Skeleton] = OrderedDict()
        self._ticks_cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        anchor = self.config.live_anchor
        self._wall0 = time.time() if anchor is None else as_utc(anchor).timestamp()
        live_start = self.config.live_start or self.config.end or datetime.now(UTC)
        self._live_start = int(as_utc(live_start).timestamp())
        self._down_until = 0.0

    # --- clock and faults -----------------------------------------------------------------------
    def now_utc(self) -> datetime:
        return datetime.fromtimestamp(self._now_utc_seconds(), UTC)

    def wall_time_of(self, utc_seconds: float) -> float:
        """The wall-clock moment (epoch seconds) at which this terminal's clock reads
        `utc_seconds`: in live mode, when an accelerated clock crosses it; else the same."""
        if not self.config.live:
            return float(utc_seconds)
        return self._wall0 + (utc_seconds - self._live_start) / self.config.speed

    def _now_utc_seconds(self) -> float:
        if not self.config.live:
            return float(int(as_utc(self.config.end).timestamp()))  # type: ignore[arg-type]
        return self._live_start + (time.time() - self._wall0) * self.config.speed

    def _server_now(self) -> int:
        return int(self.config.clock.to_server(int(self._now_utc_seconds())))

    def _server_now_msc(self) -> int:
        now = self._now_utc_seconds()
        return int(self.config.clock.to_server(int(now))) * 1000 + int((now % 1) * 1000)

    def simulate_outage(self, seconds: float) -> None:
        """Drop the terminal connection; calls and `initialize` fail for `seconds` of wall time."""
        self._down_until = time.monotonic() + seconds
        self._initialized = False

    def _down(self) -> bool:
        """Whether the terminal is unreachable now (`simulate_outage` or a scheduled outage)."""
        if time.monotonic() < self._down_until:
            return True
        if self.config.live and self.config.outages:
            since = time.time() - self._wall0
            return any(start <= since < start + length for start, length in self.config.outages)
        return False

    def _connect(self, path: str | None, **kwargs: object) -> tuple[int, str] | None:
        if self._down():
            return (RES_E_INTERNAL_FAIL_INIT, "IPC initialize failed: terminal not responding")
        return None

    def _check(self, symbol: str | None = None, timeframe: int | None = None) -> bool:
        if self._down():
            self._initialized = False
            self._fail(RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")
            return False
        return super()._check(symbol, timeframe)

    # --- the market model -------------------------------------------------------------------------
    def _spec(self, symbol: str) -> SymbolSpec:
        return DEFAULT_SYMBOLS[symbol]

    def _rng(self, symbol: str, day: int, stream: int) -> np.random.Generator:
        key = zlib.crc32(symbol.encode())
        return np.random.default_rng([self.config.seed, key, day, stream])

    def _base_sigma(self, spec: SymbolSpec) -> float:
        # divide by (1 + strength): the signal adds long-run variance; keep annual_vol honest
        return spec.annual_vol / math.sqrt(252 * MINUTES_PER_DAY) / (1 + self.config.signal_strength)

    def _state(self, symbol: str, day: int) -> _DayState:
        """State at the start of UTC `day` (days since epoch), computed forward from `start`."""
        if day < self._start_day:
            raise ValueError(f"day {day} is before the simulator start")
        states = self._states.setdefault(symbol, [])
        if not states:
            states.append(_DayState(0.0, math.log(self._spec(symbol).start_price), 0))
        while len(states) <= day - self._start_day:
            sk = self._skeleton(symbol, self._start_day + len(states) - 1)
            prev = states[-1]
            if sk.minute.size == 0:
                states.append(_DayState(prev.x, prev.log_price, prev.closed_minutes + MINUTES_PER_DAY))
                continue
            day_end = (self._start_day + len(states)) * MINUTES_PER_DAY
            states.append(
                _DayState(
                    self._lambda * sk.x[-1] + (1 - self._lambda) * sk.eps[-1],
                    float(sk.log_price[-1]),
                    int(day_end - sk.minute[-1] - 1),
                )
            )
        return states[day - self._start_day]

    def _skeleton(self, symbol: str, day: int) -> _Skeleton:
        key = (symbol, day)
        if key in self._skeletons:
            self._skeletons.move_to_end(key)
            return self._skeletons[key]
        spec = self._spec(symbol)
        state = self._state(symbol, day)
        market = self.config.texture == "market"
        mask = _open_mask(day * DAY, spec.daily_break, _HOLIDAYS if market else ())
        idx = np.flatnonzero(mask)
        minute = day * MINUTES_PER_DAY + idx
        sigma = self._base_sigma(spec) * _VOL_BY_HOUR[idx // 60]
        jumps = np.zeros(idx.size)
        if market and idx.size:
            sigma = sigma * self._volatility_level(symbol, day, idx)
            jumps, after = self._news(symbol, day, idx, sigma)
            sigma = sigma * after
        # closed minutes before each open minute (gap shock after weekends and breaks)
        gaps = np.diff(np.r_[minute[:1] - 1 - state.closed_minutes, minute]) - 1
        a = sigma * (1.0 + _GAP_SCALE * np.sqrt(np.maximum(gaps, 0)))
        b = self.config.signal_strength * sigma
        rng = self._rng(symbol, day, 0)
        if market:  # Student t scaled to unit variance: the same σ, fatter tails
            eps = rng.standard_t(_TAIL_DF, idx.size) / math.sqrt(_TAIL_DF / (_TAIL_DF - 2))
        else:
            eps = rng.standard_normal(idx.size)
        lam = self._lambda
        x = lfilter([0.0, 1 - lam], [1.0, -lam], eps) + state.x * lam ** np.arange(idx.size)
        log_price = state.log_price + np.cumsum(a * eps + b * x + jumps)
        sk = _Skeleton(minute, a, b, eps, x, log_price, sigma)
        self._skeletons[key] = sk
        if len(self._skeletons) > 512:
            self._skeletons.popitem(last=False)
        return sk

    def _volatility_level(self, symbol: str, day: int, idx: np.ndarray) -> np.ndarray:
        """texture="market": the volatility multiplier of each open minute `idx` of `day` — a
        daily log-level (AR(1) over days, from each day's own seeded draw) and an hourly AR(1)
        within the day, normalised so the mean variance is unchanged."""
        phi, sd = _VOL_PERSISTENCE, _VOL_DAILY_SD
        draws = np.array(
            [self._rng(symbol, d, 2).standard_normal() for d in range(day - _VOL_MEMORY_DAYS + 1, day + 1)]
        )
        level = sd * math.sqrt(1 - phi**2) * float(np.sum(draws * phi ** np.arange(draws.size)[::-1]))
        psi, hsd = _VOL_HOURLY_PERSISTENCE, _VOL_HOURLY_SD
        shocks = self._rng(symbol, day, 3).standard_normal(24)
        hourly = lfilter([hsd * math.sqrt(1 - psi**2)], [1.0, -psi], shocks)
        log_vol = level + hourly[idx // 60]
        # E[exp(2·log_vol)] = exp(2(sd² + hsd²)): subtracting the variances keeps the mean variance
        return np.exp(log_vol - (sd**2 + hsd**2))

    def _news(
        self, symbol: str, day: int, idx: np.ndarray, sigma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """texture="market": (log-price jump per open minute, volatility multiplier after news)
        for `day`. The news schedule is the same for every symbol (a US release moves them all);
        each symbol's jump is its own draw."""
        jumps = np.zeros(idx.size)
        after = np.ones(idx.size)
        if datetime.fromtimestamp(day * DAY, UTC).weekday() >= 5:
            return jumps, after
        schedule = np.random.default_rng([self.config.seed, day, 4]).random(len(_NEWS))
        draws = self._rng(symbol, day, 4).standard_normal(len(_NEWS))
        for (at, chance), u, z in zip(_NEWS, schedule, draws, strict=True):
            k = int(np.searchsorted(idx, at))
            if u >= chance or k >= idx.size or idx[k] != at:
                continue
            jumps[k] = _NEWS_JUMP_SIGMAS * sigma[k] * z
            since = idx[k:] - at
            after[k:] *= 1 + (_NEWS_AFTER_VOL - 1) * np.clip(1 - since / _NEWS_AFTER_MINUTES, 0, 1)
        return jumps, after

    def _day_ticks(self, symbol: str, day: int) -> np.ndarray:
        """All ticks of one UTC day (times in UTC), cached."""
        key = (symbol, day)
        if key in self._ticks_cache:
            self._ticks_cache.move_to_end(key)
            return self._ticks_cache[key]
        spec = self._spec(symbol)
        sk = self._skeleton(symbol, day)
        rng = self._rng(symbol, day, 1)
        n_min = sk.minute.size
        if n_min == 0:
            return np.zeros(0, dtype=TICKS_DTYPE)
        hours = (sk.minute % MINUTES_PER_DAY) // 60
        intensity = self.config.ticks_per_minute * _VOL_BY_HOUR[hours] * (0.6 + 0.4 * np.abs(sk.eps))
        counts = 1 + rng.poisson(intensity)
        total = int(counts.sum())
        owner = np.repeat(np.arange(n_min), counts)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        pos = np.arange(total) - np.repeat(starts, counts) + 1  # 1..n within the minute
        frac = pos / np.repeat(counts, counts)
        # Brownian bridge inside each minute, pinned at the last tick
        z = rng.standard_normal(total) * np.repeat(sk.sigma / np.sqrt(counts), counts)
        w = np.cumsum(z)
        w -= np.repeat(np.r_[0.0, w[starts[1:] - 1]], counts)
        w_end = np.repeat(w[np.r_[starts[1:] - 1, total - 1]], counts)
        # a reopening gap happens before the minute's first tick, not inside its range
        jump = (sk.a - sk.sigma) * sk.eps
        prev_log = np.r_[self._state(symbol, day).log_price, sk.log_price[:-1]] + jump
        lp = np.repeat(prev_log, counts) + frac * np.repeat(sk.log_price - prev_log, counts)
        lp += w - frac * w_end
        # tick times: sorted uniform offsets within each minute, the last tick before 60 s
        offsets = np.sort(owner + rng.random(total))
        time_msc = np.repeat(sk.minute, counts) * 60_000 + ((offsets - owner) * 60_000).astype(np.int64)
        spread = np.rint(spec.spread_points * _SPREAD_BY_HOUR[np.repeat(hours, counts)])
        spread = (spread + rng.poisson(1.0, total)).astype(np.int64)
        ticks = np.zeros(total, dtype=TICKS_DTYPE)
        bid = np.round(np.exp(lp), spec.digits)
        ask = np.round(bid + spread * spec.point, spec.digits)
        ticks["time_msc"] = time_msc
        ticks["time"] = time_msc // 1000
        ticks["bid"] = bid
        ticks["ask"] = ask
        changed_bid = np.r_[True, bid[1:] != bid[:-1]]
        changed_ask = np.r_[True, ask[1:] != ask[:-1]]
        flags = TICK_FLAG_BID * changed_bid + TICK_FLAG_ASK * changed_ask
        ticks["flags"] = np.where(flags == 0, TICK_FLAG_BID | TICK_FLAG_ASK, flags)
        self._ticks_cache[key] = ticks
        if len(self._ticks_cache) > 64:
            self._ticks_cache.popitem(last=False)
        return ticks

    def _utc_days(self, start_utc: int, end_utc: int) -> range:
        first = max(self._start_day, start_utc // DAY)
        last = min(end_utc, int(self._now_utc_seconds())) // DAY
        return range(first, last + 1)

    def _ticks_utc(self, symbol: str, start_msc: int, end_msc: int) -> np.ndarray:
        now_msc = int(self._now_utc_seconds() * 1000)
        end_msc = min(end_msc, now_msc)
        parts = [self._day_ticks(symbol, d) for d in self._utc_days(start_msc // 1000, end_msc // 1000)]
        if not parts:
            return np.zeros(0, dtype=TICKS_DTYPE)
        ticks = np.concatenate(parts)
        lo = np.searchsorted(ticks["time_msc"], start_msc, side="left")
        hi = np.searchsorted(ticks["time_msc"], end_msc, side="right")
        return ticks[lo:hi]

    def _to_server_ticks(self, ticks: np.ndarray) -> np.ndarray:
        clock = self.config.clock
        if clock.is_utc or ticks.size == 0:
            return ticks
        out = ticks.copy()
        shift = clock.offset_seconds(ticks["time"])
        out["time"] += shift
        out["time_msc"] += shift * 1000
        return out

    def _m1_utc(self, symbol: str, start: int, end: int) -> np.ndarray:
        """M1 bars (UTC open times) with open time in [start, end], forming bar included."""
        spec = self._spec(symbol)
        parts = []
        now_msc = int(self._now_utc_seconds() * 1000)
        for day in self._utc_days(start, end):
            ticks = self._day_ticks(symbol, day)
            if (day + 1) * DAY * 1000 > now_msc:
                ticks = ticks[: np.searchsorted(ticks["time_msc"], now_msc, side="right")]
            parts.append(ticks_to_m1(ticks, spec.point))
        if not parts:
            return np.zeros(0, dtype=RATES_DTYPE)
        m1 = np.concatenate(parts)
        return m1[(m1["time"] >= start) & (m1["time"] <= end)]

    # --- LocalTerminal hooks ----------------------------------------------------------------------
    def _symbol_names(self) -> list[str]:
        return list(self.config.symbols)

    def _symbol_info(self, symbol: str) -> SymbolInfo:
        spec = self._spec(symbol)
        now_ms = self._server_now_msc()
        last = self._ticks(symbol, now_ms - 7 * DAY * 1000, now_ms)
        tick = last[-1] if last.size else None
        return SymbolInfo(
            name=spec.name,
            description=spec.description,
            path=f"{spec.path}\\{spec.name}",
            currency_base=spec.currency_base,
            currency_profit=spec.currency_profit,
            digits=spec.digits,
            point=spec.point,
            spread=spec.spread_points,
            spread_float=True,
            trade_tick_size=spec.point,
            trade_contract_size=100.0 if spec.daily_break else 100_000.0,
            visible=True,
            time=int(tick["time"]) if tick is not None else 0,
            bid=float(tick["bid"]) if tick is not None else 0.0,
            ask=float(tick["ask"]) if tick is not None else 0.0,
        )

    def _first_time(self, symbol: str) -> int:
        return int(self.config.clock.to_server(self._start_day * DAY))

    def _ticks(self, symbol: str, start_msc: int, end_msc: int) -> np.ndarray:
        clock = self.config.clock
        lo = int(clock.to_utc(start_msc // 1000)) * 1000 - 3_600_000
        hi = int(clock.to_utc(end_msc // 1000)) * 1000 + 3_600_000
        ticks = self._to_server_ticks(self._ticks_utc(symbol, lo, hi))
        keep = (ticks["time_msc"] >= start_msc) & (ticks["time_msc"] <= end_msc)
        return ticks[keep]

    def _rates(self, symbol: str, timeframe: int, start: int, end: int) -> np.ndarray:
        clock = self.config.clock
        tf = timeframe_value(timeframe)
        span_lo = int(bar_open_times(np.array([start]), tf)[0])
        span_hi = int(bar_close_times(bar_open_times(np.array([end]), tf), tf)[0])
        m1 = self._m1_utc(symbol, int(clock.to_utc(span_lo)) - 7200, int(clock.to_utc(span_hi)) + 7200)
        if not clock.is_utc and m1.size:
            m1 = m1.copy()
            m1["time"] = clock.to_server(m1["time"])
        bars = m1 if tf == TIMEFRAME_M1 else aggregate_rates(m1, tf)
        return bars[(bars["time"] >= start) & (bars["time"] <= end)]

    # --- ground truth ------------------------------------------------------------------------------
    def _minute_path(self, symbol: str, start_utc: int, end_utc: int) -> _Skeleton:
        days = range(max(self._start_day, start_utc // DAY), end_utc // DAY + 1)
        parts = [self._skeleton(symbol, d) for d in days]
        return _Skeleton(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("minute", "a", "b", "eps", "x", "log_price", "sigma")
            )
        )

    def true_direction_probability(
        self,
        symbol: str,
        timeframe: str | int,
        bar_times: np.ndarray,
        horizon: int,
        dead_zone: float | np.ndarray = 0.0,
    ) -> dict[str, np.ndarray]:
        """Exact P(up), P(down), P(flat) for direction labels on closed bars.

        For the bar opening at each `bar_times` (server epoch seconds), with c = its close and
        F = the close `horizon` bars later (both bid, rounded to the symbol's digits):
        up ⟺ F − c > dead_zone, down ⟺ F − c < −dead_zone, flat otherwise. `dead_zone` is in
        price units (scalar or one per bar). Probabilities are conditional on the model's full
        state at the bar's close. Bars whose horizon runs past the simulator's "now" get NaN.
        """
        spec = self._spec(symbol)
        tf = timeframe_value(timeframe)
        t = np.asarray(bar_times, dtype=np.int64)
        now_server = self._server_now()
        bars = self._rates(symbol, tf, int(t.min()), now_server)
        closed = bar_close_times(bars["time"], tf) <= now_server
        bars = bars[closed]
        pos = np.searchsorted(bars["time"], t)
        if np.any(pos >= bars.size) or np.any(bars["time"][np.minimum(pos, bars.size - 1)] != t):
            raise ValueError("true_direction_probability: every bar time must be a closed bar")
        clock = self.config.clock
        # last open minute of each bar (UTC minute index) = the minute holding its close
        close_utc = clock.to_utc(bar_close_times(bars["time"], tf)) // 60 - 1
        path = self._minute_path(symbol, int(clock.to_utc(int(t.min()))), int(close_utc.max()) * 60)
        k_bar = np.searchsorted(path.minute, close_utc, side="right") - 1
        k0 = k_bar[pos]
        future = pos + horizon
        valid = future < bars.size
        k1 = np.where(valid, k_bar[np.minimum(future, bars.size - 1)], k0)
        n_ahead = k1 - k0
        h_max = int(n_ahead.max()) if n_ahead.size else 0
        lam = self._lambda
        a, b = path.a, path.b
        last = path.minute.size - 1
        x_next = lam * path.x[k0] + (1 - lam) * path.eps[k0]
        acc = np.zeros(t.size)  # A_j = Σ_{i>j}^{H} b[k0+i] λ^{i-1-j}
        var = np.zeros(t.size)
        for j in range(h_max, 0, -1):
            inside = j <= n_ahead
            idx = np.minimum(k0 + j, last)
            coef = a[idx] + (1 - lam) * acc
            var += np.where(inside, coef**2, 0.0)
            acc = np.where(inside, b[idx] + lam * acc, 0.0)
        mean = x_next * acc  # acc = Σ_{i=1}^{H} b[k0+i] λ^{i-1} after the loop
        close = bars["close"][pos]
        point = spec.point
        dz = np.broadcast_to(np.asarray(dead_zone, dtype=float), t.shape)
        g_up = (np.floor((close + dz) / point + 1e-9) + 1) * point
        g_dn = (np.ceil((close - dz) / point - 1e-9) - 1) * point
        lp0 = path.log_price[k0]
        sd = np.sqrt(np.maximum(var, 1e-300))
        p_up = 1.0 - ndtr((np.log(g_up - point / 2) - lp0 - mean) / sd)
        p_dn = ndtr((np.log(np.maximum(g_dn + point / 2, 1e-12)) - lp0 - mean) / sd)
        p_up = np.where(valid, p_up, np.nan)
        p_dn = np.where(valid, p_dn, np.nan)
        return {"p_up": p_up, "p_down": p_dn, "p_flat": 1.0 - p_up - p_dn}
