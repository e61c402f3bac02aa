"""Tenant data sealed under per-tenant data keys; tenant rows tied to their tenant; erasures kept.

- ``tenants.name`` → ``name_sealed`` (AES-GCM under the tenant's data key, see
  pipelines/store/crypto.py; no digest is kept: it would outlive an erasure in backups);
- ``audit.detail`` → ``detail_sealed``; ``webhooks.url``/``secret`` → ``url_sealed``/``secret_sealed``;
- ``subscriptions``, ``pins``, ``audit`` and ``webhooks`` reference ``tenants`` (ON DELETE
  CASCADE): a row written for a tenant that is being erased fails instead of outliving it;
- ``erasures``: one row per erased tenant — a digest of its id, when, by whom and how many rows
  went — and nothing personal.

Existing values are sealed here with the vault `ResultsStore.migrate` hands over (each existing
tenant gets its data key); orphans of tenants removed earlier are deleted first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
CHILDREN = ("subscriptions", "pins", "audit", "webhooks")
# tenant_results as migration 0003 made it (SQLite only drops and re-creates it around the
# table rebuilds, which would otherwise trip over a view naming a table being swapped)
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


def _iso(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def upgrade() -> None:
    from pipelines.store.crypto import Vault

    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    vault = context.config.attributes.get("vault") or Vault(None)
    if not pg:
        op.execute("DROP VIEW tenant_results")
    for table in CHILDREN:  # rows of tenants that are gone (the old removal could leave some)
        op.execute(f"DELETE FROM {table} WHERE tenant_id NOT IN (SELECT tenant_id FROM tenants)")
    op.add_column("tenants", sa.Column("name_sealed", sa.LargeBinary, nullable=True))
    op.add_column("audit", sa.Column("detail_sealed", sa.LargeBinary, nullable=True))
    op.add_column("webhooks", sa.Column("url_sealed", sa.LargeBinary, nullable=True))
    op.add_column("webhooks", sa.Column("secret_sealed", sa.LargeBinary, nullable=True))

    for t in bind.execute(sa.text("SELECT tenant_id, name FROM tenants")).all():
        vault.new_owner(t.tenant_id)
        vault.claim_name(t.tenant_id, t.name)  # the key store's name index (lookups by name)
        bind.execute(
            sa.text("UPDATE tenants SET name_sealed = :s WHERE tenant_id = :t"),
            {"s": vault.seal_text(t.tenant_id, "tenants", "name", t.tenant_id, t.name), "t": t.tenant_id},
        )
    for a in bind.execute(sa.text("SELECT id, tenant_id, action, detail, at FROM audit")).all():
        row = f"{a.action}|{_iso(a.at)}"
        bind.execute(
            sa.text("UPDATE audit SET detail_sealed = :s WHERE id = :i"),
            {"s": vault.seal_text(a.tenant_id, "audit", "detail", row, a.detail), "i": a.id},
        )
    for w in bind.execute(sa.text("SELECT tenant_id, url, secret FROM webhooks")).all():
        bind.execute(
            sa.text("UPDATE webhooks SET url_sealed = :u, secret_sealed = :s WHERE tenant_id = :t"),
            {
                "u": vault.seal_text(w.tenant_id, "webhooks", "url", w.tenant_id, w.url),
                "s": vault.seal_text(w.tenant_id, "webhooks", "secret", w.tenant_id, w.secret),
                "t": w.tenant_id,
            },
        )

    if pg:  # the directory function returned names; it returns ids and settings only now
        op.execute("DROP FUNCTION IF EXISTS mt5prob_tenant_directory()")
    with op.batch_alter_table("tenants", recreate="always" if not pg else "auto") as batch:
        batch.drop_column("name")
        batch.alter_column("name_sealed", existing_type=sa.LargeBinary, nullable=False)
    with op.batch_alter_table("audit", recreate="always" if not pg else "auto") as batch:
        batch.drop_column("detail")
        batch.alter_column("detail_sealed", existing_type=sa.LargeBinary, nullable=False)
        batch.create_foreign_key(
            "fk_audit_tenant", "tenants", ["tenant_id"], ["tenant_id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("webhooks", recreate="always" if not pg else "auto") as batch:
        batch.drop_column("url")
        batch.drop_column("secret")
        batch.alter_column("url_sealed", existing_type=sa.LargeBinary, nullable=False)
        batch.alter_column("secret_sealed", existing_type=sa.LargeBinary, nullable=False)
        batch.create_foreign_key(
            "fk_webhooks_tenant", "tenants", ["tenant_id"], ["tenant_id"], ondelete="CASCADE"
        )
    for table in ("subscriptions", "pins"):
        with op.batch_alter_table(table, recreate="always" if not pg else "auto") as batch:
            batch.create_foreign_key(
                f"fk_{table}_tenant", "tenants", ["tenant_id"], ["tenant_id"], ondelete="CASCADE"
            )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("subject", sa.String(64), nullable=False),  # sha256 hex of the tenant id
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("counts", sa.Text, nullable=False),  # JSON: rows deleted per table, keys destroyed
    )
    if pg:
        op.execute(
            """
            CREATE FUNCTION mt5prob_tenant_directory()
            RETURNS TABLE (tenant_id text, follows text, long_above double precision,
                           short_below double precision, pins text, created_at timestamptz)
            LANGUAGE sql STABLE SECURITY DEFINER
            AS $$ SELECT t.tenant_id::text, t.follows::text, t.long_above, t.short_below,
                         t.pins::text, t.created_at FROM tenants t $$
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
        "0006 seals tenant data; going back would write it unencrypted: restore a backup instead"
    )
