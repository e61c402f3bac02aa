"""Typed configuration, read once from ``params.yaml`` at an entry point and passed down.

``params.yaml`` has one section per room and a ``profiles:`` section whose entries are
deep-merged over the rest when selected (``--profile fast``). Library code never opens the
file: entry points call `load_params` and hand the typed sections to the functions they call.

``params.yaml`` is the source of every default: the classes below carry the same values
(`tests/test_configs.py` proves ``load_params("params.yaml") == Params()``), so code that
builds a section without the file gets what the file says. Every section, the top level
included, rejects unknown keys: a misspelt key stops `load_params` with a `ParamsError` of one
line naming its path (``models.mlp.hiden: unknown key``), and every entry point run through
`run_cli` prints that line and exits 2.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.gaps import MarketHours
from features.spec import (
    BASE_FAMILIES,
    HTF_FAMILIES,
    DirectionLabelSpec,
    FeatureSpec,
    TripleBarrierSpec,
    Windows,
)
from models.learners import LEARNERS
from pipelines.mt5.constants import timeframe_name, timeframe_seconds
from pipelines.mt5.server_time import ServerClock


class ParamsError(ValueError):
    """params.yaml cannot be used as written; the message is one line naming the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _utc(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


class ServerTimeParams(_Frozen):
    """Broker server time: UTC offset in hours plus DST rule (none | us | eu)."""

    offset_hours: float = 0.0
    dst: Literal["none", "us", "eu"] = "none"

    def clock(self) -> ServerClock:
        return ServerClock(self.offset_hours, self.dst)


class SimulatorParams(_Frozen):
    """The embedded simulator (see pipelines.mt5.simulator). Times are UTC."""

    seed: int = 7
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    end: datetime | None = datetime(2024, 7, 1, tzinfo=UTC)
    signal_strength: float = Field(0.3, ge=0)
    signal_halflife_minutes: float = Field(30.0, gt=0)
    ticks_per_minute: float = Field(6.0, gt=0)
    texture: Literal["plain", "market"] = "plain"  # market: clustering, fat tails, news jumps, holidays
    live: bool = False
    speed: float = Field(60.0, gt=0)
    live_start: datetime | None = None
    live_anchor: datetime | None = None  # wall-clock moment the live clock reads live_start
    # live mode: terminal outages to simulate, [wall seconds after live_anchor, seconds down]
    outages: tuple[tuple[float, float], ...] = ()

    _v = field_validator("start", "end", "live_start", "live_anchor", mode="before")(_utc)


class ExportParams(_Frozen):
    """A folder of files exported from an MT5/MT4 terminal; digits per symbol optional."""

    directory: Path = Path("exports")
    digits: dict[str, int] = Field(default_factory=dict)


class Mt5LinuxParams(_Frozen):
    """The mt5linux RPyC server in front of a terminal under Wine."""

    host: str = "localhost"
    port: int = 18812
    timeout_seconds: float = 30.0


class Mt5Params(_Frozen):
    """The official MetaTrader5 package (Windows). The password comes from an env variable."""

    path: str | None = None
    login: int | None = None
    server: str | None = None
    password_env: str = "MT5_PASSWORD"
    timeout_ms: int = 60_000


class ValidationParams(_Frozen):
    max_bad_ratio: float = Field(0.01, ge=0, le=1)
    ratio_min_rows: int = Field(100, ge=1)
    spike_atr_multiple: float = Field(12.0, gt=0)
    atr_window: int = Field(14, ge=2)


class LiveIngestParams(_Frozen):
    """Live polling: interval, and exponential backoff on terminal errors."""

    poll_seconds: float = Field(5.0, gt=0)
    backoff_initial_seconds: float = Field(1.0, gt=0)
    backoff_max_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(10, ge=1)


class DataParams(_Frozen):
    """The ``data:`` section: where bars come from, which series, and how they are checked."""

    root: Path = Path("data")
    backend: Literal["simulator", "export", "mt5", "mt5linux"] = "simulator"
    symbols: tuple[str, ...] = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
    timeframes: tuple[str, ...] = ("M1", "M5", "M15", "H1", "H4", "D1")
    ticks: bool = False
    history_start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    server_time: ServerTimeParams = ServerTimeParams()
    simulator: SimulatorParams = SimulatorParams()
    export: ExportParams = ExportParams()
    mt5linux: Mt5LinuxParams = Mt5LinuxParams()
    mt5: Mt5Params = Mt5Params()
    validation: ValidationParams = ValidationParams()
    live: LiveIngestParams = LiveIngestParams()

    _v = field_validator("history_start", mode="before")(_utc)

    @field_validator("timeframes", mode="before")
    @classmethod
    def _canonical_timeframes(cls, value: Any) -> Any:
        return tuple(timeframe_name(tf) for tf in value)

    @field_validator("symbols")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("data.symbols is empty: name at least one symbol")
        return value


class WindowsParams(_Frozen):
    """Window lengths in bars of the timeframe a family runs on (see features.spec.Windows)."""

    return_lags: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    volatility: tuple[int, ...] = (16, 64)
    atr: int = Field(14, ge=1)
    range: tuple[int, ...] = (16, 64)
    rsi: int = Field(14, ge=2)
    macd: tuple[int, int, int] = (12, 26, 9)
    bollinger: int = Field(20, ge=2)
    moving_average: tuple[int, ...] = (20, 50, 200)
    tick_volume: int = Field(64, ge=2)
    sequence: int = Field(32, ge=2)


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _minute_of_day(text: str, where: str) -> int:
    try:
        hour, minute = (int(p) for p in text.strip().split(":"))
        if not (0 <= hour <= 24 and 0 <= minute < 60 and hour * 60 + minute <= 1440):
            raise ValueError
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a UTC time of day like '21:00'") from None
    return hour * 60 + minute


class MarketHoursParams(_Frozen):
    """``features.market_hours``: when the market is closed, UTC (see `features.gaps`). Bars
    missing outside these closures are holes: windows and labels across them are NaN."""

    weekly_close: str = "Fri 21:00"
    weekly_open: str = "Sun 22:00"
    daily_breaks: tuple[str, ...] = ("21:00-23:00",)
    holidays: tuple[str, ...] = ("12-25", "01-01")
    enabled: bool = True

    @field_validator("weekly_close", "weekly_open")
    @classmethod
    def _weekly(cls, value: str) -> str:
        _minute_of_week(value)
        return value

    @field_validator("daily_breaks")
    @classmethod
    def _breaks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            _daily_break(item)
        return value

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                datetime.strptime(f"2024-{item}", "%Y-%m-%d")
            except ValueError:
                raise ValueError(f"holiday {item!r} is not a day like '12-25' (MM-DD, UTC)") from None
        return value

    def hours(self) -> MarketHours:
        return MarketHours(
            _minute_of_week(self.weekly_close),
            _minute_of_week(self.weekly_open),
            tuple(_daily_break(b) for b in self.daily_breaks),
            tuple(self.holidays),
            self.enabled,
        )


def _minute_of_week(text: str) -> int:
    day, _, clock = text.strip().partition(" ")
    if day[:3].lower() not in _WEEKDAYS:
        raise ValueError(f"{text!r} is not a UTC weekday and time like 'Fri 21:00'")
    return _WEEKDAYS.index(day[:3].lower()) * 1440 + _minute_of_day(clock, text)


def _daily_break(text: str) -> tuple[int, int]:
    start, _, end = text.partition("-")
    lo, hi = _minute_of_day(start, text), _minute_of_day(end, text)
    if lo >= hi:
        raise ValueError(f"daily break {text!r} must end after it starts (UTC, like '21:00-23:00')")
    return lo, hi


class FeaturesParams(_Frozen):
    """The ``features:`` section."""

    base_timeframe: str = "M5"
    higher_timeframes: tuple[str, ...] = ("M15", "H1", "H4", "D1")
    families: tuple[str, ...] = BASE_FAMILIES
    htf_families: tuple[str, ...] = HTF_FAMILIES
    windows: WindowsParams = WindowsParams()
    market_hours: MarketHoursParams = MarketHoursParams()

    @field_validator("base_timeframe", mode="before")
    @classmethod
    def _tf(cls, value: Any) -> Any:
        return timeframe_name(value)

    @field_validator("higher_timeframes", mode="before")
    @classmethod
    def _tfs(cls, value: Any) -> Any:
        return tuple(timeframe_name(tf) for tf in value)

    def spec(self) -> FeatureSpec:
        return FeatureSpec(
            self.base_timeframe,
            tuple(self.higher_timeframes),
            tuple(self.families),
            tuple(self.htf_families),
            Windows(**self.windows.model_dump()),
            self.market_hours.hours(),
        )


class DirectionParams(_Frozen):
    dead_zone: float = Field(0.0, ge=0)
    unit: Literal["atr", "pips"] = "atr"
    neutral: Literal["drop", "class"] = "drop"


class TripleBarrierParams(_Frozen):
    take_profit_atr: float = Field(2.0, gt=0)
    stop_loss_atr: float = Field(2.0, gt=0)
    both_touched: Literal["stop", "take"] = "stop"
    vertical: Literal["zero", "sign"] = "zero"


class UpFlatDownParams(_Frozen):
    """Three classes (`features.labels.up_flat_down_labels`): flat within ± `flat_within` ×
    ATR × √horizon."""

    flat_within: float = Field(0.3, gt=0)


class LabelsParams(_Frozen):
    """The ``labels:`` section: every kind is always built; `kind` is the one models train on
    (``up_flat_down``: three-class models, `models.three_way`)."""

    kind: Literal["direction", "triple_barrier", "up_flat_down"] = "direction"
    horizon: int = Field(12, ge=1)
    atr_window: int = Field(14, ge=1)
    direction: DirectionParams = DirectionParams()
    triple_barrier: TripleBarrierParams = TripleBarrierParams()
    up_flat_down: UpFlatDownParams = UpFlatDownParams()

    def direction_spec(self) -> DirectionLabelSpec:
        d = self.direction
        return DirectionLabelSpec(self.horizon, d.dead_zone, d.unit, d.neutral, self.atr_window)

    def triple_barrier_spec(self) -> TripleBarrierSpec:
        t = self.triple_barrier
        return TripleBarrierSpec(
            self.horizon, t.take_profit_atr, t.stop_loss_atr, self.atr_window, t.both_touched, t.vertical
        )


class CVParams(_Frozen):
    """Purged walk-forward cross-validation inside the training segment."""

    n_splits: int = Field(4, ge=2)
    test_fraction: float = Field(0.5, gt=0, lt=1)
    embargo_bars: int = Field(12, ge=0)


class LogisticParams(_Frozen):
    C: float = Field(0.001, gt=0)


class XGBParams(_Frozen):
    n_estimators: int = Field(400, ge=1)
    max_depth: int = Field(2, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    min_child_weight: float = Field(100.0, ge=0)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    early_stopping_rounds: int = Field(30, ge=1)


class MLPParams(_Frozen):
    hidden: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    max_epochs: int = Field(20, ge=1)
    batch_size: int = Field(1024, ge=8)
    patience: int = Field(3, ge=1)


class BacktestParams(_Frozen):
    """Threshold policy: long when p > threshold, short when p < 1 − threshold; costs in pips."""

    threshold: float = Field(0.55, gt=0.5, lt=1)
    commission_pips: float = Field(0.2, ge=0)
    # charged where a bar's spread is zero or missing (exports often carry SPREAD 0), reported
    # per symbol in the backtest; 0 turns the assumption off
    assumed_spread_pips: float = Field(1.0, ge=0)


class StackParams(_Frozen):
    """``models.stack``: the meta-learner's L2 penalty and optional regime feature columns."""

    l2: float = Field(1e-3, ge=0)
    regime_features: tuple[str, ...] = ()


class ModelsParams(_Frozen):
    """The ``models:`` section."""

    learners: tuple[str, ...] = ("logistic", "xgboost", "mlp")  # names in models.learners.LEARNERS
    registered: Literal["stacked", "ensemble"] = "stacked"
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    cv: CVParams = CVParams()
    calibration: tuple[Literal["none", "platt", "temperature", "isotonic"], ...] = (
        "none",
        "platt",
        "temperature",
        "isotonic",
    )
    stack: StackParams = StackParams()
    logistic: LogisticParams = LogisticParams()
    xgb: XGBParams = XGBParams()
    mlp: MLPParams = MLPParams()
    sequence: MLPParams = MLPParams(hidden=32, max_epochs=10)  # GRU width; `layers` unused
    seed: int = 7
    backtest: BacktestParams = BacktestParams()

    @field_validator("learners")
    @classmethod
    def _registered(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in value if n not in LEARNERS]
        if unknown:
            raise ValueError(f"unknown learner(s) {unknown}; registered: {sorted(LEARNERS)}")
        if not value:
            raise ValueError("name at least one learner")
        return value


_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "logistic": {"C": {"low": 1e-5, "high": 0.1, "log": True}},
    "xgboost": {
        "max_depth": {"low": 2, "high": 6, "int": True},
        "learning_rate": {"low": 0.01, "high": 0.2, "log": True},
        "min_child_weight": {"low": 10, "high": 300, "log": True},
        "subsample": {"low": 0.5, "high": 1.0},
        "colsample_bytree": {"low": 0.4, "high": 1.0},
    },
    "mlp": {
        "hidden": {"choices": [16, 32, 64]},
        "dropout": {"low": 0.1, "high": 0.5},
        "lr": {"low": 1e-4, "high": 3e-3, "log": True},
        "weight_decay": {"low": 1e-3, "high": 1e-1, "log": True},
    },
}


class TuneParams(_Frozen):
    """The ``tune:`` section: one Optuna study per base learner (purged-CV log loss)."""

    enabled: bool = True
    n_trials: int = Field(10, ge=1)
    timeout_seconds: float | None = Field(300.0, gt=0)
    storage: str | None = "sqlite:///optuna.db"
    log_to_mlflow: bool = True
    spaces: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=lambda: copy.deepcopy(_SPACES))


