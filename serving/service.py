"""The BentoML scoring service: calibrated probabilities from versioned MLflow models.

    bentoml serve serving.service:ScoringService --port 3000
    MT5PROB_PARAMS=params.yaml MT5PROB_PROFILE=fast bentoml serve serving.service:ScoringService

Reads ``params.yaml`` once at start (``MT5PROB_PARAMS``, ``MT5PROB_PROFILE``): the MLflow
registry, the ``serving:`` section and the results store. Serves ``models:/<name>@champion``
(CUDA when present), follows alias moves every ``reload_interval_seconds`` without restart, and
answers every scoring call with the model name and version that produced it.

Every endpoint but the probes and ``/metrics`` needs the tenant's API key in the
``X-API-Key`` header (or ``Authorization: Bearer <key>``): missing or unknown → 401; another
tenant's results or pinned version → 403; bad input → 400 naming the problem; unknown model or
version → 404. Probabilities are P(up) of the model's label over its horizon; bar times are the
bar's open time, UTC.
"""

import asyncio
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from pipelines.config import Params, load_params

log = logging.getLogger("mt5prob.serving")


def _params() -> Params:
    return load_params(
        os.environ.get("MT5PROB_PARAMS", "params.yaml"), os.environ.get("MT5PROB_PROFILE") or None
    )


def served_model_names(params: Params) -> list[str]:
    """``serving.models``, or the one model this params file trains and registers."""
    if params.serving.models:
        return list(params.serving.models)
    from pipelines.registry import model_name

    return [
        model_name(
            params.registry.name_prefix,
            params.registry.symbol_group,
            params.features.base_timeframe,
            params.labels.kind,
            params.labels.horizon,
        )
    ]


_CONFIG = _params()


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with `status`."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- schemas
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
    scored_at: str


class ResultsResponse(BaseModel):
    tenant: str
    rows: list[ResultRow]


_ROWS_EXAMPLE = [[0.0001, -0.0002, 0.5]]
OwnTenant = Annotated[str | None, Field(description="tenant id or name; only your own is allowed")]


