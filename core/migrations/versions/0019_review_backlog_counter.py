"""the review backlog as a counter, and a queue that never keeps a reviewed alert

`GET /api/feedback/summary` (on the Live page's every refresh) counted the backlog as the
queue's rows without an analyst verdict: a pass over `review_queue` probing `feedback` per
row, O(unreviewed alerts) — 5.6 -> 23.4 ms p50 from 0.3 M to 10 M stored rows in
`bench.scale` (15k queued alerts). The verdict check was there because the queue could keep a
reviewed alert: a verdict stored while its alert was being written saw no queued row to
delete, and the alert's write saw no verdict yet (neither saw the other's uncommitted row).

- `run_totals.backlog`: the rows of `review_queue`, kept by statement triggers on the queue
  itself (added on insert, subtracted on delete, zeroed on truncate), so every path that
  changes the queue (a score's write, a verdict, a relabel, retention's delete of a dropped
  day) keeps it, and reading it is one primary-key probe. It lives in the live run's row.
- The race closed: both sides lock the live run's `run_totals` row before they look at the
  other's table (a new snapshot per statement in READ COMMITTED, so the second one to get
  the lock sees what the first committed): the alert's write before its queue insert checks
  for a verdict, the verdict before its queue delete. The scorer's batch locked that row
  anyway (its scored and alert counts, 0003), so scorer batches contend no more than before.
- Lock order, so no deadlock: a verdict's statement runs `rollups_feedback_*` first (rollup
  rows of the transaction's minute and hour, which a scorer batch may hold) and takes the
  `run_totals` row only after, as the scorer's write does (its rollup rows in the statement,
  the row in its triggers). PostgreSQL fires a table's triggers in name order, so the
  feedback triggers of the queue are renamed `then_review_queue_feedback_*` (after
  `rollups_feedback_*`; they fired before it).
- Rows already queued with a verdict (left by the race) are deleted, and the counter set.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

#: Take the live run's totals row (made if missing) before reading the other side's table.
_LOCK_LIVE_TOTALS = """INSERT INTO run_totals (run_id) VALUES ('') ON CONFLICT (run_id) DO NOTHING;
            PERFORM 1 FROM run_totals WHERE run_id = '' FOR UPDATE;"""


def _follow_scores(lock: str) -> str:
    """The queue's trigger on `scores`; `lock` taken before the verdict check (0008: none)."""
    return f"""
CREATE OR REPLACE FUNCTION review_queue_follow_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM review_queue q USING old_rows o WHERE o.run_id = '' AND q.transaction_id = o.id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN  -- nested: `new_rows` exists for these only
        IF EXISTS (SELECT 1 FROM new_rows n WHERE n.run_id = '' AND n.alert) THEN
            {lock}
            INSERT INTO review_queue (transaction_id, score, scored_at)
            SELECT n.id, n.score, n.scored_at FROM new_rows n
            WHERE n.run_id = '' AND n.alert
              AND NOT EXISTS (SELECT 1 FROM feedback f
                              WHERE f.run_id = '' AND f.transaction_id = n.id AND f.source = 'analyst')
            ON CONFLICT (transaction_id) DO NOTHING;
        END IF;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM review_queue;
    END IF;
    RETURN NULL;
END
$$"""


def _follow_feedback(lock: str) -> str:
    """The queue's trigger on `feedback`; `lock` taken before the queue is read (0008: none)."""
    return f"""
CREATE OR REPLACE FUNCTION review_queue_follow_feedback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.run_id = '' AND n.source = 'analyst') THEN
        {lock}
        DELETE FROM review_queue q USING new_rows n
        WHERE n.run_id = '' AND n.source = 'analyst' AND q.transaction_id = n.transaction_id;
    END IF;
    RETURN NULL;
END
$$"""


_COUNT_QUEUE = """
CREATE FUNCTION review_queue_backlog() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_totals AS r (run_id, backlog) SELECT '', count(*) FROM new_rows HAVING count(*) > 0
        ON CONFLICT (run_id) DO UPDATE SET backlog = r.backlog + EXCLUDED.backlog;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE run_totals SET backlog = backlog - d.n
        FROM (SELECT count(*) AS n FROM old_rows) d WHERE run_id = '' AND d.n > 0;
    ELSE
        UPDATE run_totals SET backlog = 0 WHERE run_id = '';
    END IF;
    RETURN NULL;
END
$$"""


def _feedback_triggers(prefix: str) -> list[str]:
    return [
        f"CREATE TRIGGER {prefix}_{event.lower()} AFTER {event} ON feedback "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION review_queue_follow_feedback()"
        for event in ("INSERT", "UPDATE")
    ]


def upgrade() -> None:
    op.add_column(
        "run_totals", sa.Column("backlog", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.execute(_follow_scores(_LOCK_LIVE_TOTALS))
    op.execute(_follow_feedback(_LOCK_LIVE_TOTALS))
    for event in ("insert", "update"):
        op.execute(f"DROP TRIGGER review_queue_feedback_{event} ON feedback")
    for statement in _feedback_triggers("then_review_queue_feedback"):
        op.execute(statement)
    op.execute(_COUNT_QUEUE)
    for event, tables in (("INSERT", "NEW TABLE AS new_rows"), ("DELETE", "OLD TABLE AS old_rows")):
        op.execute(
            f"CREATE TRIGGER review_queue_backlog_{event.lower()} AFTER {event} ON review_queue "
            f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION review_queue_backlog()"
        )
    op.execute(
        "CREATE TRIGGER review_queue_backlog_truncate AFTER TRUNCATE ON review_queue "
        "FOR EACH STATEMENT EXECUTE FUNCTION review_queue_backlog()"
    )
    # what the race left, then the count of what remains
    op.execute(
        "DELETE FROM review_queue q USING feedback f "
        "WHERE f.run_id = '' AND f.source = 'analyst' AND f.transaction_id = q.transaction_id"
    )
    op.execute("INSERT INTO run_totals (run_id) VALUES ('') ON CONFLICT (run_id) DO NOTHING")
    op.execute("UPDATE run_totals SET backlog = (SELECT count(*) FROM review_queue) WHERE run_id = ''")


def downgrade() -> None:
    for event in ("insert", "delete", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS review_queue_backlog_{event} ON review_queue")
    op.execute("DROP FUNCTION IF EXISTS review_queue_backlog()")
    for event in ("insert", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS then_review_queue_feedback_{event} ON feedback")
    for statement in _feedback_triggers("review_queue_feedback"):
        op.execute(statement)
    # 0008's behaviour: the same bodies without the lock
    op.execute(_follow_feedback(""))
    op.execute(_follow_scores(""))
    op.drop_column("run_totals", "backlog")
