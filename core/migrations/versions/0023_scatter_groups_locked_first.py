"""the scatter sample's groups locked first by relabels and deletes, as the scorer's write locks them

Two writers that lock the same rows in opposite orders deadlock (PostgreSQL then aborts one
of them after `deadlock_timeout`). The scorer's write statement (`core.db.store`) upserts a
batch's scatter groups (`scatter_sample_state`, 0022) inside the statement, then the narrow
rollups, and the run's totals row (`run_totals`) in the statement triggers after it. A
relabel (`UPDATE transactions SET label`) took them the other way round: its triggers fire in
name order, so the rollups and the run's totals came first (`rollups_transactions_update`,
`run_totals_transactions_update`) and the groups last (`scores_then_scatter_sample_follow_label`,
which must follow `scores_fraud_follow_label`). A delete of scores or transactions took the
totals row before the groups too. A relabel or a run's delete while the scorer writes into
the same days could deadlock.

`lock_scatter_sample_groups_*`, fired first among the statement's triggers (by its name), now
takes the groups of the days the statement touches, in key order, as the scorer's upsert
does, before any other trigger runs; the triggers of 0022 then find them locked. A relabel
upserts both classes' groups of its days (a group a row moves into may not exist yet, and a
concurrent writer's first row of that group is an insert to wait for, not a row to lock);
0022's settle step deletes those left empty. Tested by holding the groups from a third
connection: each writer must be waiting for them with the totals row still free.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01 19:10:00
"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_RELABELLED_DAYS = """
    SELECT DISTINCT n.run_id, n.day FROM new_rows n
    JOIN old_rows o ON o.run_id = n.run_id AND o.id = n.id AND o.day = n.day
    WHERE o.label IS DISTINCT FROM n.label"""

_FUNCTIONS = (
    f"""
CREATE FUNCTION scatter_sample_lock_relabelled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scatter_sample_state AS g (run_id, day, fraud, total, sampled, threshold)
    SELECT d.run_id, d.day, c.fraud, 0, 0, 1.0
    FROM ({_RELABELLED_DAYS}) d CROSS JOIN (VALUES (false), (true)) AS c(fraud)
    ORDER BY 1, 2, 3
    ON CONFLICT (run_id, day, fraud) DO UPDATE SET total = g.total;
    RETURN NULL;
END
$$""",
    """
CREATE FUNCTION scatter_sample_lock_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM scatter_sample_state g
    WHERE (g.run_id, g.day) IN (SELECT DISTINCT o.run_id, o.day FROM old_rows o)
    ORDER BY g.run_id, g.day, g.fraud FOR UPDATE;
    RETURN NULL;
END
$$""",
)

#: (table, event, trigger, function); the names start `lock_`: before `rollups_*`,
#: `review_queue_*`, `run_totals_*` and `scores_*`, so each fires first.
_TRIGGERS = (
    ("transactions", "UPDATE", "lock_scatter_sample_groups_relabelled", "scatter_sample_lock_relabelled"),
    ("transactions", "DELETE", "lock_scatter_sample_groups_deleted", "scatter_sample_lock_deleted"),
    ("scores", "DELETE", "lock_scatter_sample_groups_deleted", "scatter_sample_lock_deleted"),
)


def upgrade() -> None:
    for function in _FUNCTIONS:
        op.execute(function)
    for table, event, trigger, function in _TRIGGERS:
        transition = (
            "OLD TABLE AS old_rows NEW TABLE AS new_rows" if event == "UPDATE" else "OLD TABLE AS old_rows"
        )
        op.execute(
            f"CREATE TRIGGER {trigger} AFTER {event} ON {table} REFERENCING {transition} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )


def downgrade() -> None:
    for table, _, trigger, _ in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS scatter_sample_lock_relabelled()")
    op.execute("DROP FUNCTION IF EXISTS scatter_sample_lock_deleted()")
