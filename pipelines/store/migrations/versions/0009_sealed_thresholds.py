"""A tenant's thresholds sealed under its data key, in its settings and in its subscription history.

``tenants.long_above``/``short_below`` → ``thresholds_sealed`` and the same in ``subscriptions``
(JSON ``[long_above, short_below]``, AES-GCM under the tenant's key, bound to the tenant row or
to the subscription row's natural key: series and valid_from). The thresholds are the tenant's
own trading policy; once its keys are destroyed, a backup's subscription rows say only that an
unknown id followed a series over a time span. The view ``tenant_results`` hands the reader the
sealed thresholds with the subscription's valid_from; the reader opens them (once per
subscription) and derives the signal. The scoring directory (PostgreSQL function) no longer
returns thresholds: live scoring never used them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import json

import sqlalchemy as sa
from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
VIEW_SQL = """
SELECT sub.tenant_id, s.symbol, s.timeframe, s.bar_time, s.horizon, s.label_kind, s.probability_sealed,
       sub.valid_from AS subscription_from, sub.thresholds_sealed, s.followed,
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


def upgrade() -> None:
    from pipelines.store.crypto import Vault
    from pipelines.store.results import subscription_row_key

    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    vault = context.config.attributes.get("vault") or Vault(None)
    op.execute("DROP VIEW tenant_results")
    if pg:
        op.execute("DROP FUNCTION IF EXISTS mt5prob_tenant_directory()")
    for table in ("tenants", "subscriptions"):
        op.add_column(table, sa.Column("thresholds_sealed", sa.LargeBinary, nullable=True))
    for t in bind.execute(sa.text("SELECT tenant_id, long_above, short_below FROM tenants")).all():
        value = json.dumps([t.long_above, t.short_below]).encode()
        bind.execute(
            sa.text("UPDATE tenants SET thresholds_sealed = :s WHERE tenant_id = :t"),
            {"s": vault.seal(t.tenant_id, "tenants", "thresholds", t.tenant_id, value), "t": t.tenant_id},
        )
    subs = bind.execute(
        sa.text(
            "SELECT id, tenant_id, symbol, timeframe, horizon, label_kind, valid_from, long_above, "
            "short_below FROM subscriptions"
        )
    ).all()
    for r in subs:
        value = json.dumps([r.long_above, r.short_below]).encode()
        key = subscription_row_key(r.symbol, r.timeframe, r.horizon, r.label_kind, r.valid_from)
        bind.execute(
            sa.text("UPDATE subscriptions SET thresholds_sealed = :s WHERE id = :i"),
            {"s": vault.seal(r.tenant_id, "subscriptions", "thresholds", key, value), "i": r.id},
        )
    for table in ("tenants", "subscriptions"):
        # native DROP COLUMN, not a table rebuild: on SQLite, rebuilding ``tenants`` (dropping
        # the old table) would cascade-delete every row that references it
        op.execute(f"ALTER TABLE {table} DROP COLUMN long_above")
        op.execute(f"ALTER TABLE {table} DROP COLUMN short_below")
        if pg:  # SQLite cannot add NOT NULL in place; the store always writes the column
            op.execute(f"ALTER TABLE {table} ALTER COLUMN thresholds_sealed SET NOT NULL")
    if pg:
        op.execute(f"CREATE VIEW tenant_results WITH (security_invoker = true) AS {VIEW_SQL}")
        op.execute(f"GRANT SELECT ON tenant_results TO {APP_ROLE}")
        op.execute(
            """
            CREATE FUNCTION mt5prob_tenant_directory()
            RETURNS TABLE (tenant_id text, follows text, pins text, created_at timestamptz)
            LANGUAGE sql STABLE SECURITY DEFINER
            AS $$ SELECT t.tenant_id::text, t.follows::text, t.pins::text, t.created_at FROM tenants t $$
            """
        )
        fn = "mt5prob_tenant_directory()"
        op.execute(
            f"""
            DO $$ BEGIN
              EXECUTE format('ALTER FUNCTION {fn} SET search_path = %I, pg_temp', current_schema());
            END $$;
            """
        )
        op.execute(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {APP_ROLE}")
    else:
        op.execute(f"CREATE VIEW tenant_results AS {VIEW_SQL}")


def downgrade() -> None:
    raise NotImplementedError(
        "0009 seals thresholds; going back would store them unencrypted: restore a backup instead"
    )
