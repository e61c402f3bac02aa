"""A tenant's data as one portable package (issue 15: portability).

`export_package` builds a zip archive, read through the tenant's own session (its RLS, its keys):

- ``tenant.json`` — its settings: id, name, what it follows, thresholds, pins, created_at, and
  its webhook (URL and delivery state; never the signing secret, never an API key — only
  hashes of keys are stored);
- ``subscriptions.json``, ``pins.json`` — their history (valid_from ≤ t < valid_to, UTC);
- ``results.parquet`` — every result it was given (probability, signal, model and version, bar
  open and close times, commit time, event id; three-class results also ``p_down``,
  ``p_flat``, ``p_up``, `flat_results`);
- ``audit.parquet`` and ``audit.json`` — its audit trail (actor, action, detail, at);
- ``manifest.json`` — format, tenant id, when, and per file its SHA-256, size and rows;
- ``SHA256SUMS`` — the same checksums in ``sha256sum -c`` form.

Times are UTC (ISO 8601 in JSON). The export itself is audited (``tenant.export``).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from models.three_way import CLASSES
from pipelines.store.results import ResultsStore, StoreError

FORMAT = "mt5prob-tenant-export/1"


def export_package(store: ResultsStore, tenant_id: str, actor: str) -> tuple[bytes, dict[str, Any]]:
    """The tenant's package (zip bytes) and its manifest. `StoreError` when there is no such
    tenant."""
    webhook = None
    with store.tenant(tenant_id, actor=actor) as session:
        tenant = session.tenant()
        if tenant is None:
            raise StoreError(f"no tenant {tenant_id!r}")
        subscriptions = session.subscription_history()
        pins = session.pin_history()
        results = session.probabilities()
        audit = session.audit_log()
        hook = session.webhook()
        session.audit("tenant.export", {"results": len(results), "audit": len(audit)})
    if hook is not None:
        webhook = {k: v for k, v in vars(hook).items() if k not in ("secret", "tenant_id")}
    settings = {**tenant.as_dict(), "webhook": webhook}
    results = flat_results(results)
    files: dict[str, tuple[bytes, int | None]] = {
        "tenant.json": (_json(settings), None),
        "subscriptions.json": (_json(subscriptions), len(subscriptions)),
        "pins.json": (_json(pins), len(pins)),
        "results.parquet": (_parquet(results), len(results)),
        "audit.parquet": (_parquet(audit), len(audit)),
        "audit.json": (_json(audit.to_dict(orient="records")), len(audit)),
    }
    manifest = {
        "format": FORMAT,
        "tenant_id": tenant_id,
        "created_at": datetime.now(UTC).isoformat(),
        "files": {
            name: {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "rows": rows}
            for name, (body, rows) in files.items()
        },
    }
    sums = "".join(f"{m['sha256']}  {name}\n" for name, m in manifest["files"].items())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, (body, _) in files.items():
            archive.writestr(name, body)
        archive.writestr("manifest.json", _json(manifest))
        archive.writestr("SHA256SUMS", sums)
    return out.getvalue(), manifest


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=_default).encode()


def _default(value: Any) -> Any:
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def flat_results(frame: pd.DataFrame) -> pd.DataFrame:
    """A tenant's results as a flat table for files (Parquet, CSV), oldest bar first: the
    three-class ``probabilities`` as columns ``p_down``, ``p_flat``, ``p_up`` (empty for binary
    results)."""
    frame = frame.sort_values(["bar_time", "symbol", "timeframe", "horizon", "label_kind"]).reset_index(
        drop=True
    )
    three = frame.pop("probabilities") if "probabilities" in frame else pd.Series([None] * len(frame))
    at = frame.columns.get_loc("probability") + 1
    for i, c in enumerate(CLASSES):
        frame.insert(at + i, f"p_{c}", [float("nan") if d is None else float(d[c]) for d in three])
    return frame


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def verify_package(data: bytes) -> dict[str, Any]:
    """The manifest of a package whose every file matches its checksum; `ValueError` naming
    the first file that does not (or is missing)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        for name, meta in manifest["files"].items():
            try:
                body = archive.read(name)
            except KeyError:
                raise ValueError(f"{name} is missing from the package") from None
            if hashlib.sha256(body).hexdigest() != meta["sha256"]:
                raise ValueError(f"{name} does not match its checksum")
    return manifest
