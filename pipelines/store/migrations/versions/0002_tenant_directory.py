"""The scoring job's view of tenants on PostgreSQL: what each follows, no keys.

Live scoring runs as the app role (no BYPASSRLS) yet must fan probabilities out to every
tenant; this SECURITY DEFINER function returns the subscription fields of all tenants and
nothing else (no key id, no key hash).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
FN = "mt5prob_tenant_directory()"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION mt5prob_tenant_directory()
        RETURNS TABLE (tenant_id text, name text, follows text, long_above double precision,
                       short_below double precision, pins text, created_at timestamptz)
        LANGUAGE sql STABLE SECURITY DEFINER
        AS $$ SELECT t.tenant_id::text, t.name::text, t.follows::text, t.long_above, t.short_below,
                     t.pins::text, t.created_at FROM tenants t $$
        """
    )
    op.execute(
        f"""
        DO $$ BEGIN
          EXECUTE format('ALTER FUNCTION {FN} SET search_path = %I, pg_temp', current_schema());
        END $$;
        """
    )
    op.execute(f"REVOKE ALL ON FUNCTION {FN} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {FN} TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {FN}")