class GateParams(_Frozen):
    """The promotion gate (`models.gate`): ECE limit and its ceiling, and the two-sided
    confidence level whose lower bounds must exclude zero (skill over the base rate, and
    improvement over the champion)."""

    max_ece: float = Field(0.02, gt=0)
    ece_ceiling: float = Field(0.05, gt=0, le=1)  # how far the noise floor may raise max_ece
    level: float = Field(0.95, gt=0.5, lt=1)


class RegistryParams(_Frozen):
    """The ``registry:`` section: MLflow tracking URI (SQLite file by default) and naming."""

    tracking_uri: str = "sqlite:///mlflow.db"
    name_prefix: str = "mt5prob"
    symbol_group: str = "fx"
    gate: GateParams = GateParams()


class StoreParams(_Frozen):
    """The ``store:`` section: the per-tenant results database.

    ``url`` is what scoring and serving connect with (on PostgreSQL the ``mt5prob_app`` role,
    which row-level security confines to one tenant per transaction); ``admin_url`` runs the
    migrations and tenant administration (owner, superuser or BYPASSRLS). Empty ``admin_url``
    means the same as ``url`` (SQLite)."""

    url: str = "sqlite:///results.db"
    admin_url: str | None = None
    statement_timeout_ms: int = Field(5000, ge=0)  # a query running longer is cancelled (0 = none)
    connect_timeout_seconds: float = Field(5.0, gt=0)  # connecting, or waiting for a pooled connection
    # tenant data sealed under per-tenant data keys (pipelines/store/crypto.py); the master key
    # comes from MT5PROB_MASTER_KEY or MT5PROB_MASTER_KEY_FILE, never from this file
    encryption: bool = True
    keys_url: str | None = None  # the key store; None: beside a SQLite store, <database>_keys on PostgreSQL
    # a process re-reads a data key (and which version is current) this often: how late a
    # destroyed or rotated key is noticed elsewhere; a data-key rotation waits twice this
    key_cache_seconds: float = Field(60.0, gt=0, le=3600)
    audit_retention_days: float = Field(365.0, gt=0)  # audit rows older than this are pruned (prune-audit)


