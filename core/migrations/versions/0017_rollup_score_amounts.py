"""the savings curve from a rollup: rows and amount per (run, version, known class, score bin)

`GET /api/model/savings` counted every scored row with a known label per score bin, with
its fraud amount, in one pass over the run: 7.1 s at 3 M rows (`bench.scale`), recomputed
every 10 s while anyone watched the Model page. `rollup_histograms` has the rows per score
bin and class but not the amounts (its `total` is the sum of the score), so:

- `rollup_score_amounts`: rows and the sum of `amount` per (run, model version, class, bin of
  `core.bins.SCORE_BINS`); `class` is the known label as in the other rollups (0012: the
  verdict, else the inline label, else -1).
- Kept by the fold (0014) like `rollup_histograms`: `rollup_fold_range` and `rollup_relabel`
  are rebuilt from 0014's statement builders with one more grouped upsert of the rows they
  already read (`_amounts`), so a row is added exactly once, when folded, and moved between
  classes by a verdict like every folded rollup. `rollups_truncate` empties it too.
- Filled here from every score folded so far (under the fold's lock, after a fold: the rows
  below the watermark); later rows are folded by the new functions.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 06:30:00
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def _fold_0014():
    """A private copy of migration 0014's module (its builders are patched below, never shared)."""
    spec = importlib.util.spec_from_file_location(
        "fold_0014", Path(__file__).with_name("0014_rollup_fold.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_OLD = _fold_0014()
_NEW = _fold_0014()
_R = _NEW._R  # 0009's builders
_SCORE_EDGES = _R._edges("score")


def _amounts(*, signed: bool) -> str:
    """The grouped upsert of the statement's rows `r` (one run `rid`, one version `ver`) into
    `rollup_score_amounts`; `sign`-weighted for a relabel (out of the old class, into the new)."""
    sums = "sum(r.sign), sum(r.sign * r.amount)" if signed else "count(*), sum(r.amount)"
    return f"""amounts AS (
    INSERT INTO rollup_score_amounts AS a (run_id, model_version, class, bin, n, amount)
    SELECT rid, ver, r.class, width_bucket(r.score, {_SCORE_EDGES})::int2, {sums}
    FROM r GROUP BY 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, model_version, class, bin)
    DO UPDATE SET n = a.n + EXCLUDED.n, amount = a.amount + EXCLUDED.amount
)"""


_END = "\nSELECT count(*) FROM r"
_folded_0014 = _NEW._folded


def _folded(source: str, *, signed: bool) -> str:
    """0014's statement with the amounts added (the same rows `r`, one more CTE)."""
    statement = _folded_0014(source, signed=signed)
    assert statement.endswith(_END), statement[-200:]
    return statement[: -len(_END)] + ",\n" + _amounts(signed=signed) + _END


_NEW._folded = _folded  # `_version_loop` (and so `_relabel`) build with it from here on


def _fold_range(module) -> str:
    """`rollup_fold_range` as `module` builds it (0014's text, replacing the function)."""
    return f"""
CREATE OR REPLACE FUNCTION rollup_fold_range(lo xid8, hi xid8, only_day int4) RETURNS bigint
LANGUAGE plpgsql {module._REPLANNED} AS $$
DECLARE
{module._DECLARE}
BEGIN
{module._version_loop(module._RANGE_VERSIONS, module._RANGE_SCORES, signed=False)}
    RETURN total;
END
$$"""


def _truncate(tables: tuple[str, ...]) -> str:
    return f"""
CREATE OR REPLACE FUNCTION rollups_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE {", ".join(tables)};
    RETURN NULL;
END
$$"""


#: Every score folded so far (xid below the watermark; 0 for rows the trigger counted before 0014).
_FILL = f"""
INSERT INTO rollup_score_amounts (run_id, model_version, class, bin, n, amount)
SELECT s.run_id, s.model_version, {_NEW._CLASS}, width_bucket(s.score, {_SCORE_EDGES})::int2,
       count(*), sum(t.amount)
FROM scores s JOIN transactions t ON t.run_id = s.run_id AND t.id = s.id AND t.day = s.day
WHERE s.xid < (SELECT f.folded_below FROM rollup_fold_state f)
GROUP BY 1, 2, 3, 4"""


def upgrade() -> None:
    op.execute("""
CREATE TABLE rollup_score_amounts (
    run_id text NOT NULL,
    model_version text NOT NULL,
    class int2 NOT NULL,
    bin int2 NOT NULL,
    n bigint NOT NULL,
    amount float8 NOT NULL,
    CONSTRAINT pk_rollup_score_amounts PRIMARY KEY (run_id, model_version, class, bin)
)""")
    # the fold's lock is held from here to the commit: no fold or relabel runs with the old
    # functions between the fill and the new ones
    op.execute("SELECT rollup_fold()")
    op.execute(_FILL)
    op.execute(_fold_range(_NEW))
    op.execute(_NEW._relabel())
    op.execute(_truncate((*_R._ROLLUPS, "rollup_score_amounts")))


def downgrade() -> None:
    op.execute("SELECT rollup_fold()")
    op.execute(_fold_range(_OLD))
    op.execute(_OLD._relabel())
    op.execute(_truncate(_R._ROLLUPS))
    op.execute("DROP TABLE rollup_score_amounts")
