"""wide kept figures, and no TRUNCATE of the append-only tables

The running sums of amounts that posting keeps (`accounts.given/received`,
`ledger_heads.counted_volume`, `pair_flows.a_to_b/b_to_a/imbalance`) were BIGINT: about ten
thousand exchanges at the largest amount (10^15) passed 2^63 - 1, and from then on every post in
the community failed. They become NUMERIC(38, 0) on PostgreSQL. SQLite has only 64-bit integers,
so there they are 38 zero-padded decimal digits (text that sorts and compares like the number;
protocoop does the arithmetic in Python). On SQLite the `imbalance_is_net` CHECK, which would need
that arithmetic in SQL, is dropped; the full audit still checks every pair flow.

On PostgreSQL the append-only tables (`exchanges`, `entries`, `audit_log`) refused UPDATE and
DELETE row by row, but TRUNCATE fires no row triggers: statement-level triggers now refuse it.
(SQLite has no TRUNCATE, and its `DELETE FROM t` fires the existing row triggers.)

Downgrading refuses while any figure is past what BIGINT holds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 09:02:11.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGITS = 38
FIGURES = {
    "accounts": ("given", "received"),
    "ledger_heads": ("counted_volume",),
    "pair_flows": ("a_to_b", "b_to_a", "imbalance"),
}
SERVER_DEFAULTS = {"given", "received", "counted_volume"}
APPEND_ONLY_TABLES = ("exchanges", "entries", "audit_log")
IMBALANCE_CHECK = "imbalance = a_to_b - b_to_a OR imbalance = b_to_a - a_to_b"
BIGINT_MAX = 2**63 - 1


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    sqlite = _sqlite()
    wide: sa.types.TypeEngine[object] = (
        sa.String(length=DIGITS) if sqlite else sa.Numeric(precision=DIGITS, scale=0)
    )
    for table, columns in FIGURES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            if sqlite and table == "pair_flows":
                batch_op.drop_constraint(op.f("ck_pair_flows_imbalance_is_net"), type_="check")
            for column in columns:
                batch_op.alter_column(
                    column,
                    existing_type=sa.BigInteger(),
                    type_=wide,
                    existing_nullable=False,
                    **(
                        {"server_default": "0" * DIGITS if sqlite else "0"}
                        if column in SERVER_DEFAULTS
                        else {}
                    ),
                )
        if sqlite:  # the copy wrote '123'; figures are fixed-width so that text order is numeric
            op.execute(
                f"UPDATE {table} SET "
                + ", ".join(f"{column} = printf('%0{DIGITS}d', {column})" for column in columns)
            )
    if not sqlite:
        _create_truncate_triggers()


def _create_truncate_triggers() -> None:
    op.execute(
        """
        CREATE FUNCTION protocoop_refuse_truncate() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'protocoop table % is append-only: TRUNCATE is refused', TG_TABLE_NAME
                USING ERRCODE = 'integrity_constraint_violation';
        END $$
        """
    )
    for table in APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION protocoop_refuse_truncate()"
        )


def downgrade() -> None:
    sqlite = _sqlite()
    bind = op.get_bind()
    for table, columns in FIGURES.items():
        # On SQLite the figures are text: compare them as fixed-width text, not as numbers.
        limit = f"'{BIGINT_MAX:0{DIGITS}d}'" if sqlite else str(BIGINT_MAX)
        too_wide = " OR ".join(f"{column} > {limit}" for column in columns)
        found = bind.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE {too_wide}")).scalar()
        if found:
            raise RuntimeError(
                f"cannot downgrade: {found} row(s) of {table} keep a figure past 2^63 - 1, "
                "which BIGINT cannot hold"
            )
    if not sqlite:
        for table in APPEND_ONLY_TABLES:
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION protocoop_refuse_truncate()")
    for table, columns in FIGURES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(
                    column,
                    existing_type=(
                        sa.String(length=DIGITS)
                        if sqlite
                        else sa.Numeric(precision=DIGITS, scale=0)
                    ),
                    type_=sa.BigInteger(),
                    existing_nullable=False,
                    postgresql_using=f"{column}::bigint",
                    **({"server_default": "0"} if column in SERVER_DEFAULTS else {}),
                )
            if sqlite and table == "pair_flows":
                batch_op.create_check_constraint(
                    op.f("ck_pair_flows_imbalance_is_net"), IMBALANCE_CHECK
                )
