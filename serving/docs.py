"""The scoring API's own docs: ``/docs`` (Swagger UI), ``/docs/openapi.json`` and the request
examples at ``/docs/examples/<operation>.json``.

BentoML's generated document (its page at ``/``) carries BentoML's title and version "None",
no way to send an API key, and examples the model rejects. `api_document` rewrites it into
the service's document: its title, description and package version; an API-key scheme (the
``serving.api_key_header`` header, or ``Authorization: Bearer``) on every scoring operation,
so "Authorize" then "Try it out" works; the error answers each operation can give with their
body; and request examples built from the served model at start (`score_example`,
`bars_example`) that it accepts as they are.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what is wrong, in one line"}},
    "required": ["error"],
}
ERRORS = {
    "400": "bad input: the message names the field and the problem",
    "401": "no API key, or an unknown one (send it in the key header or as a bearer token)",
    "403": "another tenant's results or pinned version",
    "404": "unknown model, version or alias; or this endpoint is switched off (serving.endpoints)",
    "409": "the model has no champion because the promotion gate found no skill in any version: the "
    "message names the latest challenger and its interval; ask for a version number to score anyway",
    "413": "the body is over serving.max_body_bytes",
    "415": "the body is not application/json",
    "429": "over a rate or concurrency limit (serving.limits); wait Retry-After seconds",
    "503": "a dependency (results store, registry, model artifact) is unavailable, or the request "
    "timed out; the message names it; retry later",
}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
EXAMPLE_END = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # the examples' newest base bar closes here


def package_version() -> str:
    try:
        return metadata.version("mt5prob")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def score_example(columns: list[str]) -> dict[str, Any]:
    """A `/score` body the model with `columns` accepts: one row of zeros, columns named."""
    return {"rows": [[0.0] * len(columns)], "columns": list(columns)}


def bars_example(spec: Any, symbol: str = "EURUSD", seed: int = 0) -> dict[str, Any]:
    """A `/score_bars` body for a model with feature spec `spec`: a synthetic random walk per
    timeframe on its bar grid, exactly as many closed bars as the feature windows need, the
    newest base bar closing at `EXAMPLE_END`."""
    from features.bars import Bars
    from features.window import trailing_window
    from pipelines.mt5.constants import timeframe_seconds

    rng = np.random.default_rng(seed)
    end = int(EXAMPLE_END.timestamp())
    built: dict[str, Bars] = {}
    for tf in [spec.base_timeframe, *spec.higher_timeframes]:
        seconds = timeframe_seconds(tf)
        n = 1200
        last_open = (end // seconds) * seconds - seconds
        time = last_open - seconds * np.arange(n - 1, -1, -1, dtype=np.int64)
        close = 1.1 * np.exp(np.cumsum(rng.normal(0.0, 0.0004 * np.sqrt(seconds / 300), n)))
        open_ = np.concatenate([[close[0]], close[:-1]])
        wick = np.abs(rng.normal(0.0, 0.0002, (2, n))) * close
        rates = {
            "time": time,
            "open": open_,
            "high": np.maximum(open_, close) + wick[0],
            "low": np.minimum(open_, close) - wick[1],
            "close": close,
            "tick_volume": rng.integers(50, 500, n).astype(np.float64),
            "spread": np.full(n, 8.0),
        }
        built[tf] = Bars.from_rates(rates, seconds, 0.00001)
    window = trailing_window(built, spec, len(built[spec.base_timeframe]) - 1)
    bars = {}
    for tf, b in window.bars.items():
        bars[tf] = {
            "time": [int(t) for t in b.time],
            **{f: [round(float(x), 5) for x in getattr(b, f)] for f in ("open", "high", "low", "close")},
            "tick_volume": [float(x) for x in b.tick_volume],
            "spread": [float(x) for x in b.spread],
        }
    return {"symbol": symbol, "bars": bars, "point": 0.00001}


def api_document(
    spec: dict[str, Any],
    *,
    title: str,
    description: str,
    version: str,
    key_header: str,
    secured: set[str],
    examples: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """BentoML's OpenAPI `spec` as the service's document: `title`, `description`, `version`;
    API-key security (header `key_header` or bearer) and the `ERRORS` answers on every
    operation whose path is in `secured`; `examples` (path → request body) replacing the
    generated ones. Pure: returns a new document."""
    doc = copy.deepcopy(spec)
    doc["info"] = {"title": title, "description": description, "version": version}
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": key_header},
        "Bearer": {"type": "http", "scheme": "bearer", "description": "the same API key as a bearer token"},
    }
    for path, item in doc.get("paths", {}).items():
        if path not in secured:
            continue
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
            for code, text in ERRORS.items():
                operation["responses"][code] = {
                    "description": text,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                if code == "429":
                    operation["responses"][code]["headers"] = RETRY_AFTER
            operation["responses"].pop("500", None)  # never answered on purpose: a bug if seen
            body = (examples or {}).get(path)
            if body is not None:
                media = operation.get("requestBody", {}).get("content", {}).get("application/json")
                if media is not None:
                    media.pop("examples", None)
                    media["example"] = body
    return openapi30(doc)


def openapi30(node: Any) -> Any:
    """Pydantic's JSON Schema (2020-12) spellings as OpenAPI 3.0, which the document declares:
    ``anyOf [X, {type: null}]`` → X with ``nullable``; a field whose default is null →
    ``nullable``; a numeric ``exclusiveMinimum``/``exclusiveMaximum`` → the bound with a
    boolean flag; ``examples`` inside a schema → ``example``. Returns a new structure."""
    if isinstance(node, list):
        return [openapi30(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi30(v) for k, v in node.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        out.pop("anyOf")
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    if "default" in out and out["default"] is None and ("type" in out or "$ref" in out or "anyOf" in out):
        out["nullable"] = True
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[flag] = out[bound]
            out[bound] = True
    if isinstance(out.get("examples"), list) and ("type" in out or "items" in out):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    return out


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>{title}</title>
  <link rel="stylesheet" type="text/css" href="/static_content/swagger-ui.css" />
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "/docs/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
      persistAuthorization: true, tryItOutEnabled: false
    }});
  </script>
</body>
</html>
"""


def docs_app(document: Any) -> Any:
    """A Starlette app for mounting at ``/docs``: the page at ``/docs/``, the document at
    ``/docs/openapi.json`` and each request example on its own at
    ``/docs/examples/<score|score_bars>.json`` (``curl … -d @file`` ready). `document()`
    returns the current document (None: not ready)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    # building the document may load the model and its example bars: off the event loop
    async def page(_: Any) -> Response:
        doc = await run_in_threadpool(document)
        title = doc["info"]["title"] if doc else "mt5prob scoring API"
        return HTMLResponse(PAGE.format(title=title))

    async def openapi(_: Any) -> Response:
        doc = await run_in_threadpool(document)
        if doc is None:
            return JSONResponse({"error": "the service is still starting"}, status_code=503)
        return Response(json.dumps(doc), media_type="application/json")

    async def example(request: Any) -> Response:
        doc = await run_in_threadpool(document)
        name = request.path_params["name"]
        try:
            body = doc["paths"]["/" + name]["post"]["requestBody"]["content"]["application/json"]["example"]
        except (KeyError, TypeError):
            return JSONResponse(
                {"error": f"no example for {name[:60]!r} (have: score, score_bars once a model is served)"},
                status_code=404,
            )
        return Response(json.dumps(body), media_type="application/json")

    return Starlette(
        routes=[
            Route("/", page),
            Route("/openapi.json", openapi),
            Route("/examples/{name}.json", example),
        ]
    )
