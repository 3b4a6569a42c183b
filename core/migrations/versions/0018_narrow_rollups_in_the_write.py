"""the narrow rollups kept by the write statement itself, not by a trigger on `scores`

`rollups_scores_insert()` (0009, last rebuilt by 0014) added each statement's new scores to
`rollup_minutes`, `rollup_hours` and `rollup_latency`. It needed each score's transaction
(data hour, inline label), so it probed `transactions` per row, and since a cached plan once
outlived a new day's empty partition (0014) it was planned at every call: over every run's
and every day's partition. At the stream's ~20-row batches that planning was most of its
cost, and it grew with the days kept: in `bench.scale` the write with the rollups at 20-row
batches cost 1.80x at 10 M rows (70 day partitions) what it cost at 0.3 M (3), the
rollup-free write 1.12x). Pruning the probe to the batch's days at planning was tried first
and left out: a day's partition filling up but not analyzed yet looks empty to the planner,
which then probed it through the wrong index, scanning the day's rows for every new row.

The write statement (`core.db.store`) has every input the trigger looked up: it now upserts
the three rollups from the scores it inserted (`RETURNING`) and its own input arrays, in the
same statement, grouped and ordered as the trigger did. Same transaction, same rows (a
redelivered row is not inserted, so not counted), same class (0012: the verdict stored
before the row, else the inline label, else -1), no probe and no per-call planning: the
statement is prepared once per connection. `core.db.store` is the only writer of `scores`.

This migration drops the trigger and its function. Written rows stay counted; rows written
by the new statement are counted by it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 11:00:00
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def _fold_0014():
    """A private copy of migration 0014's module (its trigger function, for the downgrade)."""
    spec = importlib.util.spec_from_file_location(
        "fold_0014_for_0018", Path(__file__).with_name("0014_rollup_fold.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS rollups_scores_insert ON scores")
    op.execute("DROP FUNCTION IF EXISTS rollups_scores_insert()")


def downgrade() -> None:
    op.execute(_fold_0014()._scores_insert())
    op.execute(
        "CREATE TRIGGER rollups_scores_insert AFTER INSERT ON scores REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION rollups_scores_insert()"
    )
