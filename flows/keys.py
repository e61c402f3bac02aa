"""Prefect flows of tenant data protection — ``rotate-data-key``, ``rotate-master-key`` and
``prune-audit``: orchestration only, the work is in `pipelines.store`
(`ResultsStore.rotate_data_key`, `crypto.KeyStore.rewrap`, `ResultsStore.prune_audit`).

Tenants are named by id here, never by name: flow parameters, logs and artifacts live in
Prefect's database, which an erasure does not reach. The new master key is read from a file
whose path is the parameter — the key itself never becomes a parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from pipelines.config import load_params
from pipelines.store import ResultsStore
from pipelines.store.crypto import PLATFORM


@flow(name="rotate-data-key", log_prints=True)
def rotate_data_key_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    owner: str = PLATFORM,
    batch: int = 1000,
) -> dict[str, Any]:
    """Re-seal one owner's values under a new data key, online, in batches; a rerun resumes.

    Args:
        params_path: params.yaml to read.
        profile: a profile of params.yaml merged over it; empty for none.
        owner: a tenant's id (never its name: names stay out of Prefect), or ``_platform`` for
            the probabilities.
        batch: rows re-sealed per transaction.
    """
    store = ResultsStore.from_params(load_params(params_path, profile).store)
    try:
        store.verify_keys()
        if owner != PLATFORM and store.find_tenant(owner).tenant_id != owner:
            raise ValueError("owner: give the tenant's id, not its name (names stay out of Prefect)")
        done = store.rotate_data_key(owner, batch=batch)
    finally:
        store.close()
    get_run_logger().info(
        "data key of %s: version %s, %d values re-sealed in %d batches, %d old version(s) destroyed, %.1f s",
        done["owner"],
        done["version"],
        done["resealed"],
        done["batches"],
        done.get("retired", 0),
        done["seconds"],
    )
    create_table_artifact(
        key="rotate-data-key", table=[{k: str(v) for k, v in done.items()}], description="Data-key rotation"
    )
    return done


@flow(name="rotate-master-key", log_prints=True)
def rotate_master_key_flow(
    new_key_file: str,
    params_path: str = "params.yaml",
    profile: str | None = None,
) -> dict[str, Any]:
    """Re-wrap every data key under the master key in `new_key_file`; no tenant row is touched.

    Args:
        new_key_file: path of a file holding the new master key (``tenants keygen --out``), as
            the flow's process sees it; the key never becomes a parameter.
        params_path: params.yaml to read.
        profile: a profile of params.yaml merged over it; empty for none.
    """
    store = ResultsStore.from_params(load_params(params_path, profile).store)
    try:
        store.verify_keys()
        done = store.rotate_master_key(Path(new_key_file))
    finally:
        store.close()
    get_run_logger().info(
        "re-wrapped %d data keys under master key %s in %.2f s; give the processes the new key",
        done["data_keys"],
        done["master_key_id"],
        done["seconds"],
    )
    create_table_artifact(key="rotate-master-key", table=[done], description="Master-key rotation")
    return done


@flow(name="prune-audit", log_prints=True)
def prune_audit_flow(params_path: str = "params.yaml", profile: str | None = None) -> int:
    """Delete audit rows older than ``store.audit_retention_days`` (every tenant).

    Args:
        params_path: params.yaml to read.
        profile: a profile of params.yaml merged over it; empty for none.
    """
    params = load_params(params_path, profile)
    store = ResultsStore.from_params(params.store)
    try:
        store.verify_keys()
        gone = store.prune_audit(params.store.audit_retention_days)
    finally:
        store.close()
    get_run_logger().info("pruned %d audit rows older than %g days", gone, params.store.audit_retention_days)
    return gone