class LiveScoreParams(_Frozen):
    """The ``live_score:`` section (pipelines/live_score.py, flows/live_score.py)."""

    interval_seconds: float | None = Field(None, gt=0)  # None: the base timeframe's length
    max_bars_per_cycle: int = Field(288, ge=1)  # backfill after an outage spreads over cycles
    first_run_bars: int = Field(1, ge=1)  # with no watermark yet, score the newest N bars
    directory_seconds: float = Field(5.0, gt=0)  # live worker: re-read what tenants follow this often
    lease_seconds: float = Field(10.0, gt=0)  # live worker: a dead worker's symbols are taken over after this
    # live worker: work off the path to the tenant (storing the bars, re-reading the directory)
    # waits this long after a bar close, leaving the CPU to the scoring of that close
    quiet_seconds: float = Field(0.25, ge=0)
    # score the followed version's bars with the model's challenger too, off the tenant's path
    # (shadow_scores; the monitor compares the two live: monitor.shadow_*)
    shadow: bool = True


class EventsParams(_Frozen):
    """The ``events:`` section (pipelines/events.py): the bus from the live worker to the
    service's replicas. ``url`` None: no bus (streams then notice new results by re-reading
    the store every ``reread_seconds``)."""

    url: str | None = "redis://127.0.0.1:6379/0"
    reread_seconds: float = Field(2.0, gt=0)  # a stream's fallback re-read when no event comes


