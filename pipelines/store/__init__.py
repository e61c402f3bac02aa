"""The per-tenant results store (see results.py) and its Alembic migrations."""

from pipelines.store.results import (
    ResultsStore,
    ScoreRow,
    ShadowRow,
    StoreError,
    Subscription,
    Tenant,
    TenantIsolationError,
    TenantSession,
    Webhook,
    app_url,
    event_payload,
)

__all__ = [
    "ResultsStore",
    "ScoreRow",
    "ShadowRow",
    "StoreError",
    "Subscription",
    "Tenant",
    "TenantIsolationError",
    "TenantSession",
    "Webhook",
    "app_url",
    "event_payload",
]
