"""The BentoML scoring service: calibrated probabilities from versioned MLflow models.

    bentoml serve serving.service:ScoringService --port 3000
    MT5PROB_PARAMS=params.yaml MT5PROB_PROFILE=fast bentoml serve serving.service:ScoringService

Reads ``params.yaml`` once, when the service starts (``MT5PROB_PARAMS``, ``MT5PROB_PROFILE``):
the MLflow registry, the ``serving:`` section and the results store. Importing this module
reads nothing but ``serving.workers`` and ``serving.gpus`` (BentoML fixes a service's workers
and resources when its class is declared; the file is validated then, so a misspelt key stops
``bentoml serve`` with one line), and only if the file is there. Serves
``models:/<name>@<serving.alias>`` on ``serving.device`` through the scoring core's model
cache (`pipelines.model_cache`, shared with live scoring), follows alias moves every
``reload_interval_seconds`` without restart, and answers every scoring call with the model
name and version that produced it.

Every endpoint but the probes and ``/metrics`` needs the tenant's API key in the
``X-API-Key`` header (or ``Authorization: Bearer <key>``): missing or unknown → 401; another
tenant's results or pinned version → 403; bad input → 400 naming the problem; unknown model or
version → 404. Probabilities are P(up) of the model's label over its horizon; bar times are the
bar's open time, UTC. Schemas: `serving.schemas`; input checks: `serving.inputs`; keys:
`serving.auth`.
"""

import asyncio
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field

from models.three_way import CLASSES
from serving.docs import docs_app
from serving.errors import ApiError
from serving.guard import RequestGuard
from serving.inputs import as_utc, feature_matrix, features_from_bars, matrix_grid, result_rows
from serving.schemas import (
    BarsInput,
    BarsScoreResponse,
    Columns,
    MatrixResponse,
    ModelInfo,
    ModelName,
    ModelsResponse,
    Number,
    OwnTenant,
    ResultsResponse,
    Rows,
    ScoreResponse,
    Symbol,
    Timeframe,
    VersionRef,
)
from serving.stream import StreamRoute, stream_app

log = logging.getLogger("mt5prob.serving")


def params_location() -> tuple[str, str | None]:
    """(params path, profile) from ``MT5PROB_PARAMS`` / ``MT5PROB_PROFILE``."""
    return os.environ.get("MT5PROB_PARAMS", "params.yaml"), os.environ.get("MT5PROB_PROFILE") or None


def _deployment_shape() -> dict[str, Any]:
    """``workers`` and ``resources`` for the BentoML declaration: ``serving.workers`` and
    ``serving.gpus`` of the params file when it exists, else one worker on CPU.

    The whole file is validated here, once, in the process that imports the service (for
    ``bentoml serve`` the server process, before any worker starts): a misspelt key stops the
    server with one line on stderr and exit code 2, as every other entry point does, instead of
    workers failing and being restarted in a loop."""

    from pipelines.config import ParamsError, load_params

    path, profile = params_location()
    if not Path(path).is_file():
        return {"workers": 1, "resources": {"cpu": "1"}}
    try:
        serving = load_params(path, profile).serving
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    workers, gpus = serving.workers, serving.gpus
    shape: dict[str, Any] = {"workers": workers, "resources": {"gpu": gpus} if gpus else {"cpu": "1"}}
    if not serving.access_log:
        shape["logging"] = {"access": {"enabled": False}}
    if serving.ssl_certfile or serving.ssl_keyfile:
        missing = [f for f in (serving.ssl_certfile, serving.ssl_keyfile) if not f or not Path(f).is_file()]
        if missing:
            print(
                "error: serving.ssl_certfile and serving.ssl_keyfile must both name readable PEM files "
                f"(not found: {missing})",
                file=sys.stderr,
            )
            raise SystemExit(2)
        shape["ssl"] = {"enabled": True, "certfile": serving.ssl_certfile, "keyfile": serving.ssl_keyfile}
    return shape


