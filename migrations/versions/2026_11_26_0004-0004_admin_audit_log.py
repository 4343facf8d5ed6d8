"""admin audit log

Every change that is not an exchange (communities, members, limits, status, API keys, reversals)
is recorded in `audit_log` with the acting key, the time and the values before and after, in the
same transaction as the change. Like the ledger tables it is append-only: triggers refuse UPDATE
and DELETE on both databases. `community_id` is '' for changes that belong to no community (admin
keys), so the table has no foreign key to the community tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:19:38.539559
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_key_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=100), nullable=False),
        sa.Column(
            "before",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "after",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.CheckConstraint(
            '"before" IS NOT NULL OR "after" IS NOT NULL',
            name=op.f("ck_audit_log_says_what_changed"),
        ),
        sa.CheckConstraint("id > 0", name=op.f("ck_audit_log_id_positive")),
        sa.ForeignKeyConstraint(
            ["actor_key_id"], ["api_keys.id"], name=op.f("fk_audit_log_actor_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("community_id", "id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_log_community_id_action_id"),
            ["community_id", "action", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_audit_log_community_id_target_id"),
            ["community_id", "target", "id"],
            unique=False,
        )
    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION protocoop_refuse_audit_log_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'protocoop audit_log is append-only'
                    USING ERRCODE = 'integrity_constraint_violation';
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION protocoop_refuse_audit_log_change()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{action.lower()} BEFORE {action} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'protocoop audit_log is append-only'); END"
            )


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION protocoop_refuse_audit_log_change()")
    else:
        for action in ("update", "delete"):
            op.execute(f"DROP TRIGGER audit_log_no_{action}")


def downgrade() -> None:
    _drop_append_only_triggers()
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_community_id_target_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_community_id_action_id"))

    op.drop_table("audit_log")
