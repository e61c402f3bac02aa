"""Tables of the results store (SQLAlchemy Core). Alembic migrations create them; this module
is the one place their shape is named, for queries and for the migrations alike.

Times are UTC. ``bar_time`` is the bar's open time; ``bar_closed_at`` the wall-clock moment the
bar closed and ``committed_at`` when its score was written (their difference is the live lag).
Every tenant table carries ``tenant_id``; on PostgreSQL, row-level security keys on it, and
a tenant reads scores only of what it follows.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Alembic's version table for this store (not the default `alembic_version`, which MLflow and
# Optuna use when they share the database)
VERSION_TABLE = "mt5prob_store_version"
# The role the application connects as on PostgreSQL: no BYPASSRLS, no table ownership.
APP_ROLE = "mt5prob_app"
# Per-transaction setting that names the tenant (set_config(..., true)); RLS compares to it.
TENANT_SETTING = "app.tenant_id"
# Tables whose rows belong to one tenant: RLS on each.
TENANT_TABLES = ("tenants", "subscriptions", "pins", "audit", "webhooks")


def _tenant_fk() -> sa.ForeignKey:
    """A tenant's rows go with it (migration 0006): one written while it is being erased fails."""
    return sa.ForeignKey("tenants.tenant_id", ondelete="CASCADE")


tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("tenant_id", sa.String(32), primary_key=True),
    # sealed under the tenant's data key (pipelines/store/crypto.py). No digest of it is kept
    # for lookups: a digest would outlive an erasure in old backups and confirm a guessed name
    sa.Column("name_sealed", sa.LargeBinary, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False),  # sha256 hex of the whole key
    sa.Column("follows", sa.JSON, nullable=False),  # [{symbol, timeframe, horizon, label_kind}]
    # JSON [long_above, short_below] on P(up), sealed under the tenant's key (migration 0009)
    sa.Column("thresholds_sealed", sa.LargeBinary, nullable=False),
    sa.Column("pins", sa.JSON, nullable=False),  # {model name: version}
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("key_rotated_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per (series, model version, bar, audience): a probability is stored once, however
# many tenants follow it (a tenant sees it through the ``tenant_results`` view). Rows are never
# updated; ids follow commit order (writers serialise on an advisory lock on PostgreSQL), so
# "every score after id N" is a gap-free stream cursor.
scores = sa.Table(
    "scores",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("timeframe", sa.String(8), nullable=False),
    sa.Column("bar_time", sa.DateTime(timezone=True), nullable=False),  # bar open, UTC
    sa.Column("horizon", sa.Integer, nullable=False),
    sa.Column("label_kind", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    # P(label 1), float64, sealed under the platform's data key and bound to this row's unique
    # key (migration 0007; pipelines/store/results.seal_probability): no probability is stored
    # in the clear. Its range, [0, 1], is checked by the writer.
    sa.Column("probability_sealed", sa.LargeBinary, nullable=False),
    # its audience: true = tenants without a pin (it was the version ``serving.alias`` pointed
    # at), false = tenants pinned to this version. A version both followed and pinned is
    # stored once per audience, so each tenant sees each (bar, version) once, and a promotion
    # that makes an already-scored version followed gives followers a new event.
    sa.Column("followed", sa.Boolean, nullable=False),
    sa.Column("bar_closed_at", sa.DateTime(timezone=True), nullable=False),  # wall clock, UTC
    sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),  # wall clock, UTC
    sa.UniqueConstraint(
        "symbol",
        "timeframe",
        "bar_time",
        "horizon",
        "label_kind",
        "model_name",
        "model_version",
        "followed",
        name="uq_scores",
    ),
)
sa.Index(
    "ix_scores_series",
    scores.c.symbol,
    scores.c.timeframe,
    scores.c.horizon,
    scores.c.label_kind,
    scores.c.bar_time,
)

# What each tenant follows, with its thresholds, over time: a change closes the open rows
# (valid_to) and opens new ones, so which scores a tenant was given, and with which signal, is
# a query over immutable rows (the audit record of deliveries).
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("tenant_id", sa.String(32), _tenant_fk(), nullable=False),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("timeframe", sa.String(8), nullable=False),
    sa.Column("horizon", sa.Integer, nullable=False),
    sa.Column("label_kind", sa.String(32), nullable=False),
    # JSON [long_above, short_below], sealed under the tenant's key, bound to this row's series
    # and valid_from (`results.subscription_row_key`)
    sa.Column("thresholds_sealed", sa.LargeBinary, nullable=False),
    sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
    sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
)
sa.Index(
    "ix_subscriptions_series",
    subscriptions.c.symbol,
    subscriptions.c.timeframe,
    subscriptions.c.horizon,
    subscriptions.c.label_kind,
)
sa.Index("ix_subscriptions_tenant", subscriptions.c.tenant_id)