# ----------------------------------------------------------------------------- metrics
_REQUESTS = bentoml.metrics.Counter(
    name="mt5prob_requests",
    documentation="Scoring requests by endpoint, model, version and HTTP status",
    labelnames=["endpoint", "model", "version", "status"],
)
_LATENCY = bentoml.metrics.Histogram(
    name="mt5prob_request_seconds",
    documentation="Scoring latency by endpoint, model and version (seconds, inside the service)",
    labelnames=["endpoint", "model", "version"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_BATCH = bentoml.metrics.Histogram(
    name="mt5prob_batch_requests",
    documentation="Requests scored together in one model call (adaptive batching), by model and version",
    labelnames=["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
_ROWS = bentoml.metrics.Counter(
    name="mt5prob_scored_rows",
    documentation="Rows scored by model and version",
    labelnames=["model", "version"],
)


@bentoml.service(
    name="mt5prob",
    workers=_CONFIG.serving.workers,
    resources={"gpu": _CONFIG.serving.gpus} if _CONFIG.serving.gpus else {"cpu": "1"},
    traffic={"timeout": 60},
)
class ScoringService:
    """See the module docstring."""

    def __init__(self) -> None:
        from pipelines.store import ResultsStore
        from serving.batching import MicroBatcher  # noqa: F401 - imported here for the worker
        from serving.models import ModelManager

        params = _params()
        self.settings = params.serving
        self.store = ResultsStore(params.store.url, params.store.admin_url)
        if self.store.dialect == "sqlite":
            self.store.migrate()  # PostgreSQL: `python -m pipelines.tenants migrate` as the owner
        self.models = ModelManager(
            params.registry.tracking_uri,
            served_model_names(params),
            max_loaded=self.settings.max_loaded_versions,
            device=self.settings.device,
            default_alias=self.settings.alias,
        )
        self.models.refresh()
        for name in self.models.names:
            version = self.models.aliases(name).get(self.settings.alias)
            if version is None:
                log.warning(
                    "%s has no %s yet: requests will get 404 until one is set", name, self.settings.alias
                )
            else:
                log.info(
                    "serving %s version %s (%s) on %s", name, version, self.settings.alias, self.models.device
                )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._batchers: dict[tuple[str, str], Any] = {}
        self._auth_cache: dict[str, tuple[float, Any]] = {}
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._follow_registry, name="registry-refresh", daemon=True)
        self._refresher.start()

    # ------------------------------------------------------------------ lifecycle
    def _follow_registry(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_seconds):
            try:
                self.models.refresh()
            except Exception:  # noqa: BLE001 - keep serving what is loaded; try again next tick
                log.exception("registry refresh failed")

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False)
        self.store.close()

    def __is_ready__(self) -> bool:
        return all(self.models.aliases(n).get(self.settings.alias) for n in self.models.names)

    # ------------------------------------------------------------------ helpers
    def _tenant(self, ctx: bentoml.Context) -> Any:
        headers = ctx.request.headers
        key = headers.get(self.settings.api_key_header)
        if not key:
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not key:
            raise ApiError(
                HTTPStatus.UNAUTHORIZED,
                f"missing API key: send it in the {self.settings.api_key_header} header",
            )
        digest = hashlib.sha256(key.encode()).hexdigest()  # cache key: never the key itself
        now = time.monotonic()
        hit = self._auth_cache.get(digest)
        if hit is not None and now - hit[0] < self.settings.auth_cache_seconds:
            tenant = hit[1]
        else:
            tenant = self.store.authenticate(key)
            if tenant is not None:
                if len(self._auth_cache) > 10_000:
                    self._auth_cache.clear()
                self._auth_cache[digest] = (now, tenant)
        if tenant is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "unknown API key")
        return tenant

    def _resolve(self, tenant: Any, model: str | None, version: str | None) -> tuple[Any, str | None]:
        """The loaded model for this tenant's request, and the alias it came through."""
        from serving.models import UnknownModel

        try:
            name = model or self.models.names[0]
            pinned = tenant.pins.get(name)
            ref = version or pinned or self.settings.alias
            if (
                version
                and version.isdigit()
                and version != pinned
                and version not in self.models.aliases(name).values()
            ):
                owner = self._pinned_by_other(tenant, name, version)
                if owner:
                    raise ApiError(
                        HTTPStatus.FORBIDDEN, f"version {version} of {name} is pinned to another tenant"
                    )
            name, resolved = self.models.resolve(name, ref)
            return self.models.get(name, resolved), (None if ref.isdigit() else ref)
        except UnknownModel as exc:
            raise ApiError(HTTPStatus.NOT_FOUND, str(exc)) from exc

    def _pinned_by_other(self, tenant: Any, name: str, version: str) -> bool:
        try:
            others = self.store.pinned_versions(name)
        except Exception:  # noqa: BLE001 - store unavailable: do not leak, do not block
            return False
        return any(v == version and t != tenant.tenant_id for t, v in others)

    def _batcher(self, loaded: Any) -> Any:
        from serving.batching import MicroBatcher

        key = (loaded.name, loaded.version)
        batcher = self._batchers.get(key)
        if batcher is None or batcher.fn.__self__ is not loaded:
            observe = _BATCH.labels(model=loaded.name, version=loaded.version).observe
            batcher = MicroBatcher(
                loaded.predict, self.settings.max_batch_rows, self._executor, lambda n, rows: observe(n)
            )
            self._batchers[key] = batcher
            if len(self._batchers) > 4 * self.settings.max_loaded_versions:
                self._batchers.pop(next(iter(self._batchers)))
        return batcher

    async def _guard(self, ctx: bentoml.Context, endpoint: str, handler: Any) -> Any:
        """Run `handler`; turn `ApiError` (and bad-input errors) into JSON with the right code,
        and record per-model-version request counts and latency."""
        from starlette.responses import JSONResponse

        from pipelines.store import StoreError

        started = time.perf_counter()
        labels = {"model": "", "version": ""}
        status = HTTPStatus.OK
        try:
            result, found = await handler()
            labels.update(found)
            return result
        except ApiError as exc:
            status, message = exc.status, exc.message
        except StoreError as exc:
            status, message = HTTPStatus.BAD_REQUEST, str(exc)
        except Exception:  # noqa: BLE001 - a genuine server fault: say so, log it, no details out
            log.exception("%s failed", endpoint)
            status, message = HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the service log"
        finally:
            _REQUESTS.labels(endpoint=endpoint, status=str(int(status)), **labels).inc()
            _LATENCY.labels(endpoint=endpoint, **labels).observe(time.perf_counter() - started)
        ctx.response.status_code = int(status)
        headers = (
            {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if status == HTTPStatus.UNAUTHORIZED else None
        )
        return JSONResponse({"error": message}, status_code=int(status), headers=headers)

    # ------------------------------------------------------------------ endpoints
    @bentoml.api(route="/score")
    async def score(
        self,
        rows: Annotated[
            list[list[float | None]],
            Field(
                description="feature rows, one list per row, columns in the model's order; null marks "
                "a missing value (a feature still in its warm-up), imputed as in training; NaN and "
                "Infinity are rejected",
                examples=[_ROWS_EXAMPLE],
            ),
        ],
        columns: Annotated[
            list[str] | None,
            Field(description="column names of `rows` (checked against the model's; may be reordered)"),
        ] = None,
        model: Annotated[
            str | None, Field(description="registered model name; default: the first served")
        ] = None,
        version: Annotated[
            str | None, Field(description="alias (champion, challenger) or version number")
        ] = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ScoreResponse:
        """P(up) for rows of features. Adaptive batching: concurrent calls for the same model
        version are scored together."""

        async def handler() -> tuple[Any, dict[str, str]]:
            tenant = self._tenant(ctx)
            if not rows:
                raise ApiError(HTTPStatus.BAD_REQUEST, "empty batch: send at least one row")
            if len(rows) > self.settings.max_batch_rows:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"batch of {len(rows)} rows is over the limit of {self.settings.max_batch_rows}: "
                    "split it",
                )
            loaded, alias = self._resolve(tenant, model, version)
            X = _matrix(rows, columns, loaded.columns)
            P = await self._batcher(loaded).submit(X)
            _ROWS.labels(model=loaded.name, version=loaded.version).inc(len(P))
            labels = {"model": loaded.name, "version": loaded.version}
            return ScoreResponse(
                model=loaded.name, version=loaded.version, alias=alias, probabilities=P.tolist()
            ), labels

        return await self._guard(ctx, "score", handler)

    @bentoml.api(route="/score_bars")
    async def score_bars(
        self,
        symbol: Annotated[str, Field(description="symbol the bars belong to, e.g. EURUSD")],
        bars: Annotated[
            dict[str, BarsInput],
            Field(
                description="timeframe (M5, M15, H1, ...) → its recent closed bars; the model's base "
                "and every higher timeframe it uses, with enough history for the feature windows"
            ),
        ],
        point: Annotated[
            float | None, Field(description="price of one point, > 0 (inferred when omitted)")
        ] = None,
        model: str | None = None,
        version: str | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> BarsScoreResponse:
        """P(up) for the newest bar, features computed here with the training code (features/)."""

        async def handler() -> tuple[Any, dict[str, str]]:
            tenant = self._tenant(ctx)
            if point is not None and not (np.isfinite(point) and point > 0):
                raise ApiError(HTTPStatus.BAD_REQUEST, f"point must be a positive price step, got {point}")
            loaded, alias = self._resolve(tenant, model, version)
            spec = loaded.feature_spec
            if spec is None:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"{loaded.name} version {loaded.version} was registered without its feature spec; "
                    "score it with /score or register it again",
                )
            x = await asyncio.get_running_loop().run_in_executor(
                None, _features_from_bars, bars, spec, point, self.settings.max_bars, loaded.columns
            )
            P = await self._batcher(loaded).submit(x[None, :])
            base = bars[spec.base_timeframe]
            bar_time = datetime.fromtimestamp(base.time[-1], UTC).isoformat()
            return BarsScoreResponse(
                model=loaded.name,
                version=loaded.version,
                alias=alias,
                symbol=symbol,
                bar_time=bar_time,
                probability=float(P[0]),
                features=len(loaded.columns),
            ), {"model": loaded.name, "version": loaded.version}

        return await self._guard(ctx, "score_bars", handler)

    @bentoml.api(route="/models")
    async def list_models(self, ctx: bentoml.Context = None) -> ModelsResponse:  # type: ignore[assignment]
        """The models this service serves, their aliases, loaded versions and the caller's default."""

        async def handler() -> tuple[Any, dict[str, str]]:
            tenant = self._tenant(ctx)
            loaded = self.models.loaded()
            infos = []
            for name in self.models.names:
                aliases = self.models.aliases(name)
                default = tenant.pins.get(name) or aliases.get(self.settings.alias)
                cols = next(
                    (len(self.models.get(n, v).columns) for n, v in loaded if n == name and v == default),
                    None,
                )
                infos.append(
                    ModelInfo(
                        name=name,
                        aliases=aliases,
                        loaded_versions=sorted((v for n, v in loaded if n == name), key=int),
                        default_version=default,
                        columns=cols,
                    )
                )
            return ModelsResponse(tenant=tenant.name, models=infos), {}

        return await self._guard(ctx, "models", handler)

    @bentoml.api(route="/results/latest")
    async def results_latest(
        self,
        symbol: str | None = None,
        timeframe: str | None = None,
        tenant: OwnTenant = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ResultsResponse:
        """Your newest probability per (symbol, timeframe, horizon, label kind) from the results store."""

        async def handler() -> tuple[Any, dict[str, str]]:
            me = self._own(self._tenant(ctx), tenant)
            frame = await self._read(me, lambda s: s.latest(symbol, timeframe))
            return ResultsResponse(tenant=me.name, rows=_rows(frame)), {}

        return await self._guard(ctx, "results_latest", handler)

    @bentoml.api(route="/results/range")
    async def results_range(
        self,
        start: Annotated[datetime, Field(description="first bar open time (UTC, inclusive)")],
        end: Annotated[datetime, Field(description="last bar open time (UTC, exclusive)")],
        symbol: str | None = None,
        timeframe: str | None = None,
        limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000,
        tenant: OwnTenant = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ResultsResponse:
        """Your probabilities with bar time in [start, end), newest first."""

        async def handler() -> tuple[Any, dict[str, str]]:
            me = self._own(self._tenant(ctx), tenant)
            start_utc, end_utc = _as_utc(start), _as_utc(end)
            if end_utc <= start_utc:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"end {end_utc.isoformat()} must be after start {start_utc.isoformat()}",
                )
            frame = await self._read(
                me, lambda s: s.probabilities(symbol, timeframe, start_utc, end_utc, limit)
            )
            return ResultsResponse(tenant=me.name, rows=_rows(frame)), {}

        return await self._guard(ctx, "results_range", handler)

    def _own(self, me: Any, asked: str | None) -> Any:
        if asked and asked not in (me.tenant_id, me.name):
            raise ApiError(HTTPStatus.FORBIDDEN, "you may read only your own tenant's results")
        return me

    async def _read(self, me: Any, query: Any) -> Any:
        """`query(session)` in the caller's own tenant session, off the event loop."""

        def run() -> Any:
            with self.store.tenant(me.tenant_id, actor=f"api:{me.name}") as session:
                return query(session)

        return await asyncio.get_running_loop().run_in_executor(None, run)


# ----------------------------------------------------------------------------- input checks
def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _rows(frame: Any) -> list[ResultRow]:
    out = []
    for r in frame.itertuples(index=False):
        out.append(
            ResultRow(
                symbol=r.symbol,
                timeframe=r.timeframe,
                bar_time=r.bar_time.isoformat(),
                horizon=int(r.horizon),
                label_kind=r.label_kind,
                probability=float(r.probability),
                signal=r.signal,
                model_name=r.model_name,
                model_version=str(r.model_version),
                scored_at=r.scored_at.isoformat(),
            )
        )
    return out


def _matrix(rows: list[list[float | None]], columns: list[str] | None, expected: list[str]) -> np.ndarray:
    """Rows as a float32 matrix in the model's column order, or ApiError naming the problem."""
    width = len(expected)
    bad = next((i for i, r in enumerate(rows) if len(r) != len(rows[0])), None)
    if bad is not None:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, f"row {bad} has {len(rows[bad])} values, row 0 has {len(rows[0])}"
        )
    X = np.asarray(rows, dtype=np.float64)
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
                f"columns do not match the model's {width}: missing {missing[:5]}, unexpected {extra[:5]}"
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
    # numpy turned null into NaN; a NaN or inf that was not a null in the request is an error
    bad = [
        (r, c) for r, c in np.argwhere(~np.isfinite(X)) if _cell(rows, r, c, columns, expected) is not None
    ]
    if bad:
        r, c = bad[0]
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"{len(bad)} non-finite values (NaN or inf; send null for a missing value), first at row {r} "
            f"column {expected[c]!r}",
        )
    if np.nanmax(np.abs(X), initial=0.0) > np.finfo(np.float32).max:
        raise ApiError(HTTPStatus.BAD_REQUEST, "values beyond float32 range")
    return X.astype(np.float32)


def _cell(
    rows: list[list[float | None]], r: int, c: int, columns: list[str] | None, expected: list[str]
) -> Any:
    """The request's value behind matrix cell (r, c) (columns may have been reordered)."""
    return rows[r][c if columns is None else columns.index(expected[c])]


def _features_from_bars(
    bars: dict[str, BarsInput], spec: Any, point: float | None, max_bars: int, columns: list[str]
) -> np.ndarray:
    """The newest base bar's feature row, computed exactly as in training (features/)."""
    from features.bars import BAR_COLUMNS, Bars
    from features.matrix import feature_columns, history_bars, last_row_features
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
        lengths = {f: len(getattr(b, f)) for f in BAR_COLUMNS}
        if len(set(lengths.values())) != 1:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: fields have different lengths {lengths}")
        n = lengths["time"]
        if n == 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: no bars")
        if n > max_bars:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: {n} bars is over the limit of {max_bars}")
        arrays = {
            f: np.asarray(getattr(b, f), dtype=np.int64 if f == "time" else np.float64) for f in BAR_COLUMNS
        }
        if np.any(np.diff(arrays["time"]) <= 0):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: times must be strictly increasing (oldest first)")
        prices = np.stack([arrays[f] for f in ("open", "high", "low", "close")])
        if not np.isfinite(prices).all() or (prices <= 0).any():
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: prices must be finite and positive")
        if (arrays["high"] < arrays["low"]).any():
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: a bar has high below low")
        if not (np.isfinite(arrays["tick_volume"]).all() and np.isfinite(arrays["spread"]).all()):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{tf}: tick_volume and spread must be finite")
        seconds = timeframe_seconds(tf)
        if seconds <= 3600 and np.any(arrays["time"] % seconds != 0):  # H4/D1 opens shift with server time
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"{tf}: times must be bar open times on the {tf} grid (UTC)"
            )
        built[tf] = Bars.from_rates(arrays, seconds, point)
    need = history_bars(built, spec)
    short = {tf: (len(built[tf]), k) for tf, k in need.items() if len(built[tf]) < k}
    if short:
        detail = ", ".join(f"{tf}: have {have}, need {k}" for tf, (have, k) in short.items())
        raise ApiError(HTTPStatus.BAD_REQUEST, f"too few bars for the feature windows ({detail})")
    base_close = int(built[spec.base_timeframe].time[-1]) + built[spec.base_timeframe].seconds
    for tf in spec.higher_timeframes:
        if int(built[tf].time[0]) + built[tf].seconds > base_close:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"{tf}: bars start after the newest {spec.base_timeframe} bar"
            )
    x = last_row_features(built, spec)
    return np.where(np.isfinite(x), x, np.nan).astype(np.float32)
