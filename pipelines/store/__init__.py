"""The per-tenant results store (see results.py) and its Alembic migrations."""

from pipelines.store.results import (
    ResultsStore,
    ScoreRow,
    StoreError,
    Subscription,
    Tenant,
    TenantIsolationError,
    TenantSession,
    app_url,
)

__all__ = [
    "ResultsStore",
    "ScoreRow",
    "StoreError",
    "Subscription",
    "Tenant",
    "TenantIsolationError",
    "TenantSession",
    "app_url",
]