# A tenant's pinned model versions over time (same validity rule as subscriptions).
pins = sa.Table(
    "pins",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("tenant_id", sa.String(32), _tenant_fk(), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
    sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
)
sa.Index("ix_pins_tenant", pins.c.tenant_id, pins.c.model_name)

# A tenant's results: the scores of what it followed when each was committed, with the model
# version it follows (its pin, else the followed alias) and its thresholds of that moment. A
# view over scores ⋈ subscriptions ⋈ pins (its SQL is in migration 0007): on PostgreSQL
# ``security_invoker``, so row-level security on all three applies to the reader. The reader
# opens the sealed probability and derives the signal (`TenantSession`).
TENANT_RESULTS = "tenant_results"
tenant_results = sa.Table(  # the view's shape, for queries (created by the migration, not here)
    TENANT_RESULTS,
    sa.MetaData(),
    sa.Column("tenant_id", sa.String(32)),
    sa.Column("symbol", sa.String(32)),
    sa.Column("timeframe", sa.String(8)),
    sa.Column("bar_time", sa.DateTime(timezone=True)),
    sa.Column("horizon", sa.Integer),
    sa.Column("label_kind", sa.String(32)),
    sa.Column("probability_sealed", sa.LargeBinary),
    sa.Column("subscription_from", sa.DateTime(timezone=True)),
    sa.Column("thresholds_sealed", sa.LargeBinary),
    sa.Column("followed", sa.Boolean),
    sa.Column("model_name", sa.String(200)),
    sa.Column("model_version", sa.String(32)),
    sa.Column("scored_at", sa.DateTime(timezone=True)),
    sa.Column("bar_closed_at", sa.DateTime(timezone=True)),
    sa.Column("event_id", sa.BigInteger),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("tenant_id", sa.String(32), _tenant_fk(), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),  # "admin", "api:<tenant id>", … (never a name)
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("detail_sealed", sa.LargeBinary, nullable=False),  # JSON, sealed; row key: action|at
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_audit_tenant_at", audit.c.tenant_id, audit.c.at)

# Live scoring's resume point per series: shared by all tenants, so no RLS.
watermarks = sa.Table(
    "score_watermarks",
    metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("timeframe", sa.String(8), primary_key=True),
    sa.Column("last_bar_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Live workers and the symbols each holds (pipelines/live.py); no tenant data, so no RLS.
worker_heartbeats = sa.Table(
    "worker_heartbeats",
    metadata,
    sa.Column("holder", sa.String(64), primary_key=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
)
series_leases = sa.Table(
    "series_leases",
    metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

# A tenant's webhook and its delivery cursor over the tenant's event stream (migration 0005):
# every event id ≤ delivered_through was acknowledged; (delivered_through, pending_through] is
# the batch in flight, re-sent as it is until acknowledged.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("tenant_id", sa.String(32), _tenant_fk(), primary_key=True),
    sa.Column("url_sealed", sa.LargeBinary, nullable=False),
    sa.Column("secret_sealed", sa.LargeBinary, nullable=False),  # HMAC-SHA256 key (hex), sealed
    sa.Column("delivered_through", sa.BigInteger, nullable=False),
    sa.Column("pending_through", sa.BigInteger, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),  # failed attempts of the pending batch
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_status", sa.String(300), nullable=True),
    sa.Column("delivered", sa.BigInteger, nullable=False),  # events acknowledged, all time
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per erased tenant (migration 0006): nothing personal — a digest of its id, when, by
# whom, and how many rows and data keys went.
erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("subject", sa.String(64), nullable=False),  # sha256 hex of the tenant id
    sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("counts", sa.Text, nullable=False),  # JSON
)

# The challenger scored in the shadow of the champion (migration 0010): per live bar, both
# versions' probabilities, sealed together under the platform's data key (`ResultsStore.write_shadow`), bound
# to the row's unique key. No tenant is given these (PostgreSQL: only a session acting for no
# tenant reads or writes them); the monitor compares the two on matured labels.
shadow_scores = sa.Table(
    "shadow_scores",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("timeframe", sa.String(8), nullable=False),
    sa.Column("bar_time", sa.DateTime(timezone=True), nullable=False),  # bar open, UTC
    sa.Column("horizon", sa.Integer, nullable=False),
    sa.Column("label_kind", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("challenger_version", sa.String(32), nullable=False),
    sa.Column("champion_version", sa.String(32), nullable=False),
    sa.Column("probabilities_sealed", sa.LargeBinary, nullable=False),  # (challenger, champion) float64
    sa.Column("bar_closed_at", sa.DateTime(timezone=True), nullable=False),  # wall clock, UTC
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),  # wall clock, UTC
    sa.UniqueConstraint(
        "symbol",
        "timeframe",
        "bar_time",
        "horizon",
        "label_kind",
        "model_name",
        "challenger_version",
        "champion_version",
        name="uq_shadow_scores",
    ),
)
