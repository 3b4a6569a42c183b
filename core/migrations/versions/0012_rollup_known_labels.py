"""rollups follow the known label: verdicts (feedback) move counts between classes

The rollups' "class" (migration 0009) was the inline label. It is now the known label of
`known_labels` (0008): the latest analyst or chargeback verdict, else the latest replayed
one, else the inline label, with `feedback` holding the latest verdict per source.

- `rollup_known_classes(run_id, transaction_id, class)`: the class the rollups count a
  transaction under, for every transaction with a verdict (none for the rest: their class
  is the inline label). Kept by the feedback triggers below, so a new score, the inline
  label trigger and the next verdict all know where its counts are without recomputing
  the known label.
- Statement-level AFTER INSERT and AFTER UPDATE triggers on `feedback` (a label statement's
  upsert fires both): for each transaction a statement touched, the new class is the known
  label from `feedback` as it now is; the old one is its `rollup_known_classes` row, else
  its inline label; `rollup_relabel` moves the scored rows' counts between the two, and
  the class is recorded. Each trigger recomputes from the whole current state, so when both
  fire for one statement the second finds nothing left to move; a transaction-scoped
  advisory lock per transaction (taken in key order) serialises two label writers on the
  same transaction, so neither moves counts from a class the other already left.
- New scores are counted under `coalesce(rollup_known_classes.class, inline label)` (a
  verdict may come before its transaction): one primary-key probe per new row.
- An inline label change (`UPDATE transactions SET label`) moves counts only for
  transactions without a verdict.

Existing verdicts are applied once here. Known weakness: a score stored concurrently with
the first verdict on its transaction (neither statement sees the other's row) is counted
under its inline label until the next verdict on it.

Revision ID: 0012
Revises: 0009
Create Date: 2026-11-30 19:30:00
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None


def _rollups_0009():
    """Migration 0009's statement builders (a frozen file beside this one)."""
    spec = importlib.util.spec_from_file_location("rollups_0009", Path(__file__).with_name("0009_rollups.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The known label of (run_id, transaction_id) `k` from `feedback`: reviews and chargebacks
#: first (the latest), else the latest replayed verdict; NULL without any (`known_labels`).
_FEEDBACK_LABEL = """(SELECT f.label FROM feedback f
    WHERE f.run_id = k.run_id AND f.transaction_id = k.transaction_id
    ORDER BY f.source = 'replay', f.decided_at DESC, f.label_id DESC LIMIT 1)"""

#: Move the counts of the transactions `k` (run_id, transaction_id) to their known label's
#: class and record it.
_FOLLOW = f"""
WITH changed AS MATERIALIZED (
    SELECT k.run_id, k.transaction_id, coalesce(c.class, t.label, -1)::int2 AS old_class,
           coalesce({_FEEDBACK_LABEL}, -1)::int2 AS new_class
    FROM ({{keys}}) AS k
    LEFT JOIN rollup_known_classes c ON c.run_id = k.run_id AND c.transaction_id = k.transaction_id
    LEFT JOIN transactions t ON t.run_id = k.run_id AND t.id = k.transaction_id
), recorded AS (
    INSERT INTO rollup_known_classes AS c (run_id, transaction_id, class)
    SELECT run_id, transaction_id, new_class FROM changed ORDER BY 1, 2
    ON CONFLICT (run_id, transaction_id) DO UPDATE SET class = EXCLUDED.class
    WHERE c.class IS DISTINCT FROM EXCLUDED.class
)
SELECT rollup_relabel(array_agg(run_id), array_agg(transaction_id), array_agg(old_class), array_agg(new_class))
FROM changed WHERE old_class IS DISTINCT FROM new_class"""

_INLINE_UPDATE = """
CREATE OR REPLACE FUNCTION rollups_transactions_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rollup_relabel(array_agg(o.run_id), array_agg(o.id), array_agg(o.label), array_agg(n.label))
    FROM old_rows o JOIN new_rows n ON n.run_id = o.run_id AND n.id = o.id
    WHERE o.label IS DISTINCT FROM n.label{verdicts};
    RETURN NULL;
END
$$"""
_WITHOUT_VERDICT = """
      AND NOT EXISTS (SELECT 1 FROM rollup_known_classes c WHERE c.run_id = o.run_id AND c.transaction_id = o.id)"""


def _scores_insert(module, *, known: bool) -> str:
    source = module._NEW_SCORES
    if known:
        source = source.replace(
            "coalesce(t.label, -1)::int2 AS class",
            "coalesce((SELECT c.class FROM rollup_known_classes c "
            "WHERE c.run_id = s.run_id AND c.transaction_id = s.id), t.label, -1)::int2 AS class",
        )
        assert source != module._NEW_SCORES
    body = module._body(module._NEW_VERSIONS, source, labelled_only=False, counted="RETURN NULL;")
    return (
        f"CREATE OR REPLACE FUNCTION rollups_scores_insert() RETURNS trigger LANGUAGE plpgsql AS $${body}$$"
    )


def upgrade() -> None:
    op.create_table(
        "rollup_known_classes",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.Column("class", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "transaction_id", name="pk_rollup_known_classes"),
    )
    op.execute(f"""
CREATE FUNCTION rollups_follow_feedback() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('rollup_known_classes'), hashtext(k.run_id || '/' || k.transaction_id))
    FROM (SELECT DISTINCT run_id, transaction_id FROM new_rows ORDER BY 1, 2) AS k;
    {_FOLLOW.format(keys="SELECT DISTINCT run_id, transaction_id FROM new_rows")} INTO moved;
    RETURN NULL;
END
$$""")
    for event in ("INSERT", "UPDATE"):
        op.execute(
            f"CREATE TRIGGER rollups_feedback_{event.lower()} AFTER {event} ON feedback "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION rollups_follow_feedback()"
        )
    op.execute(_INLINE_UPDATE.format(verdicts=_WITHOUT_VERDICT))
    op.execute(_scores_insert(_rollups_0009(), known=True))
    # the verdicts already stored
    op.execute(_FOLLOW.format(keys="SELECT DISTINCT run_id, transaction_id FROM feedback"))


def downgrade() -> None:
    for event in ("insert", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS rollups_feedback_{event} ON feedback")
    op.execute("DROP FUNCTION IF EXISTS rollups_follow_feedback()")
    # back to the inline labels: each transaction with a verdict moves to its inline class
    op.execute("""
SELECT rollup_relabel(array_agg(c.run_id), array_agg(c.transaction_id), array_agg(c.class),
                      array_agg(coalesce(t.label, -1)::int2))
FROM rollup_known_classes c JOIN transactions t ON t.run_id = c.run_id AND t.id = c.transaction_id
WHERE c.class IS DISTINCT FROM coalesce(t.label, -1)""")
    op.execute(_INLINE_UPDATE.format(verdicts=""))
    op.execute(_scores_insert(_rollups_0009(), known=False))
    op.drop_table("rollup_known_classes")
