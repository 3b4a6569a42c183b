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
  bin): the hours inside a version's in-sample stretch are subtracted from its curves;
- `rollup_drift`: rows per (run, model version, data hour, quantity, bin) in the version's
  own reference bins (`model_reference_bins`, filled from `manifest["reference"]` when a
  version is inserted into `model_versions`, and backfilled here): drift per hour is one
  indexed read.

Bins are numbered as `width_bucket(x, edges)` (= `numpy.searchsorted(edges, x, "right")`).
A label change (`UPDATE transactions SET label`) moves the row's counts from its old class
to its new one (`rollup_relabel`, set-based, also callable by other label sources). A
TRUNCATE of either table empties the rollups. DELETEs are not subtracted: the rollups count
rows scored, not rows still stored. Existing rows are counted once here.

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
_MINUTE = "date_bin('1 minute', scored_at, timestamptz '2000-01-01 00:00:00+00')"
_HOUR = "floor(time / 3600)::int4"


_UNION = "\n    UNION ALL "


def _edges(quantity: str) -> str:
    """The analytics bin edges of `quantity` as an SQL constant: the same doubles as `core.bins`
    (shortest round-trip text), inlined so no row pays for reading (detoasting) a long array."""
    bins = LATENCY_BINS if quantity == "latency_ms" else QUANTITY_BINS[quantity]
    return "'{" + ",".join(repr(float(e)) for e in bins.edges) + "}'::float8[]"


def _histogram(quantity: str) -> str:
    """One quantity's counts per (run, version, class, analytics bin) of the statement's rows."""
    return f"""(SELECT r.run_id, '{quantity}' AS quantity, r.model_version, r.class,
           width_bucket(r.{quantity}, {_edges(quantity)})::int2 AS bin,
           sum(r.sign), coalesce(sum(r.sign) FILTER (WHERE r.alert), 0), sum(r.sign * r.{quantity}),
           coalesce(sum(r.sign * r.{quantity}) FILTER (WHERE r.alert), 0)
    FROM r GROUP BY 1, 2, 3, 4, 5)"""


def _drift(quantity: str) -> str:
    """One quantity's counts per (run, version, data hour, reference bin of that version)."""
    return f"""(SELECT r.run_id, r.model_version, {_HOUR.replace("time", "r.time")} AS hour, '{quantity}' AS quantity,
           width_bucket(r.{quantity}, mb.edges)::int2 AS bin, sum(r.sign)
    FROM r JOIN model_reference_bins mb ON mb.version = r.model_version AND mb.quantity = '{quantity}'
    GROUP BY 1, 2, 3, 4, 5)"""


