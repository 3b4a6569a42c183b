"""the scatter plot's sample kept by the write path: the k smallest keys per (run, data day, class)

`GET /api/scatter` drew its points at random from the row tables: frauds by a random sort of
`ix_scores_frauds` (or index probes past 5,000 frauds), normal rows from a block sample, each
joined to its other table by primary key: about two random heap pages per point, so at 10 M
rows right after a fill it was the one read over 50 ms at p99 (`bench.scale`). It now reads
a small table kept by the write path, in key order, with no join.

- `scatter_key(run_id, id)`: the row's key, uniform in [0, 1): the first 52 bits of
  `md5(run_id || '/' || id)` over 2^52. Deterministic, so a redelivered row has its key, and
  the sample of a run is the same whoever wrote it (`md5` is computable anywhere: the tests
  check the sample against Python's `hashlib`).
- The class is `scores.fraud` (0016): the inline label is 1; every other scored row is
  "normal" (the scorer only takes labels 0, 1 or null, so that is label 0 or null, the old
  scatter's normals). Verdicts (`feedback`) do not move a row, as they never moved it in the
  old scatter.
- `scatter_sample_state(run_id, day, fraud)`: `total` scored rows of the group, `sampled` rows
  in the sample, `threshold`. The invariant: the group's sample is exactly its scored rows
  with `key < threshold`, and `threshold` is 1.0 (every row sampled) or the sample holds at
  least k rows (`scatter_sample_k()`, 2,500: the most the endpoint asks for per class).
- `scatter_sample`: those rows, with every column the scatter plots or returns (data time,
  V1..V28, amount, the inline label, score, recon_error, alert, model version). Read through
  `ix_scatter_sample_read (run_id, fraud, key, id)`: a run's n smallest keys of a class over
  all its days, one index range. Because each day's sample holds every row of the day below
  its threshold and at least k rows when the threshold is below 1, the n <= k smallest keys
  of the union are the n smallest of all the run's retained rows of the class: a uniform
  sample (without replacement) of what is kept, the same at every call.
- The write statement (`core.db.store`, beside the narrow rollups of 0018) upserts each
  group's counts and inserts the new rows whose key is under the group's threshold as the
  upsert found it (the row locked: a concurrent prune is waited for). A row is a candidate
  only below the threshold, so past the first k rows of a day few are; no trigger on
  `scores`, no probe, nothing planned per call.
- `scatter_sample_prune`: a row trigger on the state, when a sample passes 2k rows: keep its
  k smallest keys, the threshold lowered to the (k+1)-th. Once per k rows inserted at most.
- Relabels (`UPDATE transactions` changing the inline label, which 0016's trigger copies to
  `scores.fraud`): a row leaving a class leaves that class's sample and count; a row entering
  one enters its sample if its key is under that group's threshold. Deleted scores leave
  theirs (a run is deleted by `DELETE ... WHERE run_id`; its groups go). A group left with
  fewer than k rows while rows above its threshold remain is rebuilt from its day's rows
  (`scatter_sample_rebuild`: a scan of that day of that run; only after a relabel or a
  delete took sampled rows out); one left with all its rows gets the threshold 1.0 again.
- TRUNCATE of `transactions` or `scores` empties both tables (as the rollups, 0009);
  retention's drop of a live day deletes that day's groups (`core.db.partitions`).
- Filled here from the rows already stored.

Known limits: rows whose keys tie exactly (52-bit keys: ~k/2^52 per prune) may leave a
pruned sample one row short of k; a transaction deleted without its score keeps its point
(nothing deletes one without the other: runs are deleted from both tables).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

#: The columns of `transactions` copied into the sample.
_INPUTS = ("time", *(f"v{i}" for i in range(1, 29)), "amount")
_COPIED = ", ".join(_INPUTS)
#: The sample's columns after (run_id, day, fraud, key, id).
_VALUES = f"{_COPIED}, label, score, recon_error, alert, model_version"

_KEY = """
CREATE FUNCTION scatter_key(run_id text, id text) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ('x' || substr(md5(run_id || '/' || id), 1, 13))::bit(52)::int8::float8 / 4503599627370496.0::float8
"""

_K = """
CREATE FUNCTION scatter_sample_k() RETURNS int4 LANGUAGE sql STABLE PARALLEL SAFE RETURN 2500
"""

#: Keep a group's k smallest keys (the trigger's condition: it holds more than 2k).
_PRUNE = """
CREATE FUNCTION scatter_sample_prune() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cut float8;
BEGIN
    SELECT x.key INTO cut FROM scatter_sample x
    WHERE x.run_id = NEW.run_id AND x.day = NEW.day AND x.fraud = NEW.fraud
    ORDER BY x.key OFFSET scatter_sample_k() LIMIT 1;
    IF cut IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM scatter_sample x
            WHERE x.run_id = NEW.run_id AND x.day = NEW.day AND x.fraud = NEW.fraud AND x.key >= cut
            RETURNING 1
        )
        UPDATE scatter_sample_state g SET threshold = cut, sampled = g.sampled - (SELECT count(*) FROM gone)
        WHERE g.run_id = NEW.run_id AND g.day = NEW.day AND g.fraud = NEW.fraud;
    END IF;
    RETURN NULL;
