"""mutuality policy, figures and audit checkpoints

Each community gets the thresholds its mutuality report uses (DESIGN §3), with defaults.
Posting keeps the report's figures up to date (given/received/partners per account, flows per
pair, counted volume per ledger), and a checkpoint records how far the ledger has been fully
verified, so the report reads figures and verifies only what came after instead of scanning the
whole history. Existing ledgers get their figures computed here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 05:35:47.095069
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reciprocity_threshold", sa.Float(), server_default="0.5", nullable=False)
        )
        batch_op.add_column(
            sa.Column("near_limit_ratio", sa.Float(), server_default="0.1", nullable=False)
        )
        batch_op.add_column(
            sa.Column("dormant_after_days", sa.Integer(), server_default="90", nullable=False)
        )
        batch_op.create_check_constraint(
            "reciprocity_threshold_range",
            "reciprocity_threshold >= 0 AND reciprocity_threshold <= 1",
        )
        batch_op.create_check_constraint(
            "near_limit_ratio_range", "near_limit_ratio >= 0 AND near_limit_ratio <= 1"
        )
        batch_op.create_check_constraint("dormant_after_days_positive", "dormant_after_days >= 1")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("given", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("received", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("exchange_count", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("partner_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("last_exchange_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_check_constraint(
            "figures_nonnegative",
            "given >= 0 AND received >= 0 AND exchange_count >= 0 AND partner_count >= 0",
        )
    with op.batch_alter_table("ledger_heads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("counted_volume", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("counted_exchanges", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.create_check_constraint(
            "counted_nonnegative", "counted_volume >= 0 AND counted_exchanges >= 0"
        )
    op.create_table(
        "pair_flows",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("a", sa.String(length=63), nullable=False),
        sa.Column("b", sa.String(length=63), nullable=False),
        sa.Column("a_to_b", sa.BigInteger(), nullable=False),
        sa.Column("b_to_a", sa.BigInteger(), nullable=False),
        sa.Column("exchanges", sa.BigInteger(), nullable=False),
        sa.Column("imbalance", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("a < b", name=op.f("ck_pair_flows_ordered")),
        sa.CheckConstraint(
            "a_to_b >= 0 AND b_to_a >= 0 AND exchanges >= 0",
            name=op.f("ck_pair_flows_figures_nonnegative"),
        ),
        sa.CheckConstraint(
            "imbalance = a_to_b - b_to_a OR imbalance = b_to_a - a_to_b",
            name=op.f("ck_pair_flows_imbalance_is_net"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "a"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_pair_flows_community_id_a_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["community_id", "b"],
            ["accounts.community_id", "accounts.id"],
            name=op.f("fk_pair_flows_community_id_b_accounts"),
        ),
        sa.PrimaryKeyConstraint("community_id", "a", "b", name=op.f("pk_pair_flows")),
    )
    with op.batch_alter_table("pair_flows", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pair_flows_community_id_imbalance"),
            ["community_id", "imbalance"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_pair_flows_community_id_b"), ["community_id", "b"], unique=False
        )
    _compute_existing_figures()

    op.create_table(
        "audit_checkpoints",
        sa.Column("community_id", sa.String(length=63), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_audit_checkpoints_seq_nonnegative")),
        sa.ForeignKeyConstraint(
            ["community_id"],
            ["ledger_heads.community_id"],
            name=op.f("fk_audit_checkpoints_community_id_ledger_heads"),
        ),
        sa.PrimaryKeyConstraint("community_id", name=op.f("pk_audit_checkpoints")),
    )


COUNTED = """
    SELECT x.community_id, x.provider, x.receiver, x.amount
    FROM exchanges x
    WHERE x.reverses IS NULL
      AND NOT EXISTS (SELECT 1 FROM exchanges r
                      WHERE r.community_id = x.community_id AND r.reverses = x.id)
"""


def _compute_existing_figures() -> None:
    """Fill the figures for ledgers recorded before they were kept."""
    op.execute(
        f"""
        INSERT INTO pair_flows (community_id, a, b, a_to_b, b_to_a, exchanges, imbalance)
        SELECT community_id, a, b, SUM(a_to_b), SUM(b_to_a), COUNT(*), ABS(SUM(a_to_b) - SUM(b_to_a))
        FROM (SELECT community_id,
                     CASE WHEN provider < receiver THEN provider ELSE receiver END AS a,
                     CASE WHEN provider < receiver THEN receiver ELSE provider END AS b,
                     CASE WHEN provider < receiver THEN amount ELSE 0 END AS a_to_b,
                     CASE WHEN provider < receiver THEN 0 ELSE amount END AS b_to_a
              FROM ({COUNTED}) counted) oriented
        GROUP BY community_id, a, b
        """
    )
    op.execute(
        f"""
        UPDATE accounts SET
          given = COALESCE((SELECT SUM(c.amount) FROM ({COUNTED}) c
                            WHERE c.community_id = accounts.community_id
                              AND c.provider = accounts.id), 0),
          received = COALESCE((SELECT SUM(c.amount) FROM ({COUNTED}) c
                               WHERE c.community_id = accounts.community_id
                                 AND c.receiver = accounts.id), 0),
          exchange_count = (SELECT COUNT(*) FROM ({COUNTED}) c
                            WHERE c.community_id = accounts.community_id
                              AND (c.provider = accounts.id OR c.receiver = accounts.id)),
          partner_count = (SELECT COUNT(*) FROM pair_flows p
                           WHERE p.community_id = accounts.community_id
                             AND (p.a = accounts.id OR p.b = accounts.id)),
          last_exchange_at = (SELECT MAX(x.created_at) FROM exchanges x
                              WHERE x.community_id = accounts.community_id
                                AND (x.provider = accounts.id OR x.receiver = accounts.id))
        """
    )
    op.execute(
        f"""
        UPDATE ledger_heads SET
          counted_volume = COALESCE((SELECT SUM(c.amount) FROM ({COUNTED}) c
                                     WHERE c.community_id = ledger_heads.community_id), 0),
          counted_exchanges = (SELECT COUNT(*) FROM ({COUNTED}) c
                               WHERE c.community_id = ledger_heads.community_id)
        """
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("pair_flows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pair_flows_community_id_b"))
        batch_op.drop_index(batch_op.f("ix_pair_flows_community_id_imbalance"))
    op.drop_table("pair_flows")
    with op.batch_alter_table("ledger_heads", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_ledger_heads_counted_nonnegative"), type_="check")
        batch_op.drop_column("counted_exchanges")
        batch_op.drop_column("counted_volume")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_accounts_figures_nonnegative"), type_="check")
        batch_op.drop_column("last_exchange_at")
        batch_op.drop_column("partner_count")
        batch_op.drop_column("exchange_count")
        batch_op.drop_column("received")
        batch_op.drop_column("given")
    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_communities_dormant_after_days_positive"), type_="check")
        batch_op.drop_constraint(op.f("ck_communities_near_limit_ratio_range"), type_="check")
        batch_op.drop_constraint(op.f("ck_communities_reciprocity_threshold_range"), type_="check")
        batch_op.drop_column("dormant_after_days")
        batch_op.drop_column("near_limit_ratio")
        batch_op.drop_column("reciprocity_threshold")