class WebhooksParams(_Frozen):
    """The ``webhooks:`` section (pipelines/webhooks.py): delivery of tenants' webhooks. The
    dispatcher runs with the live worker (``enabled``) or alone (python -m pipelines.webhooks)."""

    enabled: bool = False  # the live-worker flow also runs the dispatcher
    timeout_seconds: float = Field(5.0, gt=0, le=60)  # one POST, connect to last byte
    max_events: int = Field(500, ge=1, le=10_000)  # events per POST
    concurrency: int = Field(16, ge=1, le=256)  # deliveries in flight at once
    backoff_initial_seconds: float = Field(1.0, gt=0)  # after the first failure; doubles per failure
    backoff_max_seconds: float = Field(300.0, gt=0)  # the longest wait between attempts
    poll_seconds: float = Field(1.0, gt=0)  # re-check for due deliveries when no event comes
    max_due: int = Field(10_000, ge=1)  # due webhooks looked at per pass


class MonitorParams(_Frozen):
    """The ``monitor:`` section (pipelines/monitor.py, flow monitor)."""

    live_bars: int = Field(2016, ge=10)  # newest base bars vs the training window (a week of M5)
    psi_max: float = Field(0.25, gt=0)  # any feature's PSI above this is drift
    ece_max: float = Field(0.05, gt=0)  # live ECE above this (on ≥ min_rows matured rows) is a breach
    min_rows: int = Field(200, ge=1)
    retrain_on_breach: bool = False  # the monitor flow then retrains the breached cells
    stale_bars: int = Field(3, ge=1)  # newest bar older than this many bars of open market: stale
    lag_window_minutes: float = Field(60.0, gt=0)  # results committed this recently are judged
    lag_p99_ms: float = Field(1000.0, gt=0)  # bar close → committed p99 above this is a breach
    lag_min_results: int = Field(20, ge=1)
    skill_min_rows: int = Field(500, ge=10)  # live skill is judged from this many matured rows
    level: float = Field(0.95, gt=0.5, lt=1.0)  # of the live-skill interval
    # live skill, calibration and shadow are judged on bars opened in the last this many days
    # (a breach can resolve; a version no longer scored leaves the window and its alert closes)
    live_window_days: float = Field(30.0, gt=0)
    service_url: str | None = None  # scoring service whose /metrics are checked (None: not checked)
    api_error_rate_max: float = Field(0.01, ge=0, le=1)  # 5xx share of requests since the last check
    api_p99_ms: float = Field(250.0, gt=0)
    api_min_requests: int = Field(20, ge=1)
    state_path: Path = Path("outputs/monitor/state.json")  # open alerts, silences, last scrape