END
$$"""


def _fill(where: str) -> str:
    """(Re)build the groups of the scored rows `s` matching `where` (none of them may have a
    state or sample row yet): per group its k smallest keys, the threshold the next key."""
    return f"""
WITH keyed AS MATERIALIZED (
    SELECT s.run_id, s.day, s.fraud, scatter_key(s.run_id, s.id) AS key, s.id
    FROM scores s WHERE {where}
), ranked AS MATERIALIZED (
    SELECT k.*, row_number() OVER (PARTITION BY run_id, day, fraud ORDER BY key, id) AS rank
    FROM keyed k
), groups AS MATERIALIZED (
    SELECT run_id, day, fraud, count(*) AS total,
           coalesce(min(key) FILTER (WHERE rank = scatter_sample_k() + 1), 1.0) AS threshold
    FROM ranked GROUP BY 1, 2, 3
), kept AS MATERIALIZED (
    SELECT r.* FROM ranked r JOIN groups g USING (run_id, day, fraud)
    WHERE r.key < g.threshold
), state AS (
    INSERT INTO scatter_sample_state (run_id, day, fraud, total, sampled, threshold)
    SELECT g.run_id, g.day, g.fraud, g.total,
           (SELECT count(*) FROM kept k WHERE k.run_id = g.run_id AND k.day = g.day AND k.fraud = g.fraud),
           g.threshold
    FROM groups g ORDER BY 1, 2, 3
)
INSERT INTO scatter_sample (run_id, day, fraud, key, id, {_VALUES})
SELECT k.run_id, k.day, k.fraud, k.key, k.id, {", ".join(f"t.{c}" for c in _INPUTS)}, t.label,
       s.score, s.recon_error, s.alert, s.model_version
