"""The challenger scored in the shadow of the champion on live bars (issue 18).

``shadow_scores``: per live bar of a series whose followed (champion) version has a distinct
``challenger``, both versions' probabilities, sealed together under the platform's data key
(like ``scores``: a dump holds no probability in the clear) and bound to the row's unique key.
They are given to no tenant: on PostgreSQL row-level security lets only a session acting for no
tenant (the live worker, the monitor) read or write them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
NO_TENANT = "coalesce(current_setting('app.tenant_id', true), '') = ''"


def upgrade() -> None:
    utc = sa.DateTime(timezone=True)
    op.create_table(
        "shadow_scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("bar_time", utc, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("label_kind", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("challenger_version", sa.String(32), nullable=False),
        sa.Column("champion_version", sa.String(32), nullable=False),
        sa.Column("probabilities_sealed", sa.LargeBinary, nullable=False),
        sa.Column("bar_closed_at", utc, nullable=False),
        sa.Column("scored_at", utc, nullable=False),
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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT SELECT, INSERT ON shadow_scores TO {APP_ROLE}")
        op.execute(
            f"""
            DO $$ BEGIN
              EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {APP_ROLE}', current_schema());
            END $$;
            """
        )
        op.execute("ALTER TABLE shadow_scores ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE shadow_scores FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY shadow_no_tenant ON shadow_scores USING ({NO_TENANT}) WITH CHECK ({NO_TENANT})"
        )


def downgrade() -> None:
    op.drop_table("shadow_scores")