class SchedulesParams(_Frozen):
    """The ``schedules:`` section: when the Prefect deployments run (flows/serve.py). Times UTC."""

    ingest_live_seconds: float | None = Field(None, gt=0)  # None: the base timeframe's length
    # True: the live worker (bar-close driven) runs and the ingest-live and live-score timers
    # are paused; False: the timers run and live-worker is paused (start it from the UI)
    live_worker: bool = False
    retrain_cron: str = "0 3 * * 6"  # weekly retraining (Saturday 03:00 UTC, markets closed)
    monitor_cron: str = "15 * * * *"  # hourly monitoring
    prune_audit_cron: str = "30 2 * * *"  # daily: audit rows past store.audit_retention_days go


class LimitsParams(_Frozen):
    """``serving.limits``: what one caller may cost the service (serving/guard.py). Rates are
    token buckets per service worker (a replica with N workers allows N times as much); 0 turns
    a limit off. Beyond a limit: 429 with ``Retry-After``."""

    per_address_rps: float = Field(500.0, ge=0)  # requests/s from one client address, any key
    per_address_burst: int = Field(1000, ge=1)
    failed_keys_per_minute: float = Field(30.0, ge=0)  # missing/unknown keys from one address
    failed_keys_burst: int = Field(10, ge=1)  # then 429 before any key look-up
    per_tenant_rps: float = Field(200.0, ge=0)  # requests/s per tenant (all its keys and addresses)
    per_tenant_burst: int = Field(400, ge=1)
    tenant_concurrency: int = Field(8, ge=0)  # requests of one tenant in progress at once
    request_timeout_seconds: float = Field(30.0, gt=0)  # 503 past this (the work is bounded too)
    max_json_depth: int = Field(8, ge=3, le=100)  # nesting of a JSON body (this API's need 3)


