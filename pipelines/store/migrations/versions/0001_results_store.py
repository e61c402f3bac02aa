"""Results store: tenants, probabilities, audit, score watermarks; RLS on PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
TENANT_TABLES = ("tenants", "probabilities", "audit")


def upgrade() -> None:
    utc = sa.DateTime(timezone=True)
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("key_id", sa.String(32), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("follows", sa.JSON, nullable=False),
        sa.Column("long_above", sa.Float, nullable=False),
        sa.Column("short_below", sa.Float, nullable=False),
        sa.Column("pins", sa.JSON, nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("key_rotated_at", utc, nullable=False),
    )
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
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at", utc, nullable=False),
    )
    op.create_index("ix_audit_tenant_at", "audit", ["tenant_id", "at"])
    op.create_table(
        "score_watermarks",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(8), primary_key=True),
        sa.Column("last_bar_time", utc, nullable=False),
        sa.Column("updated_at", utc, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgres_isolation()


def _postgres_isolation() -> None:
    """The app role (no BYPASSRLS) and a policy per tenant table keyed on app.tenant_id,
    forced for the owner too. Key lookup before a tenant is known goes through one
    SECURITY DEFINER function that returns only (tenant_id, key_hash) for one key id."""
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS;
          END IF;
          EXECUTE format('GRANT USAGE ON SCHEMA %I TO {APP_ROLE}', current_schema());
        END $$;
        """
    )
    op.execute(f"GRANT SELECT ON tenants TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON probabilities TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON audit TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON score_watermarks TO {APP_ROLE}")
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            "USING (tenant_id = current_setting('app.tenant_id', true)) "
            "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )
    op.execute(
        """
        CREATE FUNCTION mt5prob_key_lookup(p_key_id text)
        RETURNS TABLE (tenant_id text, key_hash text)
        LANGUAGE sql STABLE SECURITY DEFINER
        AS $$ SELECT t.tenant_id::text, t.key_hash::text FROM tenants t WHERE t.key_id = p_key_id $$
        """
    )
    # which tenants pin a version of a model (no other tenant data): serving's 403 rule
    op.execute(
        """
        CREATE FUNCTION mt5prob_pinned_versions(p_model text)
        RETURNS TABLE (tenant_id text, version text)
        LANGUAGE sql STABLE SECURITY DEFINER
        AS $$ SELECT t.tenant_id::text, (t.pins::jsonb ->> p_model)::text FROM tenants t
              WHERE t.pins::jsonb ? p_model $$
        """
    )
    for fn in ("mt5prob_key_lookup(text)", "mt5prob_pinned_versions(text)"):
        op.execute(
            f"""
            DO $$ BEGIN
              EXECUTE format('ALTER FUNCTION {fn} SET search_path = %I, pg_temp', current_schema());
            END $$;
            """
        )
        op.execute(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS mt5prob_key_lookup(text)")
        op.execute("DROP FUNCTION IF EXISTS mt5prob_pinned_versions(text)")
    op.drop_table("score_watermarks")
    op.drop_table("audit")
    op.drop_table("probabilities")
    op.drop_table("tenants")
