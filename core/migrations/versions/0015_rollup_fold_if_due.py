"""the scorers' periodic fold: one fold per period between them, never one waiting behind another

Sampling `pg_stat_activity` every 50 ms during `bench.stream --phases latency` (2 workers,
2,000 tx/s) showed a scorer backend waiting on the fold's advisory lock 2-8 % of the time:
0014's `FOLD_IF_DUE_SQL` read the watermark's `folded_at` in the statement's snapshot, taken
before the lock, so two workers that looked at about the same time both found a fold due; the
second waited for the first to commit and then folded again (the rows of that wait: a whole
fold's fixed cost for a few rows).

`rollup_fold_if_due(seconds)` only tries the fold's lock (`ROLLUP_FOLD_LOCK`): whoever holds it
(another scorer, a reader folding before it reads, a relabel) is folding or about to be
waited for, so the caller skips; holding it, the function reads `folded_at` in a snapshot taken
after the lock (PL/pgSQL takes one per statement), so a fold that committed meanwhile is seen
and the caller skips. Readers still call `rollup_fold()` (they must include every committed
row, so they wait for the lock).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 04:15:00
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: `core.db.rollups.ROLLUP_FOLD_LOCK` ("fraud" + 2), frozen here.
_LOCK = 0x6672_6175_6402


def upgrade() -> None:
    op.execute(f"""
CREATE FUNCTION rollup_fold_if_due(seconds float8) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    last timestamptz;
BEGIN
    IF NOT pg_try_advisory_xact_lock({_LOCK}) THEN
        RETURN 0;  -- a fold (or a relabel) is running: its rows are taken, or the next look takes them
    END IF;
    SELECT f.folded_at INTO last FROM rollup_fold_state f;
    IF last IS NOT NULL AND last > clock_timestamp() - make_interval(secs => seconds) THEN
        RETURN 0;
    END IF;
    RETURN rollup_fold();
END
$$""")


def downgrade() -> None:
    op.execute("DROP FUNCTION rollup_fold_if_due(float8)")