class EndpointsParams(_Frozen):
    """``serving.endpoints``: switch parts of the API off (404 naming the switch)."""

    score: bool = True  # POST /score
    score_bars: bool = True  # POST /score_bars
    models: bool = True  # POST /models
    results: bool = True  # POST /results/latest and /results/range
    stream: bool = True  # GET /stream
    export: bool = True  # POST /export (the tenant's whole data package)


class ServingParams(_Frozen):
    """The ``serving:`` section (serving/): which registered models the BentoML service serves
    and how. An empty `models` list means the one model this params file trains."""

    models: tuple[str, ...] = ()
    alias: str = "champion"
    max_loaded_versions: int = Field(16, ge=1)  # least recently used versions are evicted
    reload_interval_seconds: float = Field(2.0, gt=0, le=60)  # alias changes picked up this fast
    max_batch_rows: int = Field(10_000, ge=1)  # rows per request on /score
    bulk_rows: int = Field(256, ge=1)  # /score requests this large are scored on a lane of their own
    max_bars: int = Field(20_000, ge=1)  # bars per timeframe on /score_bars
    # a request body past this is refused unread (413); must hold max_batch_rows rows as JSON
    max_body_bytes: int = Field(32 * 2**20, ge=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(1, ge=1)
    gpus: int = Field(0, ge=0)  # BentoML resources: GPUs to request (0 = none required)
    auth_cache_seconds: float = Field(5.0, ge=0)  # a rotated or removed key stops within this
    api_key_header: str = "X-API-Key"
    stream_max_per_tenant: int = Field(8, ge=1)  # open GET /stream connections per tenant per replica
    stream_send_timeout_seconds: float = Field(30.0, gt=0)  # a client not reading this long is dropped
    stream_heartbeat_seconds: float = Field(15.0, gt=0)  # comment line on an idle stream
    limits: LimitsParams = LimitsParams()
    endpoints: EndpointsParams = EndpointsParams()
    health_interval_seconds: float = Field(1.0, gt=0, le=30)  # /readyz re-checks its dependencies this often
    broken_version_seconds: float = Field(60.0, ge=0)  # a version that failed to load is not retried for this
    access_log: bool = True  # BentoML's line per request (off: rejections are still logged, one line each)
    ssl_certfile: str | None = None  # TLS: PEM certificate (chain) for bentoml serve; None: plain HTTP
    ssl_keyfile: str | None = None  # TLS: its private key (PEM)


CELL_ID = re.compile(
    r"^(?P<group>[A-Za-z0-9_]+)-(?P<timeframe>[A-Z]+[0-9]+)-(?P<kind>direction|triple_barrier|up_flat_down)-h(?P<horizon>[1-9][0-9]*)$"
)
CELL_SECTIONS = ("features", "labels", "models", "tune")  # what a cell may override


class Cell(BaseModel):
    """One cell of the probability matrix: a model trained on the symbols of `group`, bars of
    `timeframe` (its base timeframe), labels of `label_kind` `horizon` bars ahead. Its id is
    ``GROUP-TIMEFRAME-LABELKIND-hHORIZON``; it is registered as ``<name_prefix>-<id>``."""

    model_config = ConfigDict(frozen=True)

    id: str
    group: str
    timeframe: str
    label_kind: str
    horizon: int

    @classmethod
    def parse(cls, cell_id: str) -> Cell:
        m = CELL_ID.match(cell_id)
        if not m:
            raise ParamsError(
                f"matrix.cells.{cell_id}: not a cell id — expected GROUP-TIMEFRAME-LABELKIND-hHORIZON, "
                "e.g. fx-H1-triple_barrier-h24 (label kinds: direction, triple_barrier, up_flat_down)"
            )
        try:
            tf = timeframe_name(m["timeframe"])
        except (KeyError, ValueError):
            raise ParamsError(f"matrix.cells.{cell_id}: unknown timeframe {m['timeframe']!r}") from None
        return cls(
            id=cell_id, group=m["group"], timeframe=tf, label_kind=m["kind"], horizon=int(m["horizon"])
        )


class MatrixParams(_Frozen):
    """The ``matrix:`` section: the probability matrix, one trained and served model per cell.
    `groups` maps a symbol group to its symbols; `cells` maps a cell id
    (``GROUP-TIMEFRAME-LABELKIND-hHORIZON``, `Cell`) to its overrides of the ``features``,
    ``labels``, ``models`` and ``tune`` sections (``{}``: the file's settings)."""

    groups: dict[str, tuple[str, ...]] = {"fx": ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")}
    cells: dict[str, dict[str, Any]] = {
        cell: {}
        for tf, horizons, three in (("M5", (12, 48), 12), ("M15", (4, 16), 4), ("H1", (4, 24), None))
        for cell in [
            *(f"fx-{tf}-{kind}-h{h}" for kind in ("direction", "triple_barrier") for h in horizons),
            *([f"fx-{tf}-up_flat_down-h{three}"] if three else []),
        ]
    }

    @field_validator("cells")
    @classmethod
    def _cells(cls, value: dict[str, Any]) -> dict[str, Any]:
        for cell_id, overrides in value.items():
            Cell.parse(cell_id)
            extra = set(overrides or {}) - set(CELL_SECTIONS)
            if extra:
                raise ValueError(
                    f"{cell_id}: a cell overrides only {', '.join(CELL_SECTIONS)}, not {sorted(extra)}"
                )
        return {k: dict(v or {}) for k, v in value.items()}

    def cell(self, cell_id: str) -> Cell:
        """The cell `cell_id`; a `ParamsError` naming the nearest ids when there is none."""
        if cell_id not in self.cells:
            near = difflib.get_close_matches(cell_id, list(self.cells), n=3, cutoff=0.5)
            raise ParamsError(
                f"no cell {cell_id!r} in matrix.cells"
                + (f" (nearest: {', '.join(near)})" if near else f" (have: {', '.join(self.cells)})")
            )
        cell = Cell.parse(cell_id)
        if cell.group not in self.groups:
            raise ParamsError(f"matrix.cells.{cell_id}: no symbol group {cell.group!r} in matrix.groups")
        return cell

    def all(self) -> list[Cell]:
        return [self.cell(c) for c in self.cells]

    def group_of(self, symbol: str) -> str | None:
        """The first symbol group holding `symbol` (None: in none)."""
        return next((g for g, symbols in self.groups.items() if symbol in symbols), None)

    def nearest(
        self, symbol: str, timeframe: str, horizon: int, label_kind: str, symbols: Sequence[str], n: int = 3
    ) -> list[str]:
        """Up to `n` subscriptions (``SYMBOL:TF:HORIZON:KIND``) the matrix does serve, nearest
        first: the same label kind, then the same timeframe, then the closest horizon in time."""
        import math

        try:
            wanted = math.log(horizon * timeframe_seconds(timeframe))
        except (KeyError, ValueError):
            wanted = 0.0
        pool = [s for s in symbols if s == symbol] or list(symbols)
        found = []
        for cell in self.all():
            for sym in pool:
                if sym in self.groups[cell.group]:
                    span = abs(math.log(cell.horizon * timeframe_seconds(cell.timeframe)) - wanted)
                    rank = (cell.label_kind != label_kind, cell.timeframe != timeframe, span, sym)
                    found.append((rank, f"{sym}:{cell.timeframe}:{cell.horizon}:{cell.label_kind}"))
        return [text for _, text in sorted(set(found))[:n]]


class Params(BaseModel):
    """All of params.yaml (but ``profiles``, applied by `load_params`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: DataParams = DataParams()
    features: FeaturesParams = FeaturesParams()
    labels: LabelsParams = LabelsParams()
    models: ModelsParams = ModelsParams()
    tune: TuneParams = TuneParams()
    registry: RegistryParams = RegistryParams()
    store: StoreParams = StoreParams()
    serving: ServingParams = ServingParams()
    events: EventsParams = EventsParams()
    webhooks: WebhooksParams = WebhooksParams()
    live_score: LiveScoreParams = LiveScoreParams()
    schedules: SchedulesParams = SchedulesParams()
    monitor: MonitorParams = MonitorParams()
    matrix: MatrixParams = MatrixParams()
    outputs: Path = Path("outputs")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(
    path: str | Path = "params.yaml", profile: str | None = None, overrides: dict[str, Any] | None = None
) -> Params:
    """Read params.yaml, apply a profile and explicit overrides, validate into `Params`."""
    path = Path(path)
    raw = raw_params(path, profile)
    if overrides:
        raw = _deep_merge(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        where = f"{path}" + (f" (profile {profile})" if profile else "")
        raise ParamsError(f"{where}: {describe_errors(exc)}") from None


def cell_params(params: Params, cell_id: str) -> Params:
    """`params` for one cell of the matrix (`MatrixParams.cell`): the group's symbols (those of
    ``data.symbols``), the cell's timeframe as the base timeframe with the configured higher
    timeframes above it, its label kind and horizon, its group as the registry's symbol group,
    its own outputs folder ``<outputs>/cells/<id>``, and the cell's overrides merged last."""
    cell = params.matrix.cell(cell_id)
    symbols = [s for s in params.matrix.groups[cell.group] if s in params.data.symbols]
    if not symbols:
        raise ParamsError(
            f"matrix.cells.{cell_id}: none of group {cell.group}'s symbols "
            f"{list(params.matrix.groups[cell.group])} is in data.symbols {list(params.data.symbols)}"
        )
    if cell.timeframe not in params.data.timeframes:
        raise ParamsError(
            f"matrix.cells.{cell_id}: timeframe {cell.timeframe} is not in data.timeframes "
            f"{list(params.data.timeframes)} (add it there and ingest)"
        )
    base = timeframe_seconds(cell.timeframe)
    raw = params.model_dump(mode="json")
    raw["data"]["symbols"] = symbols
    raw["features"]["base_timeframe"] = cell.timeframe
    raw["features"]["higher_timeframes"] = [
        tf for tf in params.features.higher_timeframes if timeframe_seconds(tf) > base
    ]
    raw["labels"]["kind"] = cell.label_kind
    raw["labels"]["horizon"] = cell.horizon
    raw["registry"]["symbol_group"] = cell.group
    raw["outputs"] = str(Path(params.outputs) / "cells" / cell_id)
    raw = _deep_merge(raw, params.matrix.cells[cell_id])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"matrix.cells.{cell_id}: {describe_errors(exc)}") from None


