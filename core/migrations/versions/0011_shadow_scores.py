"""shadow scores: the challenger's score of every live row, stored apart from the champion's

When the registry names a shadow, every scorer worker scores each live event with the
champion *and* the shadow. The shadow's score goes here, never into `scores`: it raises no
alert and feeds none of the live analytics. A row is written in the statement that stores
its transaction (same transaction), only for transactions that statement newly stored, so
a redelivered event never makes a second shadow row; the key `(run_id, id)` says so too
(one shadow score per transaction, by the shadow of the moment it was first stored).
Backtest events are never shadow-scored: `run_id` is '' today, kept for the key's shape.

`time` is the transaction's data time, copied so that a comparison reads a window of one
version's shadow rows from one index (`ix_shadow_scores_version_time`), newest first,
without touching the rows outside it.

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-10 10:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_scores",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("recon_error", sa.Double(), nullable=False),
        sa.Column("would_alert", sa.Boolean(), nullable=False),
        sa.Column(
            "scored_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("run_id", "id", name="pk_shadow_scores"),
    )
    op.create_index(
        "ix_shadow_scores_version_time", "shadow_scores", ["run_id", "model_version", "time"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_shadow_scores_version_time", table_name="shadow_scores")
    op.drop_table("shadow_scores")