FROM kept k
JOIN scores s ON s.run_id = k.run_id AND s.id = k.id AND s.day = k.day
JOIN transactions t ON t.run_id = k.run_id AND t.id = k.id AND t.day = k.day"""


_REBUILD = f"""
CREATE FUNCTION scatter_sample_rebuild(p_run text, p_days int4[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM scatter_sample x WHERE x.run_id = p_run AND x.day = ANY(p_days);
    DELETE FROM scatter_sample_state g WHERE g.run_id = p_run AND g.day = ANY(p_days);
    {_fill("s.run_id = p_run AND s.day = ANY(p_days)")};
END
$$"""

#: After rows left groups (`affected`: their (run_id, day)): a group with every row sampled
#: gets the threshold 1.0, an empty one goes, one short of k with rows above it is rebuilt.
_SETTLE = """
    UPDATE scatter_sample_state g SET threshold = 1.0
    WHERE (g.run_id, g.day) IN ({affected}) AND g.threshold < 1.0 AND g.total <= g.sampled;
    DELETE FROM scatter_sample_state g WHERE (g.run_id, g.day) IN ({affected}) AND g.total <= 0;
    PERFORM scatter_sample_rebuild(g.run_id, array_agg(DISTINCT g.day))
    FROM scatter_sample_state g
    WHERE (g.run_id, g.day) IN ({affected}) AND g.threshold < 1.0 AND g.sampled < scatter_sample_k()
    GROUP BY g.run_id;"""

#: Lock the groups' state rows in key order (as the writer's upsert does) before any change.
_LOCK = """
    PERFORM 1 FROM scatter_sample_state g WHERE (g.run_id, g.day) IN ({affected})
    ORDER BY g.run_id, g.day, g.fraud FOR UPDATE;"""

#: Rows `{rows}` (run_id, id, day, fraud) leave their group (`fraud`): out of the sample and
#: counts. Matched by id in the group, not by key: a run's delete need not hash every row.
_LEAVE = """
    WITH out AS ({rows}), gone AS (
        DELETE FROM scatter_sample x USING out o
        WHERE x.run_id = o.run_id AND x.day = o.day AND x.fraud = o.fraud AND x.id = o.id
        RETURNING x.run_id, x.day, x.fraud
    ), counts AS (
        SELECT o.run_id, o.day, o.fraud, count(*) AS n FROM out o GROUP BY 1, 2, 3
    )
    UPDATE scatter_sample_state g
    SET total = g.total - c.n,
        sampled = g.sampled - (SELECT count(*) FROM gone x
                               WHERE x.run_id = g.run_id AND x.day = g.day AND x.fraud = g.fraud)
    FROM counts c WHERE g.run_id = c.run_id AND g.day = c.day AND g.fraud = c.fraud;"""

#: The relabelled scored rows: (run_id, id, day, key, was, now) and the values a sample row holds.
_RELABELLED = f"""
    SELECT n.run_id, n.id, n.day, scatter_key(n.run_id, n.id) AS key,
           coalesce(o.label = 1, false) AS was, coalesce(n.label = 1, false) AS now,
           {", ".join(f"n.{c}" for c in _INPUTS)}, n.label, s.score, s.recon_error, s.alert, s.model_version
    FROM new_rows n
    JOIN old_rows o ON o.run_id = n.run_id AND o.id = n.id AND o.day = n.day
    JOIN scores s ON s.run_id = n.run_id AND s.id = n.id AND s.day = n.day
    WHERE o.label IS DISTINCT FROM n.label"""

_CHANGED_DAYS = (
    "SELECT n.run_id, n.day FROM new_rows n JOIN old_rows o ON o.run_id = n.run_id AND o.id = n.id "
    "AND o.day = n.day WHERE o.label IS DISTINCT FROM n.label"
)

_FOLLOW_LABEL = f"""
CREATE FUNCTION scatter_sample_follow_label() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS ({_CHANGED_DAYS}) THEN
        RETURN NULL;
    END IF;
    {_LOCK.format(affected=_CHANGED_DAYS)}
    -- same class (null <-> 0): the sampled row's label only
    UPDATE scatter_sample x SET label = c.label FROM ({_RELABELLED}) c
    WHERE c.was = c.now AND x.run_id = c.run_id AND x.day = c.day AND x.fraud = c.now AND x.key = c.key
      AND x.id = c.id;
    {_LEAVE.format(rows=f"SELECT run_id, id, day, was AS fraud FROM ({_RELABELLED}) c WHERE was <> now")}
    -- into the new class: counted, and sampled if under that group's threshold
    WITH c AS ({_RELABELLED} AND coalesce(o.label = 1, false) <> coalesce(n.label = 1, false)), groups AS (
        INSERT INTO scatter_sample_state AS g (run_id, day, fraud, total, sampled, threshold)
        SELECT run_id, day, now, count(*), count(*), 1.0 FROM c GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (run_id, day, fraud) DO UPDATE
        SET total = g.total + EXCLUDED.total,
            sampled = g.sampled + (SELECT count(*) FROM c
                                   WHERE c.run_id = g.run_id AND c.day = g.day AND c.now = g.fraud
                                     AND c.key < g.threshold)
        RETURNING g.run_id, g.day, g.fraud, g.threshold
    )
    INSERT INTO scatter_sample (run_id, day, fraud, key, id, {_VALUES})
    SELECT c.run_id, c.day, c.now, c.key, c.id, {", ".join(f"c.{c}" for c in _INPUTS)}, c.label,
           c.score, c.recon_error, c.alert, c.model_version
    FROM c JOIN groups g ON g.run_id = c.run_id AND g.day = c.day AND g.fraud = c.now
    WHERE c.key < g.threshold
    ON CONFLICT DO NOTHING;
    {_SETTLE.format(affected=_CHANGED_DAYS)}
    RETURN NULL;
END
$$"""

_DELETED_DAYS = "SELECT DISTINCT o.run_id, o.day FROM old_rows o"

_FORGET_SCORES = f"""
CREATE FUNCTION scatter_sample_forget_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_LOCK.format(affected=_DELETED_DAYS)}
    {_LEAVE.format(rows="SELECT o.run_id, o.id, o.day, o.fraud FROM old_rows o")}
    {_SETTLE.format(affected=_DELETED_DAYS)}
    RETURN NULL;
END
$$"""

_TRUNCATE = """
CREATE FUNCTION scatter_sample_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE scatter_sample, scatter_sample_state;
    RETURN NULL;
END
$$"""

_TRIGGERS = (
    "CREATE TRIGGER scatter_sample_prune AFTER INSERT OR UPDATE ON scatter_sample_state FOR EACH ROW "
    "WHEN (NEW.sampled > 2 * scatter_sample_k()) EXECUTE FUNCTION scatter_sample_prune()",
    # named to fire after 0016's `scores_fraud_follow_label` (a table's triggers fire in name
    # order): a rebuild reads the groups' rows by `scores.fraud`, which must be the new label's
    "CREATE TRIGGER scores_then_scatter_sample_follow_label AFTER UPDATE ON transactions "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION scatter_sample_follow_label()",
    "CREATE TRIGGER scatter_sample_forget_scores AFTER DELETE ON scores REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION scatter_sample_forget_scores()",
    *(
        f"CREATE TRIGGER scatter_sample_{table}_truncate AFTER TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION scatter_sample_truncate()"
        for table in ("transactions", "scores")
    ),
)


def upgrade() -> None:
    op.execute(_KEY)
    op.execute(_K)
    op.create_table(
        "scatter_sample_state",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("fraud", sa.Boolean(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("sampled", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "day", "fraud", name="pk_scatter_sample_state"),
    )
    op.create_table(
        "scatter_sample",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("fraud", sa.Boolean(), nullable=False),
        sa.Column("key", sa.Double(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        *(sa.Column(name, sa.Double(), nullable=False) for name in _INPUTS),
        sa.Column("label", sa.SmallInteger(), nullable=True),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("recon_error", sa.Double(), nullable=False),
        sa.Column("alert", sa.Boolean(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "day", "fraud", "key", "id", name="pk_scatter_sample"),
    )
    op.create_index("ix_scatter_sample_read", "scatter_sample", ["run_id", "fraud", "key", "id"])
    for statement in (_PRUNE, _REBUILD, _FOLLOW_LABEL, _FORGET_SCORES, _TRUNCATE, *_TRIGGERS):
        op.execute(statement)
    op.execute(_fill("true"))  # the rows already stored


def downgrade() -> None:
    for trigger, table in (
        ("scores_then_scatter_sample_follow_label", "transactions"),
        ("scatter_sample_forget_scores", "scores"),
        ("scatter_sample_transactions_truncate", "transactions"),
        ("scatter_sample_scores_truncate", "scores"),
    ):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    op.drop_table("scatter_sample")
    op.drop_table("scatter_sample_state")  # its prune trigger with it
    for function in (
        "scatter_sample_truncate()",
        "scatter_sample_forget_scores()",
        "scatter_sample_follow_label()",
        "scatter_sample_rebuild(text, int4[])",
        "scatter_sample_prune()",
        "scatter_sample_k()",
        "scatter_key(text, text)",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
