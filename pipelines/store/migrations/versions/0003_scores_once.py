"""Each probability stored once per (series, model version, bar); tenants read it through a view.

Before: live scoring wrote one row per tenant per bar (40,000 rows for 1,000 tenants following
40 series), which alone took longer than a bar-close budget. Now:

- ``scores`` holds each probability once, with the wall-clock moment its bar closed and when it
  was committed, and an id in commit order (the stream cursor);
- ``subscriptions`` and ``pins`` hold what each tenant follows, its thresholds and its pinned
  versions *over time* (valid_from/valid_to), so what a tenant was given, and when, stays an
  auditable query over immutable rows;
- the view ``tenant_results`` joins them into the per-tenant shape the old ``probabilities``
  table had (same columns, plus ``bar_closed_at`` and ``event_id``).

On PostgreSQL the view is ``security_invoker``; ``subscriptions`` and ``pins`` have the tenant
policy, and ``scores`` a policy under which a tenant session sees only the series it follows
and cannot write, while a session acting for no tenant (the live worker) may only insert.

Existing rows move: each distinct probability becomes a score per audience (``followed`` for
tenants without a pin on its model, not followed for pinned ones), each tenant's follows and
pins become open subscriptions and pins from its creation time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
TF_SECONDS = {
    "M1": 60,
    "M2": 120,
    "M3": 180,
    "M4": 240,
    "M5": 300,
    "M6": 360,
    "M10": 600,
    "M12": 720,
    "M15": 900,
    "M20": 1200,
    "M30": 1800,
    "H1": 3600,
    "H2": 7200,
    "H3": 10800,
    "H4": 14400,
    "H6": 21600,
    "H8": 28800,
    "H12": 43200,
    "D1": 86400,
    "W1": 604800,
    "MN1": 2592000,
}

VIEW_SQL = """
SELECT sub.tenant_id, s.symbol, s.timeframe, s.bar_time, s.horizon, s.label_kind, s.probability,
       CASE WHEN s.probability > sub.long_above THEN 'long'
            WHEN s.probability < sub.short_below THEN 'short'
            ELSE 'flat' END AS signal,
       s.model_name, s.model_version, s.committed_at AS scored_at, s.bar_closed_at, s.id AS event_id
FROM scores s
JOIN subscriptions sub
  ON sub.symbol = s.symbol AND sub.timeframe = s.timeframe AND sub.horizon = s.horizon
 AND sub.label_kind = s.label_kind
 AND sub.valid_from <= s.committed_at AND (sub.valid_to IS NULL OR s.committed_at < sub.valid_to)
LEFT JOIN pins p
  ON p.tenant_id = sub.tenant_id AND p.model_name = s.model_name
 AND p.valid_from <= s.committed_at AND (p.valid_to IS NULL OR s.committed_at < p.valid_to)
