"""The application role writes audit rows only through ``mt5prob_audit`` (PostgreSQL).

Before, ``mt5prob_app`` had INSERT on ``audit``: row-level security kept it to the session's
tenant, but the row's time and tenant were the caller's to choose. Now the role has SELECT only
and a SECURITY DEFINER function appends the row: the tenant is the session's
(``app.tenant_id``, required), the time must be the database's now (±60 s: the caller seals the
detail bound to that time before the insert), nothing can be updated or deleted by the app.
The admin connection (tenant administration) still inserts directly. SQLite has no roles: the
API is the only writer there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
FN = "mt5prob_audit(text, text, bytea, timestamptz)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION mt5prob_audit(p_actor text, p_action text, p_detail bytea, p_at timestamptz)
        RETURNS void
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER
        AS $$
        DECLARE
          t text := coalesce(current_setting('app.tenant_id', true), '');
        BEGIN
          IF t = '' THEN
            RAISE EXCEPTION 'audit: this session acts for no tenant';
          END IF;
          IF abs(extract(epoch FROM clock_timestamp() - p_at)) > 60 THEN
            RAISE EXCEPTION 'audit: % is not the current time', p_at;
          END IF;
          INSERT INTO audit (tenant_id, actor, action, detail_sealed, at)
          VALUES (t, p_actor, p_action, p_detail, p_at);
        END $$
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
    op.execute(f"REVOKE INSERT, UPDATE, DELETE ON audit FROM {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT INSERT ON audit TO {APP_ROLE}")
        op.execute(f"DROP FUNCTION IF EXISTS {FN}")
