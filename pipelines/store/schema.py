"""Tables of the results store (SQLAlchemy Core). Alembic migrations create them; this module
is the one place their shape is named, for queries and for the migrations alike.

Times are UTC. ``bar_time`` is the bar's open time; ``scored_at`` is when the row was written.
Every tenant table carries ``tenant_id``; on PostgreSQL, row-level security keys on it.
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
TENANT_TABLES = ("tenants", "probabilities", "audit")

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("tenant_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("key_id", sa.String(32), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False),  # sha256 hex of the whole key
    sa.Column("follows", sa.JSON, nullable=False),  # [{symbol, timeframe, horizon, label_kind}]
    sa.Column("long_above", sa.Float, nullable=False),
    sa.Column("short_below", sa.Float, nullable=False),
    sa.Column("pins", sa.JSON, nullable=False),  # {model name: version}
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("key_rotated_at", sa.DateTime(timezone=True), nullable=False),
)

probabilities = sa.Table(
    "probabilities",
    metadata,
    sa.Column("tenant_id", sa.String(32), nullable=False),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("timeframe", sa.String(8), nullable=False),
    sa.Column("bar_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("horizon", sa.Integer, nullable=False),
    sa.Column("label_kind", sa.String(32), nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("signal", sa.String(8), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint(
        "tenant_id",
        "symbol",
        "timeframe",
        "bar_time",
        "horizon",
        "label_kind",
        "model_version",
        name="pk_probabilities",
    ),
    sa.CheckConstraint("probability >= 0 AND probability <= 1", name="ck_probability_range"),
    sa.CheckConstraint("signal IN ('long', 'short', 'flat')", name="ck_signal"),
)
sa.Index("ix_probabilities_latest", probabilities.c.tenant_id, probabilities.c.bar_time)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("tenant_id", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
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
