"""`alert_keys`: every run's alerts by `scored_at`, outside the day partitions

The alert list (`/api/alerts`, on the Live page's every refresh) pages a run's alerts newest
first by `(scored_at, id)`; the feedback summary joins verdicts to their alert. Both read
`scores`, partitioned by data day, where no day can be skipped (pages go by scoring time), so
each call merged `ix_scores_alerts` over every day partition, and locked every partition and
index of `scores` and `transactions` first (`bench.scale`: the alert page 3.0 -> 12.7 ms p50
from 0.3 M to 10 M rows, 3 to 70 day partitions).

- `alert_keys (run_id, id, day, scored_at)`: one row per alerting score (the scorer's alerts
  are ~0.2 % of its rows), primary key `(run_id, id)`, index `(run_id, scored_at DESC, id
  DESC)`: a page is a range of it, then its rows are read from the partitions of the page's
  days only (`api.queries`).
- Kept by statement triggers on `scores` (every writer, the same statement), as the review
  queue is (0008): insert adds the new alerts, delete removes the deleted rows' keys, update
  moves them (a changed day or time), truncate empties it. Retention's partition drop fires
  no trigger: `core.db.partitions` deletes the dropped day's keys itself.
- The alerts stored before are read once here.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01 17:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_FOLLOW = """
CREATE FUNCTION alert_keys_follow_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM alert_keys k USING old_rows o WHERE o.alert AND k.run_id = o.run_id AND k.id = o.id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO alert_keys (run_id, id, day, scored_at)
        SELECT n.run_id, n.id, n.day, n.scored_at FROM new_rows n WHERE n.alert ORDER BY 1, 2
        ON CONFLICT (run_id, id) DO UPDATE SET day = EXCLUDED.day, scored_at = EXCLUDED.scored_at;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE alert_keys;
    END IF;
    RETURN NULL;
END
$$"""


def upgrade() -> None:
    op.create_table(
        "alert_keys",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("scored_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "id", name="pk_alert_keys"),
    )
    op.create_index(
        "ix_alert_keys_newest",
        "alert_keys",
        ["run_id", sa.literal_column("scored_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    op.execute(_FOLLOW)
    for event, tables in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER alert_keys_scores_{event.lower()} AFTER {event} ON scores "
            f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION alert_keys_follow_scores()"
        )
    op.execute(
        "CREATE TRIGGER alert_keys_scores_truncate AFTER TRUNCATE ON scores "
        "FOR EACH STATEMENT EXECUTE FUNCTION alert_keys_follow_scores()"
    )
    op.execute(
        "INSERT INTO alert_keys (run_id, id, day, scored_at) SELECT run_id, id, day, scored_at FROM scores WHERE alert"
    )


def downgrade() -> None:
    for event in ("insert", "delete", "update", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS alert_keys_scores_{event} ON scores")
    op.execute("DROP FUNCTION IF EXISTS alert_keys_follow_scores()")
    op.drop_index("ix_alert_keys_newest", table_name="alert_keys")
    op.drop_table("alert_keys")
