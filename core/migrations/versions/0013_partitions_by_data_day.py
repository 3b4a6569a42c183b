"""transactions, scores and shadow_scores partitioned by data day; transaction_keys; retention

- `data_day(time)`: the data day of a data time, `floor(time / 86400)` (the one definition,
  `core.db.partitions.DATA_DAY_FUNCTION`).
- Each of the three tables gains `day int4` (a score's day is its transaction's) and becomes
  `PARTITION BY LIST (run_id)`: `<t>_live` (run '' , `PARTITION BY RANGE (day)`: one partition
  per data day plus `<t>_live_default`) and `<t>_runs` (every backtest run). Primary keys
  are `(run_id, id, day)`; indexes and the statement-level triggers (run totals, review
  queue, rollups) are re-created on the new parents as they were. Existing rows are moved,
  each to its day's partition (created for every live day found and the next days).
- `transaction_keys(run_id, id, day)`: one row per stored transaction, unpartitioned; the
  write inserts there first, so an id stays unique across days (a redelivery or a conflict
  with another time is "already stored"). Kept equal to `transactions` by triggers on
  DELETE and TRUNCATE of `transactions`; a dropped day's keys go with it
  (`core.db.partitions`).
- The rollup triggers read each new score's transaction with its day too (one partition
  probed, not one per retained day).
- `data_days_dropped(day, dropped_at, transactions)`: live days dropped by retention (the
  API says "beyond retention" from it); `maintenance_state`: when the maintenance task last
  ran and what it did.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 22:30:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from core.db import partitions

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: How each table's rows find their day when moved in.
_DAY = {
    "transactions": "SELECT o.*, data_day(o.time) AS day FROM {old} o",
    "scores": "SELECT o.*, coalesce(k.day, 0) AS day FROM {old} o "
    "LEFT JOIN transaction_keys k ON k.run_id = o.run_id AND k.id = o.id",
    "shadow_scores": "SELECT o.*, data_day(o.time) AS day FROM {old} o",
}

#: Each new score's (and relabelled score's) transaction read in its day's partition only.
_ROLLUP_PROBES = {
    "rollups_scores_insert": ("t.id = s.id OFFSET 0", "t.id = s.id AND t.day = s.day OFFSET 0"),
    "rollup_relabel": ("t.id = k.id OFFSET 0", "t.id = k.id AND t.day = s.day OFFSET 0"),
}

_KEYS_TRIGGERS = (
    """
CREATE FUNCTION transaction_keys_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE transaction_keys;
    ELSE
        DELETE FROM transaction_keys k USING old_rows o WHERE k.run_id = o.run_id AND k.id = o.id;
    END IF;
    RETURN NULL;
END
$$""",
    "CREATE TRIGGER transaction_keys_delete AFTER DELETE ON transactions REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION transaction_keys_forget()",
    "CREATE TRIGGER transaction_keys_truncate AFTER TRUNCATE ON transactions "
    "FOR EACH STATEMENT EXECUTE FUNCTION transaction_keys_forget()",
)


def _definitions(table: str) -> tuple[list[str], list[str]]:
    """The table's (non-internal) triggers and its indexes other than the primary key, as DDL."""
    bind = op.get_bind()
    triggers = bind.execute(
        sa.text(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) "
            "AND NOT tgisinternal AND tgname NOT LIKE 'transaction_keys_%' ORDER BY tgname"
        ),
        {"t": table},
    ).scalars()
    indexes = bind.execute(
        sa.text(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = CAST(:t AS regclass) "
            "AND NOT indisprimary ORDER BY indexrelid"
        ),
        {"t": table},
    ).scalars()
    return list(triggers), [index.replace(" ON ONLY ", " ON ") for index in indexes]


def _index_names(table: str) -> list[str]:
    return list(
        op.get_bind()
        .execute(
            sa.text(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = CAST(:t AS regclass) AND NOT i.indisprimary"
            ),
            {"t": table},
        )
        .scalars()
    )


