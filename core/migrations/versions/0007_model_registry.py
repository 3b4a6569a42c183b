"""model registry: a champion and at most one shadow, content-addressed bundles, an audit trail

`model_versions` was "which bundles exist and which one is active", with the bundle's
path as whoever registered it wrote it. A folder is not an identity: training twice into
`models/default` left two versions pointing at one folder that held only the second, so
workers could not load the first again and "kept" whatever they had. Now:

- `bundle_path` is where the registry keeps the version's own copy (a content-addressed
  store, one directory per version, written once); `source_path` records the folder it
  was registered from, for people; `registered_by` says who registered it.
- `active` keeps its meaning (the champion: what live traffic is scored with); `shadow`
  marks the challenger scored beside it. At most one of each (unique partial indexes),
  and never both for one version (a check).
- `model_events` is an append-only audit trail (registered, promoted, shadow_on,
  shadow_off): who did what to which version, when. Triggers refuse UPDATE, DELETE and
  TRUNCATE, so the trail cannot be rewritten through SQL short of dropping the trigger.

Existing rows keep their path as `source_path` too; their `bundle_path` stays the folder
(nothing can copy files from a migration), which the resolver verifies before use.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ACTIONS = ("registered", "promoted", "shadow_on", "shadow_off")


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("source_path", sa.Text(), nullable=True))
    op.add_column(
        "model_versions",
        sa.Column("registered_by", sa.Text(), server_default=sa.text("'unknown'"), nullable=False),
    )
    op.add_column(
        "model_versions", sa.Column("shadow", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.execute("UPDATE model_versions SET source_path = bundle_path")
    op.create_check_constraint(
        "ck_model_versions_champion_or_shadow", "model_versions", "NOT (active AND shadow)"
    )
    op.create_index(
        "ux_model_versions_one_shadow",
        "model_versions",
        ["shadow"],
        unique=True,
        postgresql_where=sa.text("shadow"),
    )
    op.create_table(
        "model_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "action IN (" + ", ".join(f"'{a}'" for a in ACTIONS) + ")", name="ck_model_events_action"
        ),
        sa.ForeignKeyConstraint(["version"], ["model_versions.version"], name="fk_model_events_version"),
        sa.PrimaryKeyConstraint("id", name="pk_model_events"),
    )
    op.create_index("ix_model_events_version_at", "model_events", ["version", "at"], unique=False)
    op.execute("""
CREATE FUNCTION model_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'model_events is append-only (% refused)', TG_OP;
END
$$""")
    op.execute(
        "CREATE TRIGGER model_events_append_only BEFORE UPDATE OR DELETE ON model_events "
        "FOR EACH ROW EXECUTE FUNCTION model_events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER model_events_no_truncate BEFORE TRUNCATE ON model_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION model_events_append_only()"
    )
    # What is already registered gets its history started, so "who made this the champion" has an answer.
    op.execute(
        "INSERT INTO model_events (version, action, actor, at, note) "
        "SELECT version, 'registered', 'unknown', created_at, 'recorded before the audit trail (0007)' "
        "FROM model_versions ORDER BY created_at"
    )
    op.execute(
        "INSERT INTO model_events (version, action, actor, note) "
        "SELECT version, 'promoted', 'unknown', 'champion when the audit trail began (0007)' "
        "FROM model_versions WHERE active"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS model_events_no_truncate ON model_events")
    op.execute("DROP TRIGGER IF EXISTS model_events_append_only ON model_events")
    op.execute("DROP FUNCTION IF EXISTS model_events_append_only()")
    op.drop_index("ix_model_events_version_at", table_name="model_events")
    op.drop_table("model_events")
    op.drop_index("ux_model_versions_one_shadow", table_name="model_versions")
    op.drop_constraint("ck_model_versions_champion_or_shadow", "model_versions", type_="check")
    op.drop_column("model_versions", "shadow")
    op.drop_column("model_versions", "registered_by")
    op.drop_column("model_versions", "source_path")
