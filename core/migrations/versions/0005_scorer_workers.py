"""scorer workers: each worker's heartbeat and state, for health that tells the truth

Every scorer worker upserts one row here every few seconds: when it last stored a batch,
how many consumed events are not yet acknowledged, its consumer lag, and whether it
considers itself stalled (and why). The API's `/health` and the dashboard read it, so a
stalled worker shows as degraded wherever anyone looks, on any number of machines,
without the API knowing where the workers' metrics pages are. A row whose heartbeat is
old belongs to a worker that is gone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:20:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scorer_workers",
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "started_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "heartbeat_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_store_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("pending_events", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("assigned_partitions", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lag", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.Text(), server_default=sa.text("'starting'"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("model_version", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('starting', 'ok', 'stalled', 'stopped')", name="ck_scorer_workers_state"
        ),
        sa.PrimaryKeyConstraint("worker_id", name="pk_scorer_workers"),
    )
    op.create_index("ix_scorer_workers_heartbeat", "scorer_workers", ["heartbeat_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_scorer_workers_heartbeat", table_name="scorer_workers")
    op.drop_table("scorer_workers")
