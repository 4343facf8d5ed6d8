"""Balance, statement and trial-balance documents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocoop.communities.schemas import Unit
from protocoop.schemas import ResponseModel, Timestamp


class BalancePublic(ResponseModel):
    member: str
    balance: int = Field(description="Minor units; positive = has given more than received.")
    lower_limit: int
    upper_limit: int | None
    available_to_spend: int = Field(
        description="How much more the member can receive before reaching the lower limit."
    )
    available_to_earn: int | None = Field(
        description="How much more the member can give before reaching the upper limit; "
        "null when there is no upper limit."
    )
    reserved_debit: int = 0
    reserved_credit: int = 0
    as_of_seq: int = Field(description="The ledger position the balance is read at.")
    unit: Unit


class AccountBalance(ResponseModel):
    account: str
    kind: Literal["member", "system"]
    balance: int
    lower_limit: int
    upper_limit: int | None


class BalancesPage(ResponseModel):
    """Every account's balance at one ledger position; all pages share `as_of_seq`."""

    as_of_seq: int
    sum: int = Field(description="Sum over the whole snapshot (always 0 in a whole ledger).")
    items: list[AccountBalance]
    next_cursor: str | None = None


class StatementLine(ResponseModel):
    seq: int
    exchange_id: str
    created_at: Timestamp
    counterparty: str
    description: str
    amount: int = Field(description="Signed change to this member's balance.")
    balance_after: int


class Statement(ResponseModel):
    member: str
    opening_balance: int = Field(description="The balance just before the window.")
    closing_balance: int = Field(description="The balance at the end of the window.")
    from_seq: int = Field(description="The window covers seq from_seq+1 .. to_seq.")
    to_seq: int
    items: list[StatementLine]
    next_cursor: str | None = None


class TrialBalance(ResponseModel):
    as_of_seq: int
    accounts: int
    total_positive: int
    total_negative: int
    sum: int
