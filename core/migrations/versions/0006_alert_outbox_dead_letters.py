"""alert outbox and parked dead letters: alerts exactly once per stored row, no letter lost

`alert_outbox` holds the alert of every newly stored alerting row, written in the same
statement as the row itself, until the broker has acknowledged it: a scorer killed
between its database commit and the publish finds the alert here when the batch is
delivered again (or a sweep finds it later) and publishes exactly the stored bytes, so
an alert is never lost and a duplicate, where Kafka's at-least-once makes one
unavoidable, is identical.

`dead_letters` keeps a refused message whose publication to the dead-letter topic kept
failing (bounded retries): the original key and bytes, where it came from (topic,
partition, offset), its kind and reason and the headers it would have carried. The
partition goes on; nothing is lost.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_outbox",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("run_id", "id", name="pk_alert_outbox"),
    )
    op.create_index("ix_alert_outbox_created", "alert_outbox", ["created_at"], unique=False)
    op.create_table(
        "dead_letters",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "parked_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source_topic", sa.Text(), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("headers", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_parked", "dead_letters", ["parked_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_dead_letters_parked", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_alert_outbox_created", table_name="alert_outbox")
    op.drop_table("alert_outbox")
