"""scores without the foreign key to transactions

Every scored row cost PostgreSQL a per-row trigger for the foreign key scores →
transactions: an index probe plus a KEY SHARE lock on the transaction row just written,
~40% of the server's CPU per stored row (3.25 → 1.98 CPU s per 100,000 rows). Worse, the
check runs through a plan each session caches: made while `transactions` was new and
empty, it was a sequential scan, so every check read the whole table and a fresh
deployment's writes slowed down as it grew (measured: over 50 CPU s per 100,000 rows).
The key guards nothing the write path does not already guarantee: `store_scored` is the
only writer of both tables and inserts a score in the same statement as its transaction,
only for a transaction that statement stored. Nothing deletes transactions (the cascade
never fired); the run totals triggers count each table's own deletions.

Numbered 0004 (after 0003) so the history stays one line.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:05:00
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("fk_scores_tx", "scores", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(
        "fk_scores_tx", "scores", "transactions", ["run_id", "id"], ["run_id", "id"], ondelete="CASCADE"
    )