def raw_params(path: str | Path = "params.yaml", profile: str | None = None) -> dict[str, Any]:
    """params.yaml as a plain mapping with `profile` merged in, not validated (`load_params`
    validates it). A profile that does not set ``outputs`` itself gets its own folder,
    ``<outputs>/profiles/<profile>``: the default outputs are `dvc repro`'s, and a fast-profile
    run must not replace them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    profiles = raw.pop("profiles", {}) or {}
    if profile:
        if profile not in profiles:
            raise ParamsError(f"profile {profile!r} not in {path} (have: {sorted(profiles)})")
        chosen = profiles[profile] or {}
        raw = _deep_merge(raw, chosen)
        if "outputs" not in chosen:  # a profile's step outputs never overwrite another's
            raw["outputs"] = str(Path(str(raw.get("outputs", "outputs"))) / "profiles" / profile)
    return raw


def describe_errors(exc: ValidationError) -> str:
    """A pydantic validation error as one line: ``dotted.key: problem; …``."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
        else:
            parts.append(f"{key}: {' '.join(str(err['msg']).split())}")
    return "; ".join(parts)


def run_cli(main: Callable[[], int]) -> int:
    """Run an entry point's `main`; a `ParamsError` (bad params.yaml), a `KeyringError` (no
    master key, or the wrong one) or a `StoreError` (e.g. an app role without a password)
    becomes one line on stderr and exit code 2 instead of a traceback."""
    from pipelines.store.crypto import KeyringError
    from pipelines.store.results import StoreError

    try:
        return main()
    except (ParamsError, KeyringError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cli_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the ``--params`` / ``--profile`` options every entry point takes."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    parser.add_argument("--profile", default=None, help="a profile from params.yaml (e.g. fast)")
    return parser


def params_from_cli(prog: str, description: str | None, argv: Sequence[str] | None = None) -> Params:
    """Parse ``--params`` / ``--profile`` / ``--cell`` and load them (for steps with no other
    options); with ``--cell ID`` the step works on that cell of the matrix (`cell_params`)."""
    parser = cli_parser(prog, description)
    parser.add_argument("--cell", default=None, help="a cell of matrix.cells, e.g. fx-H1-direction-h4")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.profile)
    return cell_params(params, args.cell) if args.cell else params