def _patch_rollup_probes(forward: bool) -> None:
    bind = op.get_bind()
    for function, (old, new) in _ROLLUP_PROBES.items():
        source, signature, returns = bind.execute(
            sa.text(
                "SELECT prosrc, pg_get_function_identity_arguments(oid), pg_get_function_result(oid) "
                "FROM pg_proc WHERE proname = :f"
            ),
            {"f": function},
        ).one()
        before, after = (old, new) if forward else (new, old)
        if before not in source:
            raise RuntimeError(f"{function}: expected {before!r} in its body")
        body = source.replace(before, after)
        op.execute(
            f"CREATE OR REPLACE FUNCTION {function}({signature}) RETURNS {returns} LANGUAGE plpgsql AS $fn${body}$fn$"
        )


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(partitions.DATA_DAY_FUNCTION)
    op.create_table(
        "transaction_keys",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "id", name="pk_transaction_keys"),
    )
    op.execute(
        "INSERT INTO transaction_keys (run_id, id, day) SELECT run_id, id, data_day(time) FROM transactions"
    )
    for table in partitions.PARTITIONED:
        old = f"{table}_unpartitioned"
        triggers, indexes = _definitions(table)
        for name in _index_names(table):
            op.execute(f"DROP INDEX {name}")
        op.execute(f"ALTER TABLE {table} RENAME TO {old}")
        op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
        op.execute(
            f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS, day int4 NOT NULL) PARTITION BY LIST (run_id)"
        )
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (run_id, id, day)")
        for statement in partitions.layout_sql(table):
            op.execute(statement)
        days = set(
            bind.execute(
                sa.text(f"SELECT DISTINCT day FROM ({_DAY[table].format(old=old)}) x WHERE run_id = ''")
            )
            .scalars()
            .all()
        )
        newest = max(days, default=0)
        for day in sorted(days | set(range(newest, newest + partitions.DAYS_AHEAD + 1))):
            op.execute(partitions.create_day_sql(table, day))
        op.execute(f"INSERT INTO {table} {_DAY[table].format(old=old)}")
        op.execute(f"DROP TABLE {old}")
        for statement in indexes + triggers:
            op.execute(statement)
    for statement in _KEYS_TRIGGERS:
        op.execute(statement)
    _patch_rollup_probes(forward=True)
    op.create_table(
        "data_days_dropped",
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column(
            "dropped_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("transactions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_data_days_dropped"),
    )
    op.create_table(
        "maintenance_state",
        sa.Column("id", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("last_run_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("newest_day", sa.Integer(), nullable=True),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in ("created", "moved", "dropped", "deferred")
        ),
        sa.CheckConstraint("id", name="ck_maintenance_state_one_row"),
        sa.PrimaryKeyConstraint("id", name="pk_maintenance_state"),
    )


def downgrade() -> None:
    op.drop_table("maintenance_state")
    op.drop_table("data_days_dropped")
    _patch_rollup_probes(forward=False)
    op.execute("DROP TRIGGER transaction_keys_delete ON transactions")
    op.execute("DROP TRIGGER transaction_keys_truncate ON transactions")
    op.execute("DROP FUNCTION transaction_keys_forget()")
    for table in reversed(partitions.PARTITIONED):
        old = f"{table}_partitioned"
        triggers, indexes = _definitions(table)
        for name in _index_names(table):
            op.execute(f"DROP INDEX {name}")
        op.execute(f"ALTER TABLE {table} RENAME TO {old}")
        op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
        op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS)")
        op.execute(f"ALTER TABLE {table} DROP COLUMN day")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (run_id, id)")
        columns = ", ".join(
            f'"{name}"'
            for name in op.get_bind()
            .execute(
                sa.text(
                    "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum"
                ),
                {"t": table},
            )
            .scalars()
        )
        op.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {old}")
        op.execute(f"DROP TABLE {old}")
        for statement in indexes + triggers:
            op.execute(statement)
    op.drop_table("transaction_keys")
    op.execute("DROP FUNCTION data_day(float8)")
