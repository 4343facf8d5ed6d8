"""exchange workflows

Pending exchanges that reserve their amount until settled, levies into @commons (a community
policy, recorded on each exchange), and the event outbox numbered under the ledger head's lock.
On SQLite, adding a CHECK to `exchanges` rebuilds the table, so its append-only triggers are
created again afterwards.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 06:29:09.555177
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["community_id"],
            ["ledger_heads.community_id"],
            name=op.f("fk_events_community_id_ledger_heads"),
        ),
        sa.PrimaryKeyConstraint("community_id", "id", name=op.f("pk_events")),
    )
    op.create_table(
        "pending_exchanges",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=63), nullable=False),
        sa.Column("receiver", sa.String(length=63), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("levy_amount", sa.BigInteger(), nullable=True),
        sa.Column("levy_paid_by", sa.String(length=16), nullable=True),
        sa.Column("initiated_by", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.CheckConstraint(
            "initiated_by IN ('provider', 'receiver')",
            name=op.f("ck_pending_exchanges_initiator_known"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'completed', 'rejected', 'cancelled', 'expired')",
            name=op.f("ck_pending_exchanges_status_known"),
        ),
        sa.CheckConstraint(
            "(levy_amount IS NULL) = (levy_paid_by IS NULL) AND (levy_amount IS NULL OR levy_amount > 0)",
            name=op.f("ck_pending_exchanges_levy_consistent"),
        ),
        sa.CheckConstraint(
            "amount > 0 AND amount <= 1000000000000000",
            name=op.f("ck_pending_exchanges_amount_range"),
        ),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_pending_exchanges_expires_after_creation")
        ),
        sa.CheckConstraint(
            "length(description) >= 1", name=op.f("ck_pending_exchanges_description_nonempty")
        ),
        sa.CheckConstraint(
            "provider <> receiver", name=op.f("ck_pending_exchanges_distinct_parties")
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "provider"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_pending_exchanges_community_id_provider_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "receiver"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_pending_exchanges_community_id_receiver_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["api_keys.id"], name=op.f("fk_pending_exchanges_created_by_api_keys")
        ),
        sa.PrimaryKeyConstraint("community_id", "id", name=op.f("pk_pending_exchanges")),
        sa.UniqueConstraint(
            "community_id",
            "external_id",
            name=op.f("uq_pending_exchanges_community_id_external_id"),
        ),
    )
    with op.batch_alter_table("pending_exchanges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pending_exchanges_community_id_status_expires_at"),
            ["community_id", "status", "expires_at"],
            unique=False,
        )

    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("levy_rate_ppm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("levy_minimum", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("levy_paid_by", sa.String(length=16), nullable=True))
        batch_op.create_check_constraint(
            "levy_complete_or_absent",
            "(levy_rate_ppm IS NULL) = (levy_paid_by IS NULL) "
            "AND (levy_rate_ppm IS NULL) = (levy_minimum IS NULL)",
        )
        batch_op.create_check_constraint(
            "levy_rate_range",
            "levy_rate_ppm IS NULL OR (levy_rate_ppm >= 0 AND levy_rate_ppm <= 1000000)",
        )
        batch_op.create_check_constraint(
            "levy_minimum_nonnegative", "levy_minimum IS NULL OR levy_minimum >= 0"
        )
        batch_op.create_check_constraint(
            "levy_payer_known", "levy_paid_by IS NULL OR levy_paid_by IN ('provider', 'receiver')"
        )

    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("levy_amount", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("levy_paid_by", sa.String(length=16), nullable=True))
        batch_op.create_check_constraint(
            "levy_consistent",
            "(levy_amount IS NULL) = (levy_paid_by IS NULL) AND "
            "(levy_amount IS NULL OR levy_amount > 0)",
        )
    _sqlite_exchanges_append_only()

    with op.batch_alter_table("ledger_heads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_event_id", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.create_check_constraint("last_event_id_nonnegative", "last_event_id >= 0")


def _sqlite_exchanges_append_only() -> None:
    """SQLite drops a table's triggers when batch mode rebuilds it; put them back."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for action in ("UPDATE", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS exchanges_no_{action.lower()}")
        op.execute(
            f"CREATE TRIGGER exchanges_no_{action.lower()} BEFORE {action} ON exchanges "
            "BEGIN SELECT RAISE(ABORT, 'protocoop ledger table exchanges is append-only'); END"
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_heads", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_ledger_heads_last_event_id_nonnegative"), type_="check")
        batch_op.drop_column("last_event_id")

    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_exchanges_levy_consistent"), type_="check")
        batch_op.drop_column("levy_paid_by")
        batch_op.drop_column("levy_amount")
    _sqlite_exchanges_append_only()

    with op.batch_alter_table("communities", schema=None) as batch_op:
        for name in (
            "levy_payer_known",
            "levy_minimum_nonnegative",
            "levy_rate_range",
            "levy_complete_or_absent",
        ):
            batch_op.drop_constraint(op.f(f"ck_communities_{name}"), type_="check")
        batch_op.drop_column("levy_paid_by")
        batch_op.drop_column("levy_minimum")
        batch_op.drop_column("levy_rate_ppm")

    with op.batch_alter_table("pending_exchanges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_exchanges_community_id_status_expires_at"))

    op.drop_table("pending_exchanges")
    op.drop_table("events")
