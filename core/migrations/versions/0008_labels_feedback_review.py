"""labels and feedback: every verdict kept, the latest per source, the review queue, the known label

- `label_events`: the append-only history of every verdict (analyst reviews, chargebacks,
  replayed labels), keyed by the verdict's `label_id` (the idempotency key: a redelivered
  verdict never makes a second row). Triggers refuse UPDATE, DELETE and TRUNCATE: nothing
  an analyst decides is ever lost, and each row says who decided (`who`) and, when
  another credential published it, which one (`submitted_by`).
- `feedback`: the latest verdict per `(run_id, transaction_id, source)`, written in the
  statement that stores the event; an older or redelivered verdict never overwrites a
  newer one (`decided_at`, then `label_id`, decide). No foreign key: a verdict may
  arrive before its transaction, and joins it when it arrives (at read time).
- `review_queue`: the live run's alerts without an analyst verdict, kept by triggers (an
  alert joins when its score row is stored, unless an analyst verdict came first; it
  leaves when one is stored), so the queue is read through its own small indexes however
  long the history grows.
- `known_labels_as_of(cutoff)` and the view `known_labels`: THE definition of a
  transaction's known label. The latest analyst or chargeback verdict decided by the
  cutoff; else the latest replayed verdict; else the transaction's inline label.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 10:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SOURCES = "('analyst', 'chargeback', 'replay')"

KNOWN_LABELS_AS_OF = """
CREATE FUNCTION known_labels_as_of(cutoff timestamptz)
RETURNS TABLE (run_id text, id text, label smallint, source text, decided_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT v.run_id, v.transaction_id, v.label, v.source, v.decided_at
    FROM (SELECT DISTINCT ON (e.run_id, e.transaction_id)
                 e.run_id, e.transaction_id, e.label, e.source, e.decided_at
          FROM label_events e
          WHERE e.source IN ('analyst', 'chargeback') AND e.decided_at <= cutoff
          ORDER BY e.run_id, e.transaction_id, e.decided_at DESC, e.label_id DESC) v
    UNION ALL
    SELECT r.run_id, r.transaction_id, r.label, r.source, r.decided_at
    FROM (SELECT DISTINCT ON (e.run_id, e.transaction_id)
                 e.run_id, e.transaction_id, e.label, e.source, e.decided_at
          FROM label_events e
          WHERE e.source = 'replay' AND e.decided_at <= cutoff
            AND NOT EXISTS (SELECT 1 FROM label_events g
                            WHERE g.run_id = e.run_id AND g.transaction_id = e.transaction_id
                              AND g.source IN ('analyst', 'chargeback') AND g.decided_at <= cutoff)
          ORDER BY e.run_id, e.transaction_id, e.decided_at DESC, e.label_id DESC) r
    UNION ALL
    SELECT t.run_id, t.id, t.label, 'replay'::text, NULL::timestamptz
    FROM transactions t
    WHERE t.label IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM label_events g
                      WHERE g.run_id = t.run_id AND g.transaction_id = t.id AND g.decided_at <= cutoff)
$$"""


def _append_only(table: str) -> None:
    op.execute(f"""
CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{table} is append-only (% refused)', TG_OP;
END
$$""")
    op.execute(
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"
    )


def upgrade() -> None:
    op.create_table(
        "label_events",
        sa.Column("label_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.Column("label", sa.SmallInteger(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("who", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("submitted_by", sa.Text(), nullable=True),
        sa.Column(
            "stored_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("label IN (0, 1)", name="ck_label_events_label"),
        sa.CheckConstraint(f"source IN {SOURCES}", name="ck_label_events_source"),
        sa.PrimaryKeyConstraint("label_id", name="pk_label_events"),
    )
    op.create_index(
        "ix_label_events_transaction",
        "label_events",
        ["run_id", "transaction_id", "decided_at"],
        unique=False,
    )
    op.create_index(
        "ix_label_events_source_decided", "label_events", ["run_id", "source", "decided_at"], unique=False
    )
    _append_only("label_events")

    op.create_table(
        "feedback",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("label", sa.SmallInteger(), nullable=False),
        sa.Column("label_id", sa.Text(), nullable=False),
        sa.Column("who", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column(
            "updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("label IN (0, 1)", name="ck_feedback_label"),
        sa.CheckConstraint(f"source IN {SOURCES}", name="ck_feedback_source"),
        sa.PrimaryKeyConstraint("run_id", "transaction_id", "source", name="pk_feedback"),
    )
    op.create_index(
        "ix_feedback_source_decided", "feedback", ["run_id", "source", "decided_at"], unique=False
    )
    op.create_index(
        "ix_feedback_frauds",
        "feedback",
        ["run_id", "source", "decided_at"],
        unique=False,
        postgresql_where=sa.text("label = 1"),
    )

    op.create_table(
        "review_queue",
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("scored_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name="pk_review_queue"),
    )
    op.create_index(
        "ix_review_queue_score",
        "review_queue",
        [sa.text("score DESC"), sa.text("transaction_id DESC")],
        unique=False,
    )
    op.create_index("ix_review_queue_age", "review_queue", ["scored_at", "transaction_id"], unique=False)

    # The queue follows the live run's alerts (scores) and the analysts' verdicts (feedback).
    op.execute("""
