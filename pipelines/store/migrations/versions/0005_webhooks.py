"""Per-tenant webhooks, delivered from a durable outbox.

``webhooks``: one row per tenant that wants its results pushed to a URL — the URL, the HMAC
secret the bodies are signed with, and the delivery cursor. The outbox is the tenant's own
stream (the ``tenant_results`` view, ids in commit order): ``delivered_through`` is the last
event id the tenant's endpoint acknowledged, ``pending_through`` the last id of the batch in
flight (a retry sends exactly that range again, so the idempotency key always names the same
body), ``attempts`` the failed attempts of that batch and ``next_attempt_at`` when the next
one is due. One row per tenant, not per event: the outbox costs nothing per result.

Tenant data: row-level security with the tenant policy on PostgreSQL; the dispatcher lists and
advances cursors through the admin connection and reads each tenant's events through that
tenant's own session.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"


def upgrade() -> None:
    utc = sa.DateTime(timezone=True)
    op.create_table(
        "webhooks",
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("delivered_through", sa.BigInteger, nullable=False),
        sa.Column("pending_through", sa.BigInteger, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", utc, nullable=False),
        sa.Column("last_attempt_at", utc, nullable=True),
        sa.Column("last_status", sa.String(300), nullable=True),
        sa.Column("delivered", sa.BigInteger, nullable=False),
        sa.Column("created_at", utc, nullable=False),
    )
    op.create_index("ix_webhooks_due", "webhooks", ["next_attempt_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT SELECT ON webhooks TO {APP_ROLE}")
        op.execute("ALTER TABLE webhooks ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE webhooks FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON webhooks "
            "USING (tenant_id = current_setting('app.tenant_id', true)) "
            "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )


def downgrade() -> None:
    op.drop_table("webhooks")
