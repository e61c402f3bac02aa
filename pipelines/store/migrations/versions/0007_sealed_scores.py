"""Probabilities sealed at rest: ``scores.probability`` → ``probability_sealed``.

Each score is stored once per (series, model version, bar, audience) and belongs to no one tenant
(migration 0003), so it is sealed under the platform's data key (owner ``_platform``), bound to
its row's unique key (series, bar, horizon, label kind, model, version, audience): a dump, a
replica or a backup of the results holds no probability in the clear, and a sealed probability
copied onto another row does not open. A tenant's signal depends on the probability, so the view
``tenant_results`` now hands out the sealed value with the tenant's thresholds of that moment and
the reader opens it and derives the signal (pipelines/store/results.py, the one threshold rule
of models/policy.py). The range check moves to the writer (`ResultsStore.write_scores`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APP_ROLE = "mt5prob_app"
VIEW_SQL = """
SELECT sub.tenant_id, s.symbol, s.timeframe, s.bar_time, s.horizon, s.label_kind, s.probability_sealed,
       sub.long_above, sub.short_below, s.followed,
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
BATCH = 5000


def upgrade() -> None:
    from pipelines.store.crypto import Vault
    from pipelines.store.results import seal_probability

    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    vault = context.config.attributes.get("vault") or Vault(None)
    op.execute("DROP VIEW tenant_results")
    op.add_column("scores", sa.Column("probability_sealed", sa.LargeBinary, nullable=True))
    last = 0
    while True:  # in batches: a store with millions of scores is sealed without holding them all
        rows = bind.execute(
            sa.text(
                "SELECT id, symbol, timeframe, bar_time, horizon, label_kind, model_name, model_version, "
                "followed, probability FROM scores WHERE id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last, "n": BATCH},
        ).all()
        if not rows:
            break
        bind.execute(
            sa.text("UPDATE scores SET probability_sealed = :s WHERE id = :i"),
            [
                {
                    "i": r.id,
                    "s": seal_probability(
                        vault,
                        (r.symbol, r.timeframe, r.bar_time, r.horizon, r.label_kind),
                        r.model_name,
                        r.model_version,
                        bool(r.followed),
                        float(r.probability),
                    ),
                }
                for r in rows
            ],
        )
        last = rows[-1].id
    with op.batch_alter_table("scores", recreate="always" if not pg else "auto") as batch:
        batch.drop_constraint("ck_score_range", type_="check")
        batch.drop_column("probability")
        batch.alter_column("probability_sealed", existing_type=sa.LargeBinary, nullable=False)
    if pg:
        op.execute(f"CREATE VIEW tenant_results WITH (security_invoker = true) AS {VIEW_SQL}")
        op.execute(f"GRANT SELECT ON tenant_results TO {APP_ROLE}")
    else:
        op.execute(f"CREATE VIEW tenant_results AS {VIEW_SQL}")


def downgrade() -> None:
    raise NotImplementedError(
        "0007 seals probabilities; going back would store them unencrypted: restore a backup instead"
    )
