"""the wide rollups leave the write statement: a set-based fold of the scores stored since the last one

Measured on a quiet machine at the stream's batch size (~20 rows), the statement trigger of
0009 cost PostgreSQL 187.6 CPU s per 100k events against 12.0 without it: each batch
upserted about 60 rollup rows per event in `rollup_histograms`, `rollup_drift` and
`rollup_score_hours` (one per touched quantity, class and bin). Those three are now filled
by a fold that groups everything stored since the previous fold at once; the trigger keeps
only the rollups with few rows per batch (`rollup_minutes`, `rollup_hours`,
`rollup_latency`; `run_totals` is 0003's), so `/api/stats` and the time series stay exact
the moment a write commits.

- `scores.xid xid8 DEFAULT pg_current_xact_id()` (indexed): the top-level transaction that
  inserted the row (a redelivered row is never inserted, so it has none and is never
  folded). Rows stored before this migration get 0: the trigger counted them already.
- `rollup_fold_state` (one row): `folded_below` = W, every score with xid < W is folded.
- `rollup_fold()`: under the exclusive transaction-scoped advisory lock `ROLLUP_FOLD_LOCK`,
  S = `pg_snapshot_xmin(pg_current_snapshot())`: every transaction below S has ended, so
  the scores with W <= xid < S are all visible, none can still appear (a transaction gets an
  xid >= the next unassigned one, which is >= S), and rows of transactions still open have
  xid >= S: they wait for a later fold. Those rows are grouped as 0009's `_apply` did (one
  grouped pass per quantity, per run and model version) and added; then W = S. The watermark
  row is read `FOR UPDATE`, so a fold in a REPEATABLE READ transaction whose snapshot predates
  another fold's commit fails (serialization) instead of folding twice. Returns rows folded.
- `rollup_relabel` moves `rollup_minutes`/`rollup_hours` for every scored row as before, but
  the folded rollups only for rows already folded (xid < W), under the shared form of the
  same lock: a fold waits for the label writer to commit (and then reads the new class), a
  label writer waits for a running fold (and then reads the new W, `FOR SHARE`: in a
  REPEATABLE READ transaction a W moved since its snapshot is a serialization failure, not a
  stale W). A row relabelled before its fold is counted once, in the class it has when folded.
- `rollup_fold_day(day)`: the pre-drop fold of a live data day (`core.db.partitions`): with
  the day's partitions locked by the caller, every not yet folded score of that day is
  folded (none can be open), so retention never loses counts. It only tries the fold lock
  (55P03 if a fold holds it: the drop is tried again at the next pass, never a deadlock).
- TRUNCATE still empties every rollup; the watermark stays (later rows have later xids).
- The trigger, the fold and the relabel are planned at every call (`plan_cache_mode =
  force_custom_plan`; the trigger's statement gets a parameter for it): a plan cached while a
  day's partition was empty and not analyzed probed it through its (run_id, time) index, a
  scan of the whole day's rows per new row (375 CPU s per 100k at 20-row batches from an
  empty database, until autovacuum analyzed the partition).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 03:00:00
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

#: `core.db.rollups.ROLLUP_FOLD_LOCK` ("fraud" + 2), frozen here.
_LOCK = 0x6672_6175_6402
#: The largest xid8: "no upper bound" for `rollup_fold_day`.
_XID8_MAX = "'18446744073709551615'::xid8"


def _rollups_0009():
    """Migration 0009's statement builders (a frozen file beside this one)."""
    spec = importlib.util.spec_from_file_location("rollups_0009", Path(__file__).with_name("0009_rollups.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_R = _rollups_0009()

#: The class a score counts under: its transaction's verdict (0012), else the inline label.
_CLASS = (
    "coalesce((SELECT c.class FROM rollup_known_classes c "
    "WHERE c.run_id = s.run_id AND c.transaction_id = s.id), t.label, -1)::int2"
)

#: A score's transaction through its primary key, in its day's partition only (0013).
_PROBE = """CROSS JOIN LATERAL (
    SELECT {columns}, t.label FROM transactions t
    WHERE t.run_id = {run} AND t.id = {id} AND t.day = s.day OFFSET 0) AS t"""

#: The functions that probe transactions per row are planned at every call, with the tables'
#: sizes of the moment. A plan cached while a day's partition was new (empty, not analyzed)
#: costs its (run_id, time) indexes the same as its primary key, and the probe then scanned
#: the whole run's day for each row (~0.4 ms a row at 2,000 rows, growing with the day) until
#: autovacuum analyzed it: the stream's first minutes, and every new day's.
_REPLANNED = "SET plan_cache_mode = force_custom_plan"


# --------------------------------------------------------------------------- the write trigger


def _scores_insert() -> str:
    """The statement trigger after this migration: minutes, hours and latency only, one statement,
    grouped by (run, version) directly (no reference edges needed)."""
    minute = _R._MINUTE
    return f"""
CREATE OR REPLACE FUNCTION rollups_scores_insert() RETURNS trigger LANGUAGE plpgsql {_REPLANNED} AS $$
DECLARE
    planned bool := true;  -- a parameter: PL/pgSQL plans a statement without one only once
BEGIN
    WITH r AS MATERIALIZED (
        SELECT s.run_id, s.model_version, s.alert, s.scored_at, s.latency_ms,
               floor(t.time / 3600)::int4 AS hour, {_CLASS} AS class
        FROM new_rows s {_PROBE.format(columns="t.time", run="s.run_id", id="s.id")}
        WHERE planned
    ), minutes AS (
        INSERT INTO rollup_minutes AS m (run_id, minute, model_version, class, scored, alerts)
        SELECT r.run_id, {minute}, r.model_version, r.class, count(*), count(*) FILTER (WHERE r.alert)
        FROM r GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (run_id, minute, model_version, class)
        DO UPDATE SET scored = m.scored + EXCLUDED.scored, alerts = m.alerts + EXCLUDED.alerts
    ), hours AS (
        INSERT INTO rollup_hours AS h (run_id, hour, model_version, class, scored, alerts)
        SELECT r.run_id, r.hour, r.model_version, r.class, count(*), count(*) FILTER (WHERE r.alert)
        FROM r GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (run_id, hour, model_version, class)
        DO UPDATE SET scored = h.scored + EXCLUDED.scored, alerts = h.alerts + EXCLUDED.alerts
    )
    INSERT INTO rollup_latency AS l (run_id, minute, bin, n)
    SELECT r.run_id, {minute}, width_bucket(r.latency_ms, {_R._edges("latency_ms")})::int2, count(*)
    FROM r WHERE r.latency_ms IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (run_id, minute, bin) DO UPDATE SET n = l.n + EXCLUDED.n;
    RETURN NULL;
END
$$"""


# --------------------------------------------------------------------------- the folded rollups


def _folded(source: str, *, signed: bool) -> str:
    """One statement adding the rows of `source` (one run `rid`, one version `ver`) to the folded
    rollups: histograms and in-sample score hours, and (unless `signed`, a relabel) drift.

    0009's `_apply` with the trigger-kept rollups taken out: one grouped pass per quantity
    (`_grouped`), whose groups feed the histograms and the drift counts; every upsert
    grouped and ordered (concurrent writers lock rollup rows in one order). `SELECT count(*)`
    of the source ends it (rows folded, or twice the rows moved by a relabel)."""
    sums = _R._sums(None, signed=signed)
    union = "\n    UNION ALL ".join(
        _R._grouped(i, name, drift=not signed) for i, name in enumerate(_R._QUANTITIES, start=1)
    )
    parts = [
        f"r AS MATERIALIZED (SELECT x.*, floor(x.time / 3600)::int4 AS hour FROM ({source}) AS x)",
        f"g (qi, class, bin, hour, dbin, n, alerts, total, alert_total) AS MATERIALIZED (\n    {union}\n)",
        f"""histograms AS (
    INSERT INTO rollup_histograms AS h (run_id, quantity, model_version, class, bin, n, alerts, total, alert_total)
    SELECT rid, ({_R._NAMES})[g.qi], ver, g.class, g.bin, sum(g.n), sum(g.alerts), sum(g.total), sum(g.alert_total)
    FROM g GROUP BY g.qi, g.class, g.bin
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (run_id, quantity, model_version, class, bin)
    DO UPDATE SET n = h.n + EXCLUDED.n, alerts = h.alerts + EXCLUDED.alerts, total = h.total + EXCLUDED.total,
                  alert_total = h.alert_total + EXCLUDED.alert_total
)""",
        f"""score_hours AS (
    INSERT INTO rollup_score_hours AS h (run_id, model_version, hour, class, bin, n, alerts)
    SELECT rid, ver, r.hour, r.class, width_bucket(r.score, {_R._edges("score")})::int2, {sums}
    FROM r WHERE r.hour >= in_from AND r.hour <= in_to
    GROUP BY 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (run_id, model_version, hour, class, bin)
    DO UPDATE SET n = h.n + EXCLUDED.n, alerts = h.alerts + EXCLUDED.alerts
)""",
    ]
    if not signed:
        parts.append(f"""drift AS (
    INSERT INTO rollup_drift AS d (run_id, model_version, hour, quantity, bin, n)
    SELECT rid, ver, g.hour, ({_R._NAMES})[g.qi], g.dbin, sum(g.n)
    FROM g WHERE g.dbin IS NOT NULL
    GROUP BY g.hour, g.qi, g.dbin
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (run_id, model_version, hour, quantity, bin) DO UPDATE SET n = d.n + EXCLUDED.n
)""")
    return "WITH " + ",\n".join(parts) + "\nSELECT count(*) FROM r"


def _version_loop(versions: str, source: str, *, signed: bool) -> str:
    """For each (run, version) among `versions`: its reference edges and in-sample hours into
    variables (read once), then `_folded` over its rows; `total` sums the counts."""
    edges = ", ".join(
        f"(SELECT mb.edges FROM model_reference_bins mb WHERE mb.version = ver AND mb.quantity = '{name}')"
        for name in _R._QUANTITIES
    )
    into = ", ".join(f"e_{name}" for name in _R._QUANTITIES)
    hour = "CASE WHEN jsonb_typeof(ins -> '{0}') = 'number' THEN floor((ins ->> '{0}')::float8 / 3600) END"
    return f"""
    FOR rid, ver IN {versions} LOOP
        SELECT {edges} INTO {into};
        ins := (SELECT m.manifest -> 'training' -> 'data' -> 'in_sample' FROM model_versions m WHERE m.version = ver);
        in_from := {hour.format("time_from")};
        in_to := {hour.format("time_to")};
        {_folded(source, signed=signed)} INTO n;
        total := total + coalesce(n, 0);
    END LOOP;"""


_DECLARE = "\n".join(
    [
        "    rid text;",
        "    ver text;",
        "    ins jsonb;",
        "    in_from int4;",
        "    in_to int4;",
        "    n bigint;",
        "    total bigint := 0;",
        *(f"    e_{name} float8[];" for name in _R._QUANTITIES),
    ]
)

_COLUMNS = f"s.run_id, s.alert, s.scored_at, s.latency_ms, s.recon_error, s.score, {_R._T_COLUMNS}"

#: Scores with lo <= xid < hi (of one day of the live run, if `only_day` is set), per (rid, ver).
_RANGE = "s.xid >= lo AND s.xid < hi AND (only_day IS NULL OR (s.run_id = '' AND s.day = only_day))"
_RANGE_SCORES = f"""
SELECT {_COLUMNS}, {_CLASS} AS class, 1 AS sign
FROM scores s {_PROBE.format(columns=_R._T_COLUMNS, run="s.run_id", id="s.id")}
WHERE {_RANGE} AND s.run_id = rid AND s.model_version = ver"""
_RANGE_VERSIONS = f"SELECT DISTINCT s.run_id, s.model_version FROM scores s WHERE {_RANGE}"

_FOLD_RANGE = f"""
CREATE FUNCTION rollup_fold_range(lo xid8, hi xid8, only_day int4) RETURNS bigint LANGUAGE plpgsql {_REPLANNED} AS $$
DECLARE
{_DECLARE}
BEGIN
{_version_loop(_RANGE_VERSIONS, _RANGE_SCORES, signed=False)}
    RETURN total;
END
$$"""

_FOLD = f"""
CREATE FUNCTION rollup_fold() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    w xid8;
    s xid8;
    folded bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK});
    s := pg_snapshot_xmin(pg_current_snapshot());
    SELECT f.folded_below INTO w FROM rollup_fold_state f FOR UPDATE;
    IF s <= w THEN
        RETURN 0;
    END IF;
    folded := rollup_fold_range(w, s, NULL);
    UPDATE rollup_fold_state SET folded_below = s, folded_at = clock_timestamp(), rows = rows + folded;
    RETURN folded;
END
$$"""

_FOLD_DAY = f"""
CREATE FUNCTION rollup_fold_day(day int4) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    w xid8;
    folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock({_LOCK}) THEN
        RAISE EXCEPTION 'a rollup fold is running: data day % is dropped at the next pass', day
            USING ERRCODE = 'lock_not_available';
    END IF;
    SELECT f.folded_below INTO w FROM rollup_fold_state f FOR UPDATE;
    folded := rollup_fold_range(w, {_XID8_MAX}, day);
    UPDATE rollup_fold_state SET rows = rows + folded;
    RETURN folded;
END
$$"""


# --------------------------------------------------------------------------- relabels


#: The changed rows (0009's `_CHANGED`), each twice: out of its old class, into its new one.
_SIGNS = """CROSS JOIN LATERAL (VALUES (coalesce(k.old_label, -1)::int2, -1),
                            (coalesce(k.new_label, -1)::int2, 1)) AS c(class, sign)"""
_CHANGED_ROWS = f"""{_R._CHANGED}
{_PROBE.format(columns=_R._T_COLUMNS, run="k.run_id", id="k.id")}
{_SIGNS}
WHERE k.old_label IS DISTINCT FROM k.new_label"""

#: Folded rollups: only rows folded already (xid < w); the fold counts the others in their new class.
_RELABELLED_FOLDED = f"""
SELECT {_COLUMNS}, c.class, c.sign {_CHANGED_ROWS} AND s.xid < w AND s.run_id = rid AND s.model_version = ver"""
_RELABELLED_FOLDED_VERSIONS = f"""
SELECT DISTINCT s.run_id, s.model_version {_R._CHANGED}
WHERE k.old_label IS DISTINCT FROM k.new_label AND s.xid < w"""


def _relabel() -> str:
    minute = _R._MINUTE
    moved = "sum(r.sign), coalesce(sum(r.sign) FILTER (WHERE r.alert), 0)"
    return f"""
CREATE OR REPLACE FUNCTION rollup_relabel(run_ids text[], ids text[], old_labels int2[], new_labels int2[])
RETURNS bigint LANGUAGE plpgsql {_REPLANNED} AS $$
DECLARE
    w xid8;
    moved bigint;
{_DECLARE}
BEGIN
    -- the trigger-kept rollups: every scored row of the changed transactions
    WITH r AS MATERIALIZED (
        SELECT s.run_id, s.model_version, s.alert, s.scored_at, floor(t.time / 3600)::int4 AS hour, c.class, c.sign
        {_R._CHANGED}
        {_PROBE.format(columns="t.time", run="k.run_id", id="k.id")}
        {_SIGNS}
        WHERE k.old_label IS DISTINCT FROM k.new_label
    ), minutes AS (
        INSERT INTO rollup_minutes AS m (run_id, minute, model_version, class, scored, alerts)
        SELECT r.run_id, {minute}, r.model_version, r.class, {moved}
        FROM r GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (run_id, minute, model_version, class)
        DO UPDATE SET scored = m.scored + EXCLUDED.scored, alerts = m.alerts + EXCLUDED.alerts
    ), hours AS (
        INSERT INTO rollup_hours AS h (run_id, hour, model_version, class, scored, alerts)
        SELECT r.run_id, r.hour, r.model_version, r.class, {moved}
        FROM r GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (run_id, hour, model_version, class)
        DO UPDATE SET scored = h.scored + EXCLUDED.scored, alerts = h.alerts + EXCLUDED.alerts
    )
    SELECT count(*) FROM r INTO moved;
    IF moved = 0 THEN
        RETURN 0;
    END IF;
    -- the folded rollups: rows folded already, serialised with the fold (shared: label writers
    -- do not wait for each other)
    PERFORM pg_advisory_xact_lock_shared({_LOCK});
    SELECT f.folded_below INTO w FROM rollup_fold_state f FOR SHARE;
{_version_loop(_RELABELLED_FOLDED_VERSIONS, _RELABELLED_FOLDED, signed=True)}
    RETURN moved / 2;
END
$$"""


def upgrade() -> None:
    # 0 for the rows stored so far (counted by the trigger already; a constant default is no
    # rewrite), then every new row's inserting transaction
    op.execute("ALTER TABLE scores ADD COLUMN xid xid8 NOT NULL DEFAULT '0'::xid8")
    op.execute("ALTER TABLE scores ALTER COLUMN xid SET DEFAULT pg_current_xact_id()")
    op.create_index("ix_scores_xid", "scores", ["xid"])
    op.execute("""
CREATE TABLE rollup_fold_state (
    id boolean DEFAULT true NOT NULL,
    folded_below xid8 NOT NULL,
    folded_at timestamptz,
    rows bigint DEFAULT 0 NOT NULL,
    CONSTRAINT pk_rollup_fold_state PRIMARY KEY (id),
    CONSTRAINT ck_rollup_fold_state_one_row CHECK (id)
)""")
    # every transaction below this snapshot's xmin has ended, so every score it wrote is in the
    # table now with xid 0 (counted); a transaction still open writes with its own xid >= it
    op.execute(
        "INSERT INTO rollup_fold_state (id, folded_below) VALUES (true, pg_snapshot_xmin(pg_current_snapshot()))"
    )
    op.execute(_FOLD_RANGE)
    op.execute(_FOLD)
    op.execute(_FOLD_DAY)
    op.execute(_scores_insert())
    op.execute(_relabel())


def downgrade() -> None:
    # fold what is pending, so the trigger's rollups are whole again when it takes them back
    op.execute("SELECT rollup_fold()")
    for function in ("rollup_fold()", "rollup_fold_day(int4)", "rollup_fold_range(xid8, xid8, int4)"):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table("rollup_fold_state")
    op.drop_index("ix_scores_xid", table_name="scores")
    op.execute("ALTER TABLE scores DROP COLUMN xid")
    # 0013's trigger and relabel, as 0012 built them with 0013's day probes
    module = _R
    insert = module._body(
        module._NEW_VERSIONS, module._NEW_SCORES, labelled_only=False, counted="RETURN NULL;"
    )
    insert = insert.replace(
        "coalesce(t.label, -1)::int2 AS class",
        "coalesce((SELECT c.class FROM rollup_known_classes c "
        "WHERE c.run_id = s.run_id AND c.transaction_id = s.id), t.label, -1)::int2 AS class",
    ).replace("t.id = s.id OFFSET 0", "t.id = s.id AND t.day = s.day OFFSET 0")
    op.execute(
        f"CREATE OR REPLACE FUNCTION rollups_scores_insert() RETURNS trigger LANGUAGE plpgsql AS $${insert}$$"
    )
    relabel = module._body(
        module._RELABELLED_VERSIONS, module._RELABELLED, labelled_only=True, counted="RETURN total / 2;"
    ).replace("t.id = k.id OFFSET 0", "t.id = k.id AND t.day = s.day OFFSET 0")
    op.execute(f"""
CREATE OR REPLACE FUNCTION rollup_relabel(run_ids text[], ids text[], old_labels int2[], new_labels int2[])
RETURNS bigint LANGUAGE plpgsql AS $${relabel}$$""")
