"""Live workers share the followed symbols through leases.

``worker_heartbeats``: each live worker's last sign of life. ``series_leases``: which worker
holds which symbol, until when. A worker renews its leases well within their time to live; a
worker that dies stops renewing, and another takes its symbols over once they expire. Neither
table holds tenant data (no RLS); the app role reads and writes both.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"


def upgrade() -> None:
    utc = sa.DateTime(timezone=True)
    op.create_table(
        "worker_heartbeats",
        sa.Column("holder", sa.String(64), primary_key=True),
        sa.Column("seen_at", utc, nullable=False),
    )
    op.create_table(
        "series_leases",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", utc, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON worker_heartbeats, series_leases TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("series_leases")
    op.drop_table("worker_heartbeats")
