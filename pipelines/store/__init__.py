"""The per-tenant results store (see results.py) and its Alembic migrations."""

from pipelines.store.results import (
    ResultRow,
    ResultsStore,
    StoreError,
    Subscription,
    Tenant,
    TenantIsolationError,
    TenantSession,
    app_url,
)

__all__ = [
    "ResultRow",
    "ResultsStore",
    "StoreError",
    "Subscription",
    "Tenant",
    "TenantIsolationError",
    "TenantSession",
    "app_url",
]
