"""links between communities, and intertrades across them

A link (`links`) lets two communities trade: an exchange rate and a cap on each side's balance
of trade. Each side of an intertrade is an exchange of its own community that names the
intertrade (`exchanges.intertrade_id`, hashed when set); `intertrades` pairs the two sides and
keeps the rate they were converted at. `intertrades` is append-only, like the ledger.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from protocoop.db.base import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_AMOUNT = 10**15
MAX_BALANCE = 10**18


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("a", sa.String(63), nullable=False),
        sa.Column("b", sa.String(63), nullable=False),
        sa.Column("low", sa.String(63), nullable=False),
        sa.Column("high", sa.String(63), nullable=False),
        sa.Column("rate_a", sa.BigInteger(), nullable=False),
        sa.Column("rate_b", sa.BigInteger(), nullable=False),
        sa.Column("a_cap", sa.BigInteger(), nullable=False),
        sa.Column("b_cap", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("a <> b", name=op.f("ck_links_distinct_communities")),
        sa.CheckConstraint(
            "low < high AND ((a = low AND b = high) OR (a = high AND b = low))",
            name=op.f("ck_links_pair_is_a_and_b"),
        ),
        sa.CheckConstraint(
            f"rate_a > 0 AND rate_a <= {MAX_AMOUNT} AND rate_b > 0 AND rate_b <= {MAX_AMOUNT}",
            name=op.f("ck_links_rate_range"),
        ),
        sa.CheckConstraint(
            f"a_cap >= 0 AND a_cap <= {MAX_BALANCE} AND b_cap >= 0 AND b_cap <= {MAX_BALANCE}",
            name=op.f("ck_links_caps_range"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'closed')", name=op.f("ck_links_status_known")
        ),
        sa.ForeignKeyConstraint(["a"], ["communities.id"], name=op.f("fk_links_a_communities")),
        sa.ForeignKeyConstraint(["b"], ["communities.id"], name=op.f("fk_links_b_communities")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_links")),
        sa.UniqueConstraint("low", "high", name=op.f("uq_links_low_high")),
    )
    # A plain ADD COLUMN and an index: a batch rebuild of `exchanges` on SQLite would drop its
    # append-only triggers with the old table.
    op.add_column("exchanges", sa.Column("intertrade_id", sa.String(36), nullable=True))
    op.create_index(
        op.f("ix_exchanges_community_id_intertrade_id"),
        "exchanges",
        ["community_id", "intertrade_id"],
        unique=True,
    )
    op.create_table(
        "intertrades",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("link_id", sa.String(36), nullable=False),
        sa.Column("provider_community", sa.String(63), nullable=False),
        sa.Column("provider", sa.String(63), nullable=False),
        sa.Column("provider_amount", sa.BigInteger(), nullable=False),
        sa.Column("provider_exchange_id", sa.String(36), nullable=False),
        sa.Column("receiver_community", sa.String(63), nullable=False),
        sa.Column("receiver", sa.String(63), nullable=False),
        sa.Column("receiver_amount", sa.BigInteger(), nullable=False),
        sa.Column("receiver_exchange_id", sa.String(36), nullable=False),
        sa.Column("amount_in", sa.String(16), nullable=False),
        sa.Column("rate_a", sa.BigInteger(), nullable=False),
        sa.Column("rate_b", sa.BigInteger(), nullable=False),
        sa.Column("reverses", sa.String(36), nullable=True),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "provider_community <> receiver_community", name=op.f("ck_intertrades_two_communities")
        ),
        sa.CheckConstraint(
            f"provider_amount > 0 AND provider_amount <= {MAX_AMOUNT} AND "
            f"receiver_amount > 0 AND receiver_amount <= {MAX_AMOUNT}",
            name=op.f("ck_intertrades_amounts_range"),
        ),
        sa.CheckConstraint("rate_a > 0 AND rate_b > 0", name=op.f("ck_intertrades_rate_positive")),
        sa.CheckConstraint(
            "amount_in IN ('provider', 'receiver')", name=op.f("ck_intertrades_amount_in_known")
        ),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name=op.f("fk_intertrades_link_id_links")
        ),
        sa.ForeignKeyConstraint(
            ["provider_community"],
            ["communities.id"],
            name=op.f("fk_intertrades_provider_community_communities"),
        ),
        sa.ForeignKeyConstraint(
            ["receiver_community"],
            ["communities.id"],
            name=op.f("fk_intertrades_receiver_community_communities"),
        ),
        sa.ForeignKeyConstraint(
            ["provider_community", "provider_exchange_id"],
            ["exchanges.community_id", "exchanges.id"],
            name=op.f("fk_intertrades_provider_community_provider_exchange_id__06ee"),
        ),
        sa.ForeignKeyConstraint(
            ["receiver_community", "receiver_exchange_id"],
            ["exchanges.community_id", "exchanges.id"],
            name=op.f("fk_intertrades_receiver_community_receiver_exchange_id__49d0"),
        ),
        sa.ForeignKeyConstraint(
            ["reverses"], ["intertrades.id"], name=op.f("fk_intertrades_reverses_intertrades")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["api_keys.id"], name=op.f("fk_intertrades_created_by_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intertrades")),
        sa.UniqueConstraint("reverses", name=op.f("uq_intertrades_reverses")),
    )
    op.create_index(
        op.f("ix_intertrades_link_id_created_at"), "intertrades", ["link_id", "created_at"]
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER intertrades_append_only BEFORE UPDATE OR DELETE ON intertrades "
            "FOR EACH ROW EXECUTE FUNCTION protocoop_refuse_ledger_change()"
        )
        op.execute(
            "CREATE TRIGGER intertrades_no_truncate BEFORE TRUNCATE ON intertrades "
            "FOR EACH STATEMENT EXECUTE FUNCTION protocoop_refuse_truncate()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER intertrades_no_{action.lower()} BEFORE {action} ON intertrades "
                "BEGIN SELECT RAISE(ABORT, 'protocoop ledger table intertrades is append-only'); "
                "END"
            )


def downgrade() -> None:
    op.drop_index(op.f("ix_intertrades_link_id_created_at"), table_name="intertrades")
    op.drop_table("intertrades")  # its triggers go with it
    op.drop_index(op.f("ix_exchanges_community_id_intertrade_id"), table_name="exchanges")
    op.drop_column("exchanges", "intertrade_id")  # SQLite 3.35+ drops a column in place
    op.drop_table("links")
