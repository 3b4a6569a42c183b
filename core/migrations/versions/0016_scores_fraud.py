"""the confirmed-fraud lists read an index in their own order: `scores.fraud` and its partial index

`GET /api/anomalies` and `/api/transactions?label=1` page the run's frauds newest first by
(scored_at, id). The label is a column of `transactions` and the order one of `scores`, so
the only plan was `ix_scores_run_scored` backwards, probing each row's transaction and
keeping the frauds: ~580 rows read per fraud on the Kaggle mix (0.17 % frauds), 363-371 ms
p99 for a page of 100 at 3 M rows (`bench.scale`).

- `scores.fraud bool NOT NULL DEFAULT false`: its transaction's inline label is 1. Written by
  the scorer's store statement (`core.db.store`) with the row; a constant default, so adding
  it rewrites nothing, and the rows stored before are set from `ix_transactions_frauds`
  (the frauds only).
- `ix_scores_frauds (run_id, scored_at DESC, id DESC) WHERE fraud`: a page of frauds is a
  range of it, whatever the history (0.17 % of the rows: small to keep).
- `scores_fraud_follow_label`: a statement trigger after `UPDATE` of `transactions` (an inline
  label corrected by hand) sets the flag of the changed rows' scores, so the flag and the
  label never disagree.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 06:00:00
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_FOLLOW = """
CREATE FUNCTION scores_fraud_follow_label() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE scores s SET fraud = coalesce(n.label = 1, false)
    FROM new_rows n JOIN old_rows o ON o.run_id = n.run_id AND o.id = n.id AND o.day = n.day
    WHERE o.label IS DISTINCT FROM n.label
      AND s.run_id = n.run_id AND s.id = n.id AND s.day = n.day
      AND s.fraud IS DISTINCT FROM coalesce(n.label = 1, false);
    RETURN NULL;
END
$$"""


def upgrade() -> None:
    op.execute("ALTER TABLE scores ADD COLUMN fraud bool NOT NULL DEFAULT false")
    op.execute("""
        UPDATE scores s SET fraud = true FROM transactions t
        WHERE t.label = 1 AND s.run_id = t.run_id AND s.id = t.id AND s.day = t.day""")
    op.execute("CREATE INDEX ix_scores_frauds ON scores (run_id, scored_at DESC, id DESC) WHERE fraud")
    op.execute(_FOLLOW)
    op.execute(
        "CREATE TRIGGER scores_fraud_follow_label AFTER UPDATE ON transactions "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION scores_fraud_follow_label()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER scores_fraud_follow_label ON transactions")
    op.execute("DROP FUNCTION scores_fraud_follow_label()")
    op.execute("DROP INDEX ix_scores_frauds")
    op.execute("ALTER TABLE scores DROP COLUMN fraud")