_SHAPE = _deployment_shape()


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
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)
_COMMIT_LAG = bentoml.metrics.Histogram(
    name="mt5prob_result_commit_lag_seconds",
    documentation="Bar close → score committed, per result pushed on /stream, by timeframe (seconds)",
    labelnames=["timeframe"],
    buckets=_LAG_BUCKETS,
)
_DELIVERY_LAG = bentoml.metrics.Histogram(
    name="mt5prob_result_delivery_lag_seconds",
    documentation="Bar close → result handed to a /stream client, by timeframe (seconds)",
    labelnames=["timeframe"],
    buckets=_LAG_BUCKETS,
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


_SERVICE: dict[str, Any] = {}  # the service instance of this worker, for the docs app


def _current_document() -> dict[str, Any] | None:
    service = _SERVICE.get("instance")
    return service.api_document() if service is not None else None


@bentoml.service(name="mt5prob", traffic={"timeout": 60}, **_SHAPE)
@bentoml.asgi_app(docs_app(_current_document), path="/docs")
class ScoringService:
    """mt5prob scoring API: calibrated probabilities that price moves a given way over a given
    horizon, from versioned MLflow models, per tenant. Send your API key in the X-API-Key
    header (or Authorization: Bearer). Probabilities are P(up) of the model's label over its
    horizon; bar times are bar open times, UTC. 401 no or unknown key, 403 another tenant's
    data or pinned version, 400 bad input (the message names it), 404 unknown model or version."""

    def __init__(self) -> None:
        from pipelines.config import load_params
        from pipelines.model_cache import ModelCache
        from pipelines.registry import catalog
        from pipelines.store import ResultsStore
        from serving import bodies
        from serving.auth import Authenticator
        from serving.guard import quiet_client_errors
        from serving.health import Health

        params = load_params(*params_location())
        self.settings = params.serving
        bodies.install(self.settings.limits.max_json_depth)  # JSON bodies parsed off the event loop
        quiet_client_errors()  # a rejected request logs one line (serving.guard), no traceback
        self.store = ResultsStore.from_params(params.store)  # no master key: stops here, one message
        if self.store.dialect == "sqlite":
            self.store.migrate()  # PostgreSQL: `python -m pipelines.tenants migrate` as the owner
        self.store.verify_keys()  # the wrong master key: stops here, before serving anything
        self.auth = Authenticator(self.store, self.settings.api_key_header, self.settings.auth_cache_seconds)
        # what each served model serves (its matrix cell); the names in order: the first is the default
        self.catalog = catalog(params)
        self.models = ModelCache(
            params.registry.tracking_uri,
            list(self.catalog),
            max_loaded=self.settings.max_loaded_versions,
            device=self.settings.device,
            default_alias=self.settings.alias,
            broken_seconds=self.settings.broken_version_seconds,
        )
        self.models.refresh()
        for name in self.models.names:
            version = self.models.aliases(name).get(self.settings.alias)
            if version is None and self.models.no_skill(name):
                log.warning("%s: requests get 409 — %s", name, self.models.no_skill(name))
            elif version is None:
                log.warning(
                    "%s has no %s yet: requests will get 404 until one is set", name, self.settings.alias
                )
            else:
                log.info(
                    "serving %s version %s (%s) on %s", name, version, self.settings.alias, self.models.device
                )
        self.health = Health(
            self.store, self.models, self.settings.alias, self.settings.health_interval_seconds
        )
        self.health.start()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        # batches of bulk_rows or more run on a lane of their own: a 10,000-row batch takes
        # ~100 ms to predict, and a single row queued behind it would wait that long
        self._bulk_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="predict-bulk", initializer=_lower_priority
        )
        # the event loop shares the GIL with threads converting large bodies; hand it over every
        # 1 ms instead of 5 so a request on the loop never waits a long slice behind them
        sys.setswitchinterval(0.001)
        self._batchers: dict[tuple[str, str, bool], Any] = {}  # (model, version, bulk lane)
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._follow_registry, name="registry-refresh", daemon=True)
        self._refresher.start()
        self._document: tuple[tuple[str, str] | None, dict[str, Any]] | None = None
        # push: GET /stream, woken by the live worker's events (every replica subscribes)
        from pipelines.events import open_bus
        from serving.stream import StreamHub

        self.events_settings = params.events
        self.hub = StreamHub()
        self.bus = open_bus(params.events.url)
        if hasattr(self.bus, "subscribe"):
            self.bus.subscribe(self.hub.notify)
        _SERVICE["instance"] = self

    # ------------------------------------------------------------------ lifecycle
    def _follow_registry(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_seconds):
            try:
                self.models.refresh()
            except Exception:  # noqa: BLE001 - keep serving what is loaded; try again next tick
                log.exception("registry refresh failed")

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        from serving import bodies

        self._stop.set()
        self.health.stop()
        self._executor.shutdown(wait=False)
        self._bulk_executor.shutdown(wait=False)
        bodies.PARSER.close()
        self.bus.close()
        self.store.close()

    def api_document(self) -> dict[str, Any]:
        """The OpenAPI document at ``/docs/openapi.json`` (`serving.docs.api_document`), with
        request examples built from the default model's columns and feature spec; rebuilt when
        that model's default version changes."""
        from serving.docs import api_document, bars_example, package_version, score_example
        from serving.guard import SWITCHES

        try:
            loaded = self.models.get(*self.models.resolve(None, self.settings.alias))
        except Exception:  # noqa: BLE001 - no default model yet: a document without examples
            loaded = None
        key = (loaded.name, loaded.version) if loaded is not None else None
        if self._document is not None and self._document[0] == key:
            return self._document[1]
        examples: dict[str, dict[str, Any]] = {}
        if loaded is not None:
            examples["/score"] = score_example(loaded.columns)
            if loaded.feature_spec is not None:
                examples["/score_bars"] = bars_example(loaded.feature_spec)
        spec = ScoringService.openapi_spec.asdict()
        off = {path for path, switch in SWITCHES.items() if not getattr(self.settings.endpoints, switch)}
        spec["paths"] = {path: item for path, item in spec.get("paths", {}).items() if path not in off}
        doc = api_document(
            spec,
            title="mt5prob scoring API",
            description=" ".join((ScoringService.inner.__doc__ or "").split()),
            version=package_version(),
            key_header=self.settings.api_key_header,
            secured={api.route for api in ScoringService.apis.values()},
            examples=examples,
        )
        self._document = (key, doc)
        return doc

    def observe_delivery(self, timeframe: str, closed: datetime, committed: datetime, sent: datetime) -> None:
        """Record a pushed result's lags (bar close → committed, → handed to the client)."""
        _COMMIT_LAG.labels(timeframe=timeframe).observe(max(0.0, (committed - closed).total_seconds()))
        _DELIVERY_LAG.labels(timeframe=timeframe).observe(max(0.0, (sent - closed).total_seconds()))

    def __is_ready__(self) -> bool:
        """Ready when `serving.health.Health` has no reason not to be (``/readyz`` itself is
        answered by `serving.guard.RequestGuard`, with the reasons)."""
        return not self.health.reasons()

    # ------------------------------------------------------------------ helpers
    def _tenant(self, ctx: bentoml.Context) -> Any:
        """The caller's tenant: the one `serving.guard.RequestGuard` authenticated off the
        event loop before the body was read (a look-up here only when it did not run)."""
        from serving.guard import TENANT_STATE

        tenant = ctx.request.scope.get("state", {}).get(TENANT_STATE)
        return tenant if tenant is not None else self.auth.tenant(ctx.request.headers)

    def _resolve(self, tenant: Any, model: str | None, version: str | None) -> tuple[Any, str | None]:
        """The loaded model for this tenant's request, and the alias it came through."""
        from pipelines.model_cache import BadVersion, ModelUnavailable, NoSkill, UnknownModel, canonical_ref

        try:
            version = canonical_ref(version) if version is not None else None
        except BadVersion as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
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
        except NoSkill as exc:  # the gate found no skill: a state of the model, not a bad request
            raise ApiError(HTTPStatus.CONFLICT, str(exc)) from exc
        except UnknownModel as exc:
            raise ApiError(HTTPStatus.NOT_FOUND, str(exc)) from exc
        except ModelUnavailable as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from exc

    async def _resolve_off_loop(
        self, tenant: Any, model: str | None, version: str | None
    ) -> tuple[Any, str | None]:
        """`_resolve` — on the event loop only when it needs nothing but memory (an alias or a
        tenant's pin to a loaded version); a version number may query the registry and the
        store, and a first use loads the model: those run in a worker thread."""
        from starlette.concurrency import run_in_threadpool

        if version is None or not version.strip().isdigit():
            name = model or (self.models.names or [""])[0]
            ref = version or tenant.pins.get(name) or self.settings.alias
            resolved = ref if ref.isdigit() else self.models.aliases(name).get(ref)
            if resolved is not None and self.models.is_loaded(name, resolved):
                return self._resolve(tenant, model, version)
        return await run_in_threadpool(self._resolve, tenant, model, version)

    def _pinned_by_other(self, tenant: Any, name: str, version: str) -> bool:
        try:
            others = self.store.pinned_versions(name)
        except Exception:  # noqa: BLE001 - store unavailable: the pin rule cannot be checked
            log.exception("pinned versions of %s: results store unavailable", name)
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"cannot check who version {version} of {name} is pinned to: the results store is "
                "unavailable; retry shortly, or ask for an alias",
            ) from None
        return any(v == version and t != tenant.tenant_id for t, v in others)

    def _batcher(self, loaded: Any, rows: int = 1) -> Any:
        """The micro-batcher of `loaded` for a request of `rows` rows: requests of
        ``serving.bulk_rows`` or more have a lane (and a thread) of their own."""
        from serving.batching import MicroBatcher

        bulk = rows >= self.settings.bulk_rows
        key = (loaded.name, loaded.version, bulk)
        batcher = self._batchers.get(key)
        if batcher is None or batcher.fn.__self__ is not loaded:
            observe = _BATCH.labels(model=loaded.name, version=loaded.version).observe
            batcher = MicroBatcher(
                loaded.predict,
                self.settings.max_batch_rows,
                self._bulk_executor if bulk else self._executor,
                lambda n, rows: observe(n),
            )
            self._batchers[key] = batcher
            if len(self._batchers) > 4 * self.settings.max_loaded_versions:
                self._batchers.pop(next(iter(self._batchers)))
        return batcher

    async def _guard(self, ctx: bentoml.Context, endpoint: str, handler: Any) -> Any:
        """Run `handler`; turn `ApiError` (and bad-input errors) into JSON with the right code,
        and record per-model-version request counts and latency."""
        from sqlalchemy.exc import DBAPIError
        from sqlalchemy.exc import TimeoutError as PoolTimeout
        from starlette.responses import JSONResponse

        from pipelines.store import StoreError

        started = time.perf_counter()
        labels = {"model": "", "version": ""}
        status = HTTPStatus.OK
        timeout = self.settings.limits.request_timeout_seconds
        try:
            result, found = await asyncio.wait_for(handler(), timeout)
            labels.update(found)
            return result
        except ApiError as exc:
            status, message = exc.status, exc.message
        except StoreError as exc:
            status, message = HTTPStatus.BAD_REQUEST, str(exc)
        except TimeoutError:
            status = HTTPStatus.SERVICE_UNAVAILABLE
            message = f"the request took longer than {timeout:g} s (serving.limits.request_timeout_seconds)"
        except (PoolTimeout, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not _unavailable(exc):
                log.exception("%s failed", endpoint)
                status, message = HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the service log"
            else:
                self.health.store_failed(exc)
                status, message = (
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "the results store is unavailable; retry shortly",
                )
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
        rows: Rows,
        columns: Columns | None = None,
        model: ModelName | None = None,
        version: VersionRef | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ScoreResponse:
        """P(up) (P(label 1)) for rows of features, and [P(down), P(flat), P(up)] per row from
        three-class models. Adaptive batching: concurrent calls for the same model version are
        scored together."""

        async def handler() -> tuple[Any, dict[str, str]]:
            tenant = self._tenant(ctx)
            if len(rows) == 0:
                raise ApiError(HTTPStatus.BAD_REQUEST, "empty batch: send at least one row")
            if len(rows) > self.settings.max_batch_rows:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"batch of {len(rows)} rows is over the limit of {self.settings.max_batch_rows}: "
                    "split it",
                )
            loaded, alias = await self._resolve_off_loop(tenant, model, version)
            if len(rows) * len(rows[0]) <= 4096:
                X = feature_matrix(rows, columns, loaded.columns)
            else:  # a big batch's conversion takes ~10 ms per 100,000 values: off the loop
                X = await asyncio.get_running_loop().run_in_executor(
                    None, feature_matrix, rows, columns, loaded.columns
                )
            P = await self._batcher(loaded, len(X)).submit(X)
            _ROWS.labels(model=loaded.name, version=loaded.version).inc(len(P))
            labels = {"model": loaded.name, "version": loaded.version}
            three = P.ndim == 2
            return ScoreResponse(
                model=loaded.name,
                version=loaded.version,
                alias=alias,
                probabilities=(P[:, 2] if three else P).tolist(),
                classes=list(CLASSES) if three else None,
                class_probabilities=P.tolist() if three else None,
                skill=loaded.skill,
            ), labels

        return await self._guard(ctx, "score", handler)

    @bentoml.api(route="/score_bars")
    async def score_bars(
        self,
        symbol: Symbol,
        bars: Annotated[
            dict[Timeframe, BarsInput],
            Field(
                description="timeframe (M5, M15, H1, ...) → its recent closed bars; the model's base "
                "and every higher timeframe it uses, with enough history for the feature windows",
                min_length=1,
            ),
        ],
        point: Annotated[
            Number | None, Field(gt=0, description="price of one point, > 0 (inferred when omitted)")
        ] = None,
        model: ModelName | None = None,
        version: VersionRef | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> BarsScoreResponse:
        """P(up) (P(label 1); all three of a three-class model) for the newest bar, features
        computed here with the training code (features/)."""

        async def handler() -> tuple[Any, dict[str, str]]:
            tenant = self._tenant(ctx)
            if point is not None and not (np.isfinite(point) and point > 0):
                raise ApiError(HTTPStatus.BAD_REQUEST, f"point must be a positive price step, got {point}")
            loaded, alias = await self._resolve_off_loop(tenant, model, version)
            spec = loaded.feature_spec
            if spec is None:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"{loaded.name} version {loaded.version} was registered without its feature spec; "
                    "score it with /score or register it again",
                )
            x = await asyncio.get_running_loop().run_in_executor(
                None, features_from_bars, bars, spec, point, self.settings.max_bars, loaded.columns
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
                probability=float(P[0, 2] if P.ndim == 2 else P[0]),
                probabilities=dict(zip(CLASSES, map(float, P[0]), strict=True)) if P.ndim == 2 else None,
                features=len(loaded.columns),
                skill=loaded.skill,
            ), {"model": loaded.name, "version": loaded.version}

        return await self._guard(ctx, "score_bars", handler)

    @bentoml.api(route="/models")
    async def list_models(self, ctx: bentoml.Context = None) -> ModelsResponse:  # type: ignore[assignment]
        """The catalog: every model this service serves — its cell of the probability matrix
        (symbols, timeframe, horizon, label kind), state, aliases, loaded versions and your default."""

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
                no_skill = self.models.no_skill(name)
                state = (
                    "not built"
                    if not aliases
                    else "serving"
                    if self.settings.alias in aliases
                    else self.models.refusal(name) or "no champion"
                )
                infos.append(
                    ModelInfo(
                        name=name,
                        aliases=aliases,
                        loaded_versions=sorted((v for n, v in loaded if n == name), key=int),
                        default_version=default,
                        columns=cols,
                        no_skill=no_skill,
                        state=state,
                        **(self.catalog.get(name) or {}),
                    )
                )
            return ModelsResponse(tenant=tenant.name, models=infos), {}

        return await self._guard(ctx, "models", handler)

    @bentoml.api(route="/results/latest")
    async def results_latest(
        self,
        symbol: Symbol | None = None,
        timeframe: Timeframe | None = None,
        tenant: OwnTenant = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ResultsResponse:
        """Your newest probability per (symbol, timeframe, horizon, label kind) from the results store."""

        async def handler() -> tuple[Any, dict[str, str]]:
            me = self._own(self._tenant(ctx), tenant)
            frame = await self._read(me, lambda s: s.latest(symbol, timeframe))
            return ResultsResponse(tenant=me.name, rows=result_rows(frame)), {}

        return await self._guard(ctx, "results_latest", handler)

    @bentoml.api(route="/matrix")
    async def matrix(
        self,
        tenant: OwnTenant = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> MatrixResponse:
        """Your newest probability of every cell you follow in one call, as a grid: symbol →
        timeframe → label kind → horizon → probability (null where none is scored yet)."""

        async def handler() -> tuple[Any, dict[str, str]]:
            me = self._own(self._tenant(ctx), tenant)
            frame = await self._read(me, lambda s: s.latest())
            grid, missing = matrix_grid(me.follows, frame)
            return MatrixResponse(tenant=me.name, follows=len(me.follows), missing=missing, grid=grid), {}

        return await self._guard(ctx, "matrix", handler)

    @bentoml.api(route="/results/range")
    async def results_range(
        self,
        start: Annotated[datetime, Field(description="first bar open time (UTC, inclusive)")],
        end: Annotated[datetime, Field(description="last bar open time (UTC, exclusive)")],
        symbol: Symbol | None = None,
        timeframe: Timeframe | None = None,
        limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000,
        tenant: OwnTenant = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ResultsResponse:
        """Your probabilities with bar time in [start, end), newest first."""

        async def handler() -> tuple[Any, dict[str, str]]:
            me = self._own(self._tenant(ctx), tenant)
            start_utc, end_utc = as_utc(start), as_utc(end)
            if end_utc <= start_utc:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"end {end_utc.isoformat()} must be after start {start_utc.isoformat()}",
                )
            frame = await self._read(
                me, lambda s: s.probabilities(symbol, timeframe, start_utc, end_utc, limit)
            )
            return ResultsResponse(tenant=me.name, rows=result_rows(frame)), {}

        return await self._guard(ctx, "results_range", handler)

    @bentoml.api(route="/export")
    async def export(
        self,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> Annotated[Path, ContentType("application/zip")]:
        """Your whole data package (portability): settings, subscription and pin history,
        results and audit trail as JSON and Parquet, with a manifest and SHA-256 checksums
        (a zip; pipelines/store/export.py says what is in it)."""

        async def handler() -> tuple[Any, dict[str, str]]:
            from starlette.responses import Response

            from pipelines.store.export import export_package

            me = self._tenant(ctx)
            data, manifest = await asyncio.get_running_loop().run_in_executor(
                None, lambda: export_package(self.store, me.tenant_id, actor=f"api:{me.tenant_id}")
            )
            name = f"mt5prob-{me.tenant_id}-{manifest['created_at'][:10]}.zip"
            headers = {"Content-Disposition": f'attachment; filename="{name}"'}
            return Response(data, media_type="application/zip", headers=headers), {}

        return await self._guard(ctx, "export", handler)

    def _own(self, me: Any, asked: str | None) -> Any:
        if asked and asked not in (me.tenant_id, me.name):
            raise ApiError(HTTPStatus.FORBIDDEN, "you may read only your own tenant's results")
        return me

    async def _read(self, me: Any, query: Any) -> Any:
        """`query(session)` in the caller's own tenant session, off the event loop."""

        def run() -> Any:
            with self.store.tenant(me.tenant_id, actor=f"api:{me.tenant_id}") as session:
                return query(session)

        return await asyncio.get_running_loop().run_in_executor(None, run)


def _lower_priority() -> None:
    """Run the calling thread (and the threads it starts, e.g. xgboost's OpenMP team) at nice
    10: bulk batches use the cores the single-row lane and the event loop leave free."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except OSError:  # not permitted here: same priority as the rest
        pass


def _unavailable(exc: Any) -> bool:
    """Whether a database error means the store cannot answer now (connection lost or
    refused, statement timeout, server shutting down) rather than a fault in our query."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if getattr(exc, "connection_invalidated", False) or isinstance(exc, OperationalError | InterfaceError):
        return True
    code = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    return code.startswith(("08", "53", "57"))  # connection, resources, operator intervention


# limits, the key, then the body, before any endpoint work; /readyz with reasons (serving/guard.py)
ScoringService.add_asgi_middleware(RequestGuard, service=lambda: _SERVICE.get("instance"))
# GET /stream: server-sent events of the caller's results (serving/stream.py)
ScoringService.add_asgi_middleware(StreamRoute, handler=stream_app(lambda: _SERVICE.get("instance")))