def _apply(source: str, *, labelled_only: bool) -> str:
    """One statement adding `sign` times the rows of `source` to the rollups.

    `source` yields run_id, model_version, alert, scored_at, latency_ms, recon_error, score,
    time, v1..v28, amount, class, sign. With `labelled_only`, only the rollups keyed by class
    (a relabel moves nothing else). Every upsert is grouped (one row per key) and ordered, so
    concurrent writers lock rollup rows in one order and never deadlock.
    """
    parts = [
        f"r AS MATERIALIZED ({source})",
        f"""minutes AS (
    INSERT INTO rollup_minutes AS m (run_id, minute, model_version, class, scored, alerts)
    SELECT run_id, {_MINUTE}, model_version, class, sum(sign), coalesce(sum(sign) FILTER (WHERE alert), 0)
    FROM r GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, minute, model_version, class)
    DO UPDATE SET scored = m.scored + EXCLUDED.scored, alerts = m.alerts + EXCLUDED.alerts
)""",
        f"""hours AS (
    INSERT INTO rollup_hours AS h (run_id, hour, model_version, class, scored, alerts)
    SELECT run_id, {_HOUR}, model_version, class, sum(sign), coalesce(sum(sign) FILTER (WHERE alert), 0)
    FROM r GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, hour, model_version, class)
    DO UPDATE SET scored = h.scored + EXCLUDED.scored, alerts = h.alerts + EXCLUDED.alerts
)""",
        f"""histograms AS (
    INSERT INTO rollup_histograms AS h (run_id, quantity, model_version, class, bin, n, alerts, total, alert_total)
    SELECT * FROM ({_UNION.join(_histogram(name) for name in _QUANTITIES)}) AS x
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (run_id, quantity, model_version, class, bin)
    DO UPDATE SET n = h.n + EXCLUDED.n, alerts = h.alerts + EXCLUDED.alerts, total = h.total + EXCLUDED.total,
                  alert_total = h.alert_total + EXCLUDED.alert_total
)""",
        f"""score_hours AS (
    INSERT INTO rollup_score_hours AS h (run_id, model_version, hour, class, bin, n, alerts)
    SELECT r.run_id, r.model_version, {_HOUR.replace("time", "r.time")}, r.class,
           width_bucket(r.score, {_edges("score")})::int2, sum(r.sign),
           coalesce(sum(r.sign) FILTER (WHERE r.alert), 0)
    FROM r
    GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (run_id, model_version, hour, class, bin)
    DO UPDATE SET n = h.n + EXCLUDED.n, alerts = h.alerts + EXCLUDED.alerts
)""",
    ]
    if labelled_only:
        return "WITH " + ",\n".join(parts) + "\nSELECT count(*) FROM r"
    parts.append(f"""latency AS (
    INSERT INTO rollup_latency AS l (run_id, minute, bin, n)
    SELECT r.run_id, {_MINUTE.replace("scored_at", "r.scored_at")},
           width_bucket(r.latency_ms, {_edges("latency_ms")})::int2, sum(r.sign)
    FROM r
    WHERE r.latency_ms IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (run_id, minute, bin) DO UPDATE SET n = l.n + EXCLUDED.n
)""")
    drift = f"""
INSERT INTO rollup_drift AS d (run_id, model_version, hour, quantity, bin, n)
SELECT * FROM ({_UNION.join(_drift(name) for name in _QUANTITIES)}) AS x
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (run_id, model_version, hour, quantity, bin) DO UPDATE SET n = d.n + EXCLUDED.n"""
    return "WITH " + ",\n".join(parts) + drift


#: A new score with its transaction (the class is the inline label).
_NEW_SCORES = f"""
SELECT s.run_id, s.model_version, s.alert, s.scored_at, s.latency_ms, s.recon_error, s.score, {_T_COLUMNS},
       coalesce(t.label, -1)::int2 AS class, 1 AS sign
FROM new_rows s JOIN transactions t ON t.run_id = s.run_id AND t.id = s.id"""

_ALL_SCORES = _NEW_SCORES.replace("new_rows", "scores")

#: The changed rows of `rollup_relabel`, each twice: out of its old class, into its new one.
_RELABELLED = f"""
SELECT s.run_id, s.model_version, s.alert, s.scored_at, s.latency_ms, s.recon_error, s.score, {_T_COLUMNS},
       c.class, c.sign
FROM unnest(run_ids, ids, old_labels, new_labels) AS k(run_id, id, old_label, new_label)
JOIN scores s ON s.run_id = k.run_id AND s.id = k.id
JOIN transactions t ON t.run_id = k.run_id AND t.id = k.id
CROSS JOIN LATERAL (VALUES (coalesce(k.old_label, -1)::int2, -1), (coalesce(k.new_label, -1)::int2, 1)) AS c(class, sign)
WHERE k.old_label IS DISTINCT FROM k.new_label"""

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

    op.execute(f"""
CREATE FUNCTION rollup_relabel(run_ids text[], ids text[], old_labels int2[], new_labels int2[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    {_apply(_RELABELLED, labelled_only=True)} INTO moved;
    RETURN moved / 2;
END
$$""")
    op.execute(f"""
CREATE FUNCTION rollups_scores_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_apply(_NEW_SCORES, labelled_only=False)};
    RETURN NULL;
END
$$""")
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
    op.execute(_apply(_ALL_SCORES, labelled_only=False))


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
