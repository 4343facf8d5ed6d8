"""mutuality policy and audit checkpoints

Each community gets the thresholds its mutuality report uses (DESIGN §3), with defaults, and
a checkpoint recording how far its ledger has been fully verified, so the report can verify
only what came after.

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


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_communities_dormant_after_days_positive"), type_="check")
        batch_op.drop_constraint(op.f("ck_communities_near_limit_ratio_range"), type_="check")
        batch_op.drop_constraint(op.f("ck_communities_reciprocity_threshold_range"), type_="check")
        batch_op.drop_column("dormant_after_days")
        batch_op.drop_column("near_limit_ratio")
        batch_op.drop_column("reciprocity_threshold")

