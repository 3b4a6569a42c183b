"""a run's first and last `scored_at` kept in its `run_totals` row

Every cached read checks its run's watermark (the newest `scored_at`) and `/api/stats` reads
the run's first and last `scored_at` beside its counters. Both were index probes of `scores`:
one per data-day partition, each partition and index locked at every call, so their cost
grew with the days kept (the Live page reads the watermark four times and the totals twice
per refresh).

- `run_totals.first_scored_at`, `last_scored_at`: kept by 0003's trigger on `scores` with the
  counters it already upserts (least / greatest of each statement's rows, so two writers in
  any order agree); a delete re-reads the run's bounds from `scores` (deletes are whole
  backtest runs or hand edits: rare); truncate clears them. Like the counters, they count
  every row stored, so dropping an old day by retention (a partition drop) leaves them: the
  run's first scored row stays the first one it ever scored.
- The rows stored before are read once here.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01 16:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def _counts(rows: str, sign: str) -> str:
    """0003's upsert of the scored and alert counters of transition table `rows`."""
    return (
        f"INSERT INTO run_totals AS r (run_id, scored, alerts) "
        f"SELECT run_id, {sign}count(*), {sign}count(*) FILTER (WHERE alert) FROM {rows} "
        "GROUP BY run_id ORDER BY run_id "
        "ON CONFLICT (run_id) DO UPDATE SET scored = r.scored + EXCLUDED.scored, alerts = r.alerts + EXCLUDED.alerts;"
    )


_REREAD_SPAN = """
        UPDATE run_totals r SET first_scored_at = b.first, last_scored_at = b.last
        FROM (SELECT k.run_id, (SELECT min(s.scored_at) FROM scores s WHERE s.run_id = k.run_id) AS first,
                               (SELECT max(s.scored_at) FROM scores s WHERE s.run_id = k.run_id) AS last
              FROM (SELECT DISTINCT run_id FROM old_rows) k ORDER BY 1) b
        WHERE r.run_id = b.run_id;"""

_TOTALS_SCORES = f"""
CREATE OR REPLACE FUNCTION run_totals_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_totals AS r (run_id, scored, alerts, first_scored_at, last_scored_at)
        SELECT run_id, count(*), count(*) FILTER (WHERE alert), min(scored_at), max(scored_at)
        FROM new_rows GROUP BY run_id ORDER BY run_id
        ON CONFLICT (run_id) DO UPDATE SET
            scored = r.scored + EXCLUDED.scored, alerts = r.alerts + EXCLUDED.alerts,
            first_scored_at = least(r.first_scored_at, EXCLUDED.first_scored_at),
            last_scored_at = greatest(r.last_scored_at, EXCLUDED.last_scored_at);
    ELSIF TG_OP = 'DELETE' THEN
        {_counts("old_rows", "-")}
        {_REREAD_SPAN}
    ELSIF TG_OP = 'UPDATE' THEN
        {_counts("old_rows", "-")}
        {_counts("new_rows", "+")}
        IF EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n ON n.run_id = o.run_id AND n.id = o.id
                   WHERE n.scored_at IS DISTINCT FROM o.scored_at) THEN
            {_REREAD_SPAN}
        END IF;
    ELSE
        UPDATE run_totals SET scored = 0, alerts = 0, first_scored_at = NULL, last_scored_at = NULL;
    END IF;
    RETURN NULL;
END
$$"""

#: 0003's body, for the downgrade.
_TOTALS_SCORES_0003 = f"""
CREATE OR REPLACE FUNCTION run_totals_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_counts("new_rows", "+")}
    ELSIF TG_OP = 'DELETE' THEN
        {_counts("old_rows", "-")}
    ELSIF TG_OP = 'UPDATE' THEN
        {_counts("old_rows", "-")}
        {_counts("new_rows", "+")}
    ELSE
        UPDATE run_totals SET scored = 0, alerts = 0;
    END IF;
    RETURN NULL;
END
$$"""


def upgrade() -> None:
    for name in ("first_scored_at", "last_scored_at"):
        op.add_column("run_totals", sa.Column(name, sa.TIMESTAMP(timezone=True), nullable=True))
    op.execute(_TOTALS_SCORES)
    op.execute(
        "UPDATE run_totals r SET first_scored_at = (SELECT min(s.scored_at) FROM scores s WHERE s.run_id = r.run_id), "
        "last_scored_at = (SELECT max(s.scored_at) FROM scores s WHERE s.run_id = r.run_id)"
    )


def downgrade() -> None:
    op.execute(_TOTALS_SCORES_0003)
    for name in ("last_scored_at", "first_scored_at"):
        op.drop_column("run_totals", name)
