"""foundation and ledger tables

Communities, members and their accounts, API keys, and the append-only ledger (exchanges,
entries) with its head row and idempotency records. Triggers refuse UPDATE and DELETE on the
ledger tables, so history can only grow (invariant 6).

Revision ID: 0001
Revises:
Create Date: 2026-11-26 05:27:01.759059
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "communities",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("unit_code", sa.String(length=16), nullable=False),
        sa.Column("unit_name", sa.String(length=100), nullable=False),
        sa.Column("unit_scale", sa.SmallInteger(), nullable=False),
        sa.Column("default_lower_limit", sa.BigInteger(), nullable=False),
        sa.Column("default_upper_limit", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'suspended')", name=op.f("ck_communities_status_known")
        ),
        sa.CheckConstraint(
            "default_lower_limit <= 0", name=op.f("ck_communities_default_lower_limit_nonpositive")
        ),
        sa.CheckConstraint(
            "default_upper_limit IS NULL OR default_upper_limit >= 0",
            name=op.f("ck_communities_default_upper_limit_nonnegative"),
        ),
        sa.CheckConstraint(
            "unit_scale >= 0 AND unit_scale <= 6", name=op.f("ck_communities_unit_scale_range")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_communities")),
    )
    op.create_table(
        "accounts",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("lower_limit", sa.BigInteger(), nullable=False),
        sa.Column("upper_limit", sa.BigInteger(), nullable=True),
        sa.Column("reserved_debit", sa.BigInteger(), nullable=False),
        sa.Column("reserved_credit", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(kind = 'system') = (id LIKE '@%')", name=op.f("ck_accounts_system_ids_start_with_at")
        ),
        sa.CheckConstraint("kind IN ('member', 'system')", name=op.f("ck_accounts_kind_known")),
        sa.CheckConstraint(
            "balance - reserved_debit >= lower_limit", name=op.f("ck_accounts_within_lower_limit")
        ),
        sa.CheckConstraint(
            "balance >= -1000000000000000000 AND balance + reserved_credit <= 1000000000000000000",
            name=op.f("ck_accounts_balance_bounded"),
        ),
        sa.CheckConstraint("lower_limit <= 0", name=op.f("ck_accounts_lower_limit_nonpositive")),
        sa.CheckConstraint(
            "reserved_debit >= 0 AND reserved_credit >= 0",
            name=op.f("ck_accounts_reservations_nonnegative"),
        ),
        sa.CheckConstraint(
            "upper_limit IS NULL OR balance + reserved_credit <= upper_limit",
            name=op.f("ck_accounts_within_upper_limit"),
        ),
        sa.CheckConstraint(
            "upper_limit IS NULL OR upper_limit >= 0",
            name=op.f("ck_accounts_upper_limit_nonnegative"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id"], ["communities.id"], name=op.f("fk_accounts_community_id_communities")
        ),
        sa.PrimaryKeyConstraint("community_id", "id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("community_id", sa.String(length=63), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(role = 'admin') = (community_id IS NULL)",
            name=op.f("ck_api_keys_only_admin_is_global"),
        ),
        sa.CheckConstraint(
            "role IN ('admin', 'treasurer', 'app', 'auditor')", name=op.f("ck_api_keys_role_known")
        ),
        sa.ForeignKeyConstraint(
            ["community_id"], ["communities.id"], name=op.f("fk_api_keys_community_id_communities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_keys_token_hash")),
    )
    op.create_table(
        "ledger_heads",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("last_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("last_seq >= 0", name=op.f("ck_ledger_heads_last_seq_nonnegative")),
        sa.ForeignKeyConstraint(
            ["community_id"],
            ["communities.id"],
            name=op.f("fk_ledger_heads_community_id_communities"),
        ),
        sa.PrimaryKeyConstraint("community_id", name=op.f("pk_ledger_heads")),
    )
    op.create_table(
        "exchanges",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(length=63), nullable=False),
        sa.Column("receiver", sa.String(length=63), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reverses", sa.String(length=36), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint(
            "amount > 0 AND amount <= 1000000000000000", name=op.f("ck_exchanges_amount_range")
        ),
        sa.CheckConstraint(
            "length(description) >= 1", name=op.f("ck_exchanges_description_nonempty")
        ),
        sa.CheckConstraint("provider <> receiver", name=op.f("ck_exchanges_distinct_parties")),
        sa.CheckConstraint("seq > 0", name=op.f("ck_exchanges_seq_positive")),
        sa.ForeignKeyConstraint(
            ["community_id", "provider"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_exchanges_community_id_provider_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "receiver"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_exchanges_community_id_receiver_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "reverses"],
            ["exchanges.community_id", "exchanges.id"],
            name=op.f("fk_exchanges_community_id_reverses_exchanges"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["api_keys.id"], name=op.f("fk_exchanges_created_by_api_keys")
        ),
        sa.PrimaryKeyConstraint("community_id", "id", name=op.f("pk_exchanges")),
        sa.UniqueConstraint(
            "community_id", "external_id", name=op.f("uq_exchanges_community_id_external_id")
        ),
        sa.UniqueConstraint(
            "community_id", "reverses", name=op.f("uq_exchanges_community_id_reverses")
        ),
        sa.UniqueConstraint("community_id", "seq", name=op.f("uq_exchanges_community_id_seq")),
    )
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_exchanges_community_id_created_at"),
            ["community_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "idempotency_records",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_idempotency_records_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint(
            "community_id", "api_key_id", "key", name=op.f("pk_idempotency_records")
        ),
    )
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_records_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "members",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('person', 'organization')", name=op.f("ck_members_kind_known")
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'closed')", name=op.f("ck_members_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "id"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_members_community_id_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id"], ["communities.id"], name=op.f("fk_members_community_id_communities")
        ),
        sa.PrimaryKeyConstraint("community_id", "id", name=op.f("pk_members")),
    )
    op.create_table(
        "entries",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("exchange_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_entries_amount_nonzero")),
        sa.ForeignKeyConstraint(
            ["community_id", "account_id"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_entries_community_id_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "exchange_id"],
            ["exchanges.community_id", "exchanges.id"],
            name=op.f("fk_entries_community_id_exchange_id_exchanges"),
        ),
        sa.PrimaryKeyConstraint(
            "community_id", "exchange_id", "account_id", name=op.f("pk_entries")
        ),
        sa.UniqueConstraint(
            "community_id", "account_id", "seq", name=op.f("uq_entries_community_id_account_id_seq")
        ),
    )
    _create_append_only_triggers()


LEDGER_TABLES = ("exchanges", "entries")


def _create_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION protocoop_refuse_ledger_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'protocoop ledger table % is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'integrity_constraint_violation';
            END $$
            """
        )
        for table in LEDGER_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION protocoop_refuse_ledger_change()"
            )
    else:
        for table in LEDGER_TABLES:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'protocoop ledger table {table} is append-only'); END"
                )


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in LEDGER_TABLES:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute("DROP FUNCTION protocoop_refuse_ledger_change()")
    else:
        for table in LEDGER_TABLES:
            for action in ("update", "delete"):
                op.execute(f"DROP TRIGGER {table}_no_{action}")


def downgrade() -> None:
    _drop_append_only_triggers()
    op.drop_table("entries")
    op.drop_table("members")
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_records_created_at"))

    op.drop_table("idempotency_records")
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_exchanges_community_id_created_at"))

    op.drop_table("exchanges")
    op.drop_table("ledger_heads")
    op.drop_table("api_keys")
    op.drop_table("accounts")
    op.drop_table("communities")