WHERE (p.version IS NULL AND s.followed) OR (s.model_version = p.version AND NOT s.followed)
"""

_SCORE_MATCH = (
    "sub.symbol = scores.symbol AND sub.timeframe = scores.timeframe "
    "AND sub.horizon = scores.horizon AND sub.label_kind = scores.label_kind"
)


def _utc(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upgrade() -> None:
    utc = sa.DateTime(timezone=True)
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    scores = op.create_table(
        "scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("bar_time", utc, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("label_kind", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("followed", sa.Boolean, nullable=False),
        sa.Column("bar_closed_at", utc, nullable=False),
        sa.Column("committed_at", utc, nullable=False),
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
        sa.CheckConstraint("probability >= 0 AND probability <= 1", name="ck_score_range"),
    )
    op.create_index(
        "ix_scores_series", "scores", ["symbol", "timeframe", "horizon", "label_kind", "bar_time"]
    )
    subscriptions = op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("label_kind", sa.String(32), nullable=False),
        sa.Column("long_above", sa.Float, nullable=False),
        sa.Column("short_below", sa.Float, nullable=False),
        sa.Column("valid_from", utc, nullable=False),
        sa.Column("valid_to", utc, nullable=True),
    )
    op.create_index(
        "ix_subscriptions_series", "subscriptions", ["symbol", "timeframe", "horizon", "label_kind"]
    )
    op.create_index("ix_subscriptions_tenant", "subscriptions", ["tenant_id"])
    pins = op.create_table(
        "pins",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("valid_from", utc, nullable=False),
        sa.Column("valid_to", utc, nullable=True),
    )
    op.create_index("ix_pins_tenant", "pins", ["tenant_id", "model_name"])
    _move_rows(bind, scores, subscriptions, pins)
    op.drop_table("probabilities")
    if pg:
        op.execute(f"CREATE VIEW tenant_results WITH (security_invoker = true) AS {VIEW_SQL}")
        _postgres_isolation()
    else:
        op.execute(f"CREATE VIEW tenant_results AS {VIEW_SQL}")


def _move_rows(bind, scores, subscriptions, pins) -> None:
    """Tenants' follows and pins → open subscriptions and pins; old per-tenant rows → scores."""
    pin_of: dict[tuple[str, str], str] = {}
    for t in bind.execute(
        sa.text("SELECT tenant_id, follows, long_above, short_below, pins, created_at FROM tenants")
    ).all():
        follows = t.follows if not isinstance(t.follows, str) else json.loads(t.follows)
        tenant_pins = t.pins if not isinstance(t.pins, str) else json.loads(t.pins)
        since = _utc(t.created_at)
        if follows:
            bind.execute(
                subscriptions.insert(),
                [
                    {
                        "tenant_id": t.tenant_id,
                        "symbol": f["symbol"],
                        "timeframe": f["timeframe"],
                        "horizon": int(f["horizon"]),
                        "label_kind": f.get("label_kind", "direction"),
                        "long_above": t.long_above,
                        "short_below": t.short_below,
                        "valid_from": since,
                    }
                    for f in follows
                ],
            )
        for name, version in (tenant_pins or {}).items():
            pin_of[(t.tenant_id, name)] = str(version)
            bind.execute(
                pins.insert().values(
                    tenant_id=t.tenant_id, model_name=name, version=str(version), valid_from=since
                )
            )
    merged: dict[tuple, dict] = {}
    rows = bind.execute(
        sa.text(
            "SELECT tenant_id, symbol, timeframe, bar_time, horizon, label_kind, probability, model_name, "
            "model_version, scored_at FROM probabilities"
        )
    ).all()
    for r in rows:
        key = (
            r.symbol,
            r.timeframe,
            _utc(r.bar_time),
            r.horizon,
            r.label_kind,
            r.model_name,
            r.model_version,
            (r.tenant_id, r.model_name) not in pin_of,  # its audience: followers or pinned
        )
        followed = key[-1]
        scored = _utc(r.scored_at)
        have = merged.get(key)
        if have is None:
            merged[key] = {
                "symbol": r.symbol,
                "timeframe": r.timeframe,
                "bar_time": key[2],
                "horizon": r.horizon,
                "label_kind": r.label_kind,
                "model_name": r.model_name,
                "model_version": r.model_version,
                "probability": r.probability,
                "followed": followed,
                "bar_closed_at": key[2] + timedelta(seconds=TF_SECONDS.get(r.timeframe, 0)),
                "committed_at": scored,
            }
        else:
            have["committed_at"] = min(have["committed_at"], scored)
    # subscriptions open at the tenant's creation; a legacy row written before it (not possible
    # through the API) would not show: committed_at is never earlier than the tenants' own rows
    ordered = sorted(merged.values(), key=lambda v: (v["committed_at"], v["symbol"], v["bar_time"]))
    if ordered:
        bind.execute(scores.insert(), ordered)


def _postgres_isolation() -> None:
    op.execute(f"GRANT SELECT ON subscriptions, pins TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON scores TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON tenant_results TO {APP_ROLE}")
    op.execute(
        f"""
        DO $$ BEGIN
          EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {APP_ROLE}', current_schema());
        END $$;
        """
    )
    for table in ("subscriptions", "pins"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            "USING (tenant_id = current_setting('app.tenant_id', true)) "
            "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )
    op.execute("ALTER TABLE scores ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE scores FORCE ROW LEVEL SECURITY")
    # a tenant session reads the scores of series it follows (its subscriptions, themselves
    # under the tenant policy); a session acting for no tenant reads all (the live worker)
    op.execute(
        "CREATE POLICY scores_read ON scores FOR SELECT USING ("
        "coalesce(current_setting('app.tenant_id', true), '') = '' OR EXISTS ("
        "SELECT 1 FROM subscriptions sub WHERE sub.tenant_id = current_setting('app.tenant_id', true) "
        f"AND {_SCORE_MATCH}))"
    )
    # only a session acting for no tenant writes scores: a tenant cannot forge one
    op.execute(
        "CREATE POLICY scores_write ON scores FOR INSERT "
        "WITH CHECK (coalesce(current_setting('app.tenant_id', true), '') = '')"
    )


def downgrade() -> None:
    bind = op.get_bind()
    utc = sa.DateTime(timezone=True)
    op.create_table(
        "probabilities",
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("bar_time", utc, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("label_kind", sa.String(32), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("signal", sa.String(8), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("scored_at", utc, nullable=False),
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
    op.create_index("ix_probabilities_latest", "probabilities", ["tenant_id", "bar_time"])
    op.execute(
        "INSERT INTO probabilities SELECT tenant_id, symbol, timeframe, bar_time, horizon, label_kind, "
        "probability, signal, model_name, model_version, scored_at FROM tenant_results "
        "WHERE true ON CONFLICT DO NOTHING"
    )
    op.execute("DROP VIEW tenant_results")
    if bind.dialect.name == "postgresql":
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON probabilities TO {APP_ROLE}")
        op.execute("ALTER TABLE probabilities ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE probabilities FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON probabilities "
            "USING (tenant_id = current_setting('app.tenant_id', true)) "
            "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )
    op.drop_table("pins")
    op.drop_table("subscriptions")
    op.drop_table("scores")
