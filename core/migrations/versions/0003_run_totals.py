"""run totals: per-run counters kept by statement-level triggers

The API's totals (rows, labelled rows, frauds, scored rows, alerts of a run) were full
scans of both tables on every refresh. Statement-level AFTER triggers with transition
tables add each statement's counts to one `run_totals` row per run (one grouped pass
over the statement's own rows: the scorer's 4,000-row batch pays for 4,000 rows, not
for the table), subtract deleted rows, re-count updated ones, and zero a truncated
table's part. Existing rows are counted once here.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25 17:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

#: (table, counter columns, the aggregate for each column over a transition table)
_COUNTERS = {
    "transactions": {
        "transactions": "count(*)",
        "labelled": "count(label)",
        "frauds": "count(*) FILTER (WHERE label = 1)",
    },
    "scores": {
        "scored": "count(*)",
        "alerts": "count(*) FILTER (WHERE alert)",
    },
}


def _upsert(table: str, rows: str, sign: str) -> str:
    """Add (sign '+') or subtract (sign '-') the counts of transition table `rows`, per run, run order."""
    counters = _COUNTERS[table]
    columns = ", ".join(counters)
    aggregates = ", ".join(f"{sign}{aggregate}" for aggregate in counters.values())
    updates = ", ".join(f"{name} = r.{name} + EXCLUDED.{name}" for name in counters)
    return (
        f"INSERT INTO run_totals AS r (run_id, {columns}) "
        f"SELECT run_id, {aggregates} FROM {rows} GROUP BY run_id ORDER BY run_id "
        f"ON CONFLICT (run_id) DO UPDATE SET {updates};"
    )


def upgrade() -> None:
    op.create_table(
        "run_totals",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("transactions", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("labelled", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("frauds", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("scored", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("alerts", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_totals"),
    )
    for table, counters in _COUNTERS.items():
        zero = ", ".join(f"{name} = 0" for name in counters)
        op.execute(f"""
CREATE FUNCTION run_totals_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_upsert(table, "new_rows", "+")}
    ELSIF TG_OP = 'DELETE' THEN
        {_upsert(table, "old_rows", "-")}
    ELSIF TG_OP = 'UPDATE' THEN
        {_upsert(table, "old_rows", "-")}
        {_upsert(table, "new_rows", "+")}
    ELSE
        UPDATE run_totals SET {zero};
    END IF;
    RETURN NULL;
END
$$""")
        for event, tables in (
            ("INSERT", "NEW TABLE AS new_rows"),
            ("DELETE", "OLD TABLE AS old_rows"),
            ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ):
            op.execute(
                f"CREATE TRIGGER run_totals_{table}_{event.lower()} AFTER {event} ON {table} "
                f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION run_totals_{table}()"
            )
        op.execute(
            f"CREATE TRIGGER run_totals_{table}_truncate AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION run_totals_{table}()"
        )
    op.execute("""
INSERT INTO run_totals (run_id, transactions, labelled, frauds, scored, alerts)
SELECT run_id, coalesce(t.n, 0), coalesce(t.labelled, 0), coalesce(t.frauds, 0),
       coalesce(s.n, 0), coalesce(s.alerts, 0)
FROM (SELECT run_id, count(*) AS n, count(label) AS labelled, count(*) FILTER (WHERE label = 1) AS frauds
      FROM transactions GROUP BY run_id) t
FULL JOIN (SELECT run_id, count(*) AS n, count(*) FILTER (WHERE alert) AS alerts
           FROM scores GROUP BY run_id) s USING (run_id)
""")


def downgrade() -> None:
    for table in _COUNTERS:
        for event in ("insert", "delete", "update", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS run_totals_{table}_{event} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS run_totals_{table}()")
    op.drop_table("run_totals")