CREATE FUNCTION review_queue_follow_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM review_queue q USING old_rows o WHERE o.run_id = '' AND q.transaction_id = o.id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO review_queue (transaction_id, score, scored_at)
        SELECT n.id, n.score, n.scored_at FROM new_rows n
        WHERE n.run_id = '' AND n.alert
          AND NOT EXISTS (SELECT 1 FROM feedback f
                          WHERE f.run_id = '' AND f.transaction_id = n.id AND f.source = 'analyst')
        ON CONFLICT (transaction_id) DO NOTHING;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM review_queue;
    END IF;
    RETURN NULL;
END
$$""")
    for event, tables in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER review_queue_scores_{event.lower()} AFTER {event} ON scores "
            f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION review_queue_follow_scores()"
        )
    op.execute(
        "CREATE TRIGGER review_queue_scores_truncate AFTER TRUNCATE ON scores "
        "FOR EACH STATEMENT EXECUTE FUNCTION review_queue_follow_scores()"
    )
    op.execute("""
CREATE FUNCTION review_queue_follow_feedback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM review_queue q USING new_rows n
    WHERE n.run_id = '' AND n.source = 'analyst' AND q.transaction_id = n.transaction_id;
    RETURN NULL;
END
$$""")
    for event in ("INSERT", "UPDATE"):
        op.execute(
            f"CREATE TRIGGER review_queue_feedback_{event.lower()} AFTER {event} ON feedback "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION review_queue_follow_feedback()"
        )
    # Alerts stored before this migration are waiting for a review too.
    op.execute(
        "INSERT INTO review_queue (transaction_id, score, scored_at) "
        "SELECT id, score, scored_at FROM scores WHERE run_id = '' AND alert"
    )

    op.execute(KNOWN_LABELS_AS_OF)
    op.execute(
        "CREATE VIEW known_labels AS SELECT run_id, id, label, source, decided_at "
        "FROM known_labels_as_of('infinity'::timestamptz)"
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS known_labels")
    op.execute("DROP FUNCTION IF EXISTS known_labels_as_of(timestamptz)")
    for event in ("insert", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS review_queue_feedback_{event} ON feedback")
    for event in ("insert", "delete", "update", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS review_queue_scores_{event} ON scores")
    op.execute("DROP FUNCTION IF EXISTS review_queue_follow_feedback()")
    op.execute("DROP FUNCTION IF EXISTS review_queue_follow_scores()")
    op.drop_index("ix_review_queue_age", table_name="review_queue")
    op.drop_index("ix_review_queue_score", table_name="review_queue")
    op.drop_table("review_queue")
    op.drop_index("ix_feedback_frauds", table_name="feedback")
    op.drop_index("ix_feedback_source_decided", table_name="feedback")
    op.drop_table("feedback")
    op.execute("DROP TRIGGER IF EXISTS label_events_no_truncate ON label_events")
    op.execute("DROP TRIGGER IF EXISTS label_events_append_only ON label_events")
    op.execute("DROP FUNCTION IF EXISTS label_events_append_only()")
    op.drop_index("ix_label_events_source_decided", table_name="label_events")
    op.drop_index("ix_label_events_transaction", table_name="label_events")
    op.drop_table("label_events")
