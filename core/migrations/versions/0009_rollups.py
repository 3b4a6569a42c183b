"""rollups: counts, latency and histograms kept as rows arrive, so analytics never scan the history

The API's analytics were full scans of `transactions` and `scores`, refreshed every few
seconds: a cost that grows with the history. Statement-level AFTER triggers with transition
tables (as `run_totals`, 0003) now add each statement's own rows, grouped, to small rollup
tables; only rows actually inserted are in the transition table, so a redelivered row
(ON CONFLICT DO NOTHING) never counts twice, and any writer (scorer, predict) keeps them.

"Class" is the row's known label: -1 unlabelled, 0 normal, 1 fraud (today the inline
label). The insert trigger of `scores` joins each new score to its transaction (the scorer
writes both in one statement; the trigger runs after it) and adds, per statement:

- `rollup_minutes`: scored rows and alerts per (run, minute of `scored_at`, model version,
  class): the live time series and window counts;
- `rollup_hours`: the same per hour of *data* time (`floor(time / 3600)`): hour-of-day and
  data-time histograms, and the rows a version saw inside its in-sample stretch;
- `rollup_latency`: rows per (run, minute, latency bin), bins `core.bins.LATENCY_BINS`;
- `rollup_histograms`: rows, alerts and the sums of the value (all rows, alert rows) per (run, quantity, model
  version, class, bin) for V1..V28, amount, recon_error and score, in the fixed analytics
  bins of `core.bins` (copied into `analytics_bins`): distributions and model curves read
  a few thousand rows whatever the history;
- `rollup_score_hours`: rows and alerts per (run, model version, data hour, class, score
  bin), kept only for the data hours inside the version's in-sample stretch
  (`manifest["training"]["data"]["in_sample"]`): subtracted from its curves;
- `rollup_drift`: rows per (run, model version, data hour, quantity, bin) in the version's
  own reference bins (`model_reference_bins`, filled from `manifest["reference"]` when a
  version is inserted into `model_versions`, and backfilled here): drift per hour is one
  indexed read.

Bins are numbered as `width_bucket(x, edges)` (= `numpy.searchsorted(edges, x, "right")`).
A label change (`UPDATE transactions SET label`) moves the row's counts from its old class
to its new one (`rollup_relabel`, set-based, also callable by other label sources). A
TRUNCATE of either table empties the rollups. DELETEs are not subtracted: the rollups count
rows scored, not rows still stored. Existing rows are counted once here. The reference
bins and in-sample hours are those of the version when its rows are stored: rows stored
before their version is registered have no drift or in-sample counts.

Cost per statement: for each (run, model version) in it, the version's reference edges
and in-sample hours are read into PL/pgSQL variables once; each new score reads its
transaction through the primary key; one grouped pass per quantity (width_bucket on the
inlined analytics edges and on the version's reference edges) gives the groups both the
histograms and the drift counts are summed from; then one upsert per touched rollup row.
`make bench-scale` measures it beside the write without the trigger.

Revision ID: 0009
Revises: 0011
Create Date: 2026-11-30 18:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from core.bins import BINS_VERSION, LATENCY_BINS, QUANTITY_BINS

revision = "0009"
down_revision = "0011"
branch_labels = None
depends_on = None

assert BINS_VERSION == 1, "new analytics bins need a migration of their own"

_INPUTS = [f"v{i}" for i in range(1, 29)] + ["amount"]
_QUANTITIES = [*_INPUTS, "recon_error", "score"]
_T_COLUMNS = ", ".join(f"t.{name}" for name in ["time", *_INPUTS])
_ROLLUPS = (
    "rollup_minutes",
    "rollup_hours",
    "rollup_latency",
    "rollup_histograms",
    "rollup_score_hours",
    "rollup_drift",
)
_MINUTE = "date_bin('1 minute', r.scored_at, timestamptz '2000-01-01 00:00:00+00')"
#: Quantity names by their position in the statement (1-based, as SQL arrays).
_NAMES = "ARRAY[" + ", ".join(f"'{name}'" for name in _QUANTITIES) + "]"


def _edges(quantity: str) -> str:
    """The analytics bin edges of `quantity` as an SQL constant: the same doubles as `core.bins`
    (shortest round-trip text), inlined so no row pays for reading (detoasting) a long array."""
    bins = LATENCY_BINS if quantity == "latency_ms" else QUANTITY_BINS[quantity]
    return "'{" + ",".join(repr(float(e)) for e in bins.edges) + "}'::float8[]"


def _sums(value: str | None, *, signed: bool) -> str:
    """Rows and alerts (and the value's sums over them): `sign`-weighted for a relabel, plain counts otherwise."""
    if signed:
        out = "sum(r.sign), coalesce(sum(r.sign) FILTER (WHERE r.alert), 0)"
        if value:
            out += f", sum(r.sign * {value}), coalesce(sum(r.sign * {value}) FILTER (WHERE r.alert), 0)"
        return out
    out = "count(*), count(*) FILTER (WHERE r.alert)"
    if value:
        out += f", sum({value}), coalesce(sum({value}) FILTER (WHERE r.alert), 0)"
    return out


def _grouped(position: int, name: str, *, drift: bool) -> str:
    """One quantity's rows grouped by (class, analytics bin[, data hour, reference bin]): one hash
    aggregate over the statement's rows, whose few hundred groups feed both the histograms and
    (summed over class and analytics bin) the drift counts. `e_<name>` is the version's
    reference edges (a PL/pgSQL variable: NULL for a version without them)."""
    by_drift = f", r.hour, width_bucket(r.{name}, e_{name})::int2" if drift else ", 0, NULL::int2"
    return f"""(SELECT {position}::int2, r.class, width_bucket(r.{name}, {_edges(name)})::int2{by_drift},
           {_sums(f"r.{name}", signed=not drift)}
    FROM r GROUP BY 2, 3, 4, 5)"""


def _apply(source: str, *, labelled_only: bool) -> str:
    """One statement adding the rows of `source` (one run `rid`, one model version `ver`) to the
    rollups, each `sign` times for a relabel.

    `source` yields run_id, alert, scored_at, latency_ms, recon_error, score, time, v1..v28,
    amount, class, sign. With `labelled_only`, only the rollups keyed by class (a relabel
    moves nothing else). The PL/pgSQL variables `rid`, `ver`, `e_<quantity>` (reference edges) and
    `in_from`/`in_to` (the version's in-sample data hours) are set by `_body`. Cost: one
    grouped pass per quantity over the statement's rows (width_bucket on inlined edges) and
    one upsert per touched rollup row. Every upsert is grouped (one row per key) and ordered,
    so concurrent writers lock rollup rows in one order and never deadlock.
    """
    sums = _sums(None, signed=labelled_only)
    union = "\n    UNION ALL ".join(
        _grouped(i, name, drift=not labelled_only) for i, name in enumerate(_QUANTITIES, start=1)
    )
    parts = [
        f"r AS MATERIALIZED (SELECT x.*, floor(x.time / 3600)::int4 AS hour FROM ({source}) AS x)",
        f"g (qi, class, bin, hour, dbin, n, alerts, total, alert_total) AS MATERIALIZED (\n    {union}\n)",
        f"""histograms AS (
    INSERT INTO rollup_histograms AS h (run_id, quantity, model_version, class, bin, n, alerts, total, alert_total)
    SELECT rid, ({_NAMES})[g.qi], ver, g.class, g.bin, sum(g.n), sum(g.alerts), sum(g.total), sum(g.alert_total)
    FROM g GROUP BY g.qi, g.class, g.bin
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (run_id, quantity, model_version, class, bin)
    DO UPDATE SET n = h.n + EXCLUDED.n, alerts = h.alerts + EXCLUDED.alerts, total = h.total + EXCLUDED.total,
                  alert_total = h.alert_total + EXCLUDED.alert_total
)""",
        f"""minutes AS (
    INSERT INTO rollup_minutes AS m (run_id, minute, model_version, class, scored, alerts)
    SELECT rid, {_MINUTE}, ver, r.class, {sums}
    FROM r GROUP BY 2, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, minute, model_version, class)
    DO UPDATE SET scored = m.scored + EXCLUDED.scored, alerts = m.alerts + EXCLUDED.alerts
)""",
        f"""hours AS (
    INSERT INTO rollup_hours AS h (run_id, hour, model_version, class, scored, alerts)
    SELECT rid, r.hour, ver, r.class, {sums}
    FROM r GROUP BY 2, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, hour, model_version, class)
    DO UPDATE SET scored = h.scored + EXCLUDED.scored, alerts = h.alerts + EXCLUDED.alerts
)""",
        # score histograms per data hour only inside the version's in-sample stretch: the only
        # hours anything reads them for (the curves come from rollup_histograms, less these)
        f"""score_hours AS (
    INSERT INTO rollup_score_hours AS h (run_id, model_version, hour, class, bin, n, alerts)
    SELECT rid, ver, r.hour, r.class, width_bucket(r.score, {_edges("score")})::int2, {sums}
    FROM r WHERE r.hour >= in_from AND r.hour <= in_to
    GROUP BY 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (run_id, model_version, hour, class, bin)
    DO UPDATE SET n = h.n + EXCLUDED.n, alerts = h.alerts + EXCLUDED.alerts
)""",
    ]
    if labelled_only:
        return "WITH " + ",\n".join(parts) + "\nSELECT count(*) FROM r"
    parts.append(f"""latency AS (
    INSERT INTO rollup_latency AS l (run_id, minute, bin, n)
    SELECT rid, {_MINUTE}, width_bucket(r.latency_ms, {_edges("latency_ms")})::int2, count(*)
    FROM r
    WHERE r.latency_ms IS NOT NULL
    GROUP BY 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (run_id, minute, bin) DO UPDATE SET n = l.n + EXCLUDED.n
)""")
    drift = f"""
INSERT INTO rollup_drift AS d (run_id, model_version, hour, quantity, bin, n)
SELECT rid, ver, g.hour, ({_NAMES})[g.qi], g.dbin, sum(g.n)
FROM g WHERE g.dbin IS NOT NULL
GROUP BY g.hour, g.qi, g.dbin
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (run_id, model_version, hour, quantity, bin) DO UPDATE SET n = d.n + EXCLUDED.n"""
    return "WITH " + ",\n".join(parts) + drift


def _body(versions: str, source: str, *, labelled_only: bool, counted: str = "") -> str:
    """PL/pgSQL: for each (run, model version) among `versions`, the version's reference edges and
    in-sample hours into variables (read once per statement, not joined per row), then `_apply`
    on that run's and version's rows (`rid`, `ver`): the grouping keys are then small integers."""
    declare = "\n".join(f"    e_{name} float8[];" for name in _QUANTITIES)
    edges = ", ".join(
        f"(SELECT mb.edges FROM model_reference_bins mb WHERE mb.version = ver AND mb.quantity = '{name}')"
        for name in _QUANTITIES
    )
    into = ", ".join(f"e_{name}" for name in _QUANTITIES)
    hour = "CASE WHEN jsonb_typeof(ins -> '{0}') = 'number' THEN floor((ins ->> '{0}')::float8 / 3600) END"
    return f"""
DECLARE
    rid text;
    ver text;
    ins jsonb;
    in_from int4;
    in_to int4;
    n bigint;
    total bigint := 0;
{declare}
BEGIN
    FOR rid, ver IN {versions} LOOP
        SELECT {edges} INTO {into};
        ins := (SELECT m.manifest -> 'training' -> 'data' -> 'in_sample' FROM model_versions m WHERE m.version = ver);
        in_from := {hour.format("time_from")};
        in_to := {hour.format("time_to")};
        {_apply(source, labelled_only=labelled_only)} {"INTO n" if labelled_only else ""};
        total := total + coalesce(n, 0);
    END LOOP;
    {counted}
END"""


#: One transaction by its key, read through the primary key (never a join planned as a scan
#: of the whole table: the planner does not know the transition table's size).
_TRANSACTION = f"""CROSS JOIN LATERAL (
    SELECT {_T_COLUMNS}, t.label FROM transactions t WHERE t.run_id = {{run}} AND t.id = {{id}} OFFSET 0) AS t"""

_COLUMNS = f"s.run_id, s.alert, s.scored_at, s.latency_ms, s.recon_error, s.score, {_T_COLUMNS}"

#: New scores of one version with their transactions (the class is the inline label).
_NEW_SCORES = f"""
SELECT {_COLUMNS}, coalesce(t.label, -1)::int2 AS class, 1 AS sign
FROM new_rows s {_TRANSACTION.format(run="s.run_id", id="s.id")}
WHERE s.run_id = rid AND s.model_version = ver"""
_NEW_VERSIONS = "SELECT DISTINCT run_id, model_version FROM new_rows"

_ALL_SCORES = f"""
SELECT {_COLUMNS}, coalesce(t.label, -1)::int2 AS class, 1 AS sign
FROM scores s JOIN transactions t ON t.run_id = s.run_id AND t.id = s.id
WHERE s.run_id = rid AND s.model_version = ver"""
_ALL_VERSIONS = "SELECT DISTINCT run_id, model_version FROM scores"

#: The changed rows of `rollup_relabel`, each twice: out of its old class, into its new one.
_CHANGED = """
FROM unnest(run_ids, ids, old_labels, new_labels) AS k(run_id, id, old_label, new_label)
JOIN scores s ON s.run_id = k.run_id AND s.id = k.id"""
_RELABELLED = f"""
SELECT {_COLUMNS}, c.class, c.sign {_CHANGED}
{_TRANSACTION.format(run="k.run_id", id="k.id")}
CROSS JOIN LATERAL (VALUES (coalesce(k.old_label, -1)::int2, -1), (coalesce(k.new_label, -1)::int2, 1)) AS c(class, sign)
WHERE k.old_label IS DISTINCT FROM k.new_label AND s.run_id = rid AND s.model_version = ver"""
_RELABELLED_VERSIONS = (
    f"SELECT DISTINCT s.run_id, s.model_version {_CHANGED} WHERE k.old_label IS DISTINCT FROM k.new_label"
)

#: Reference bin edges of the versions in `rows`: each input's and the outputs' `edges`.
_REFERENCE_BINS = """
INSERT INTO model_reference_bins (version, quantity, edges)
SELECT m.version, lower(f.key),
       ARRAY(SELECT e::float8 FROM jsonb_array_elements_text(f.value -> 'edges') AS e)
FROM {rows} m
CROSS JOIN LATERAL jsonb_each(
    CASE WHEN jsonb_typeof(m.manifest -> 'reference' -> 'features') = 'object'
         THEN m.manifest -> 'reference' -> 'features' ELSE '{{}}'::jsonb END) AS f
WHERE jsonb_typeof(f.value -> 'edges') = 'array'
UNION ALL
SELECT m.version, q.quantity,
       ARRAY(SELECT e::float8 FROM jsonb_array_elements_text(m.manifest -> 'reference' -> q.quantity -> 'edges') AS e)
FROM {rows} m CROSS JOIN unnest(ARRAY['recon_error', 'score']) AS q(quantity)
WHERE jsonb_typeof(m.manifest -> 'reference' -> q.quantity -> 'edges') = 'array'
ON CONFLICT (version, quantity) DO NOTHING"""


def _bins_rows() -> list[dict]:
    rows = [
        {"quantity": name, "version": BINS_VERSION, "edges": list(b.edges)}
        for name, b in QUANTITY_BINS.items()
    ]
    rows.append({"quantity": "latency_ms", "version": BINS_VERSION, "edges": list(LATENCY_BINS.edges)})
    return rows


def upgrade() -> None:
    bins = op.create_table(
        "analytics_bins",
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("edges", postgresql.ARRAY(sa.Double()), nullable=False),
        sa.PrimaryKeyConstraint("quantity", name="pk_analytics_bins"),
    )
    op.bulk_insert(bins, _bins_rows())
    op.create_table(
        "model_reference_bins",
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("edges", postgresql.ARRAY(sa.Double()), nullable=False),
        sa.ForeignKeyConstraint(
            ["version"],
            ["model_versions.version"],
            name="fk_model_reference_bins_version",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version", "quantity", name="pk_model_reference_bins"),
    )

    def counters() -> list[sa.Column]:
        return [sa.Column(name, sa.BigInteger(), nullable=False) for name in ("scored", "alerts")]

    op.create_table(
        "rollup_minutes",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("minute", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("class", sa.SmallInteger(), nullable=False),
        *counters(),
        sa.PrimaryKeyConstraint("run_id", "minute", "model_version", "class", name="pk_rollup_minutes"),
    )
    op.create_table(
        "rollup_hours",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("class", sa.SmallInteger(), nullable=False),
        *counters(),
        sa.PrimaryKeyConstraint("run_id", "hour", "model_version", "class", name="pk_rollup_hours"),
    )
    op.create_table(
        "rollup_latency",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("minute", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "minute", "bin", name="pk_rollup_latency"),
    )
    op.create_table(
        "rollup_histograms",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("class", sa.SmallInteger(), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("alerts", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Double(), nullable=False),
        sa.Column("alert_total", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint(
            "run_id", "quantity", "model_version", "class", "bin", name="pk_rollup_histograms"
        ),
    )
    op.create_table(
        "rollup_score_hours",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("class", sa.SmallInteger(), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("alerts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "run_id", "model_version", "hour", "class", "bin", name="pk_rollup_score_hours"
        ),
    )
    op.create_table(
        "rollup_drift",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "model_version", "hour", "quantity", "bin", name="pk_rollup_drift"),
    )

    relabel = _body(_RELABELLED_VERSIONS, _RELABELLED, labelled_only=True, counted="RETURN total / 2;")
    op.execute(f"""
CREATE FUNCTION rollup_relabel(run_ids text[], ids text[], old_labels int2[], new_labels int2[])
RETURNS bigint LANGUAGE plpgsql AS $${relabel}$$""")
    insert = _body(_NEW_VERSIONS, _NEW_SCORES, labelled_only=False, counted="RETURN NULL;")
    op.execute(f"CREATE FUNCTION rollups_scores_insert() RETURNS trigger LANGUAGE plpgsql AS $${insert}$$")
    op.execute("""
CREATE FUNCTION rollups_transactions_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rollup_relabel(array_agg(o.run_id), array_agg(o.id), array_agg(o.label), array_agg(n.label))
    FROM old_rows o JOIN new_rows n ON n.run_id = o.run_id AND n.id = o.id
    WHERE o.label IS DISTINCT FROM n.label;
    RETURN NULL;
END
$$""")
    op.execute(f"""
CREATE FUNCTION rollups_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE {", ".join(_ROLLUPS)};
    RETURN NULL;
END
$$""")
    op.execute(f"""
CREATE FUNCTION model_reference_bins_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_REFERENCE_BINS.format(rows="new_rows")};
    RETURN NULL;
END
$$""")
    op.execute(
        "CREATE TRIGGER rollups_scores_insert AFTER INSERT ON scores REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION rollups_scores_insert()"
    )
    op.execute(
        "CREATE TRIGGER rollups_transactions_update AFTER UPDATE ON transactions "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION rollups_transactions_update()"
    )
    for table in ("transactions", "scores"):
        op.execute(
            f"CREATE TRIGGER rollups_{table}_truncate AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION rollups_truncate()"
        )
    op.execute(
        "CREATE TRIGGER model_reference_bins_insert AFTER INSERT ON model_versions "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION model_reference_bins_insert()"
    )
    op.execute(_REFERENCE_BINS.format(rows="model_versions"))
    op.execute(f"DO $${_body(_ALL_VERSIONS, _ALL_SCORES, labelled_only=False)}$$")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS model_reference_bins_insert ON model_versions")
    op.execute("DROP TRIGGER IF EXISTS rollups_scores_insert ON scores")
    op.execute("DROP TRIGGER IF EXISTS rollups_transactions_update ON transactions")
    for table in ("transactions", "scores"):
        op.execute(f"DROP TRIGGER IF EXISTS rollups_{table}_truncate ON {table}")
    for function in (
        "model_reference_bins_insert()",
        "rollups_scores_insert()",
        "rollups_transactions_update()",
        "rollups_truncate()",
        "rollup_relabel(text[], text[], int2[], int2[])",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    for table in (*_ROLLUPS, "model_reference_bins", "analytics_bins"):
        op.drop_table(table)
