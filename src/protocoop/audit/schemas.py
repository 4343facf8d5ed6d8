"""Audit documents."""

from __future__ import annotations

from pydantic import Field

from protocoop.schemas import ResponseModel, Timestamp


class AuditProblem(ResponseModel):
    invariant: int = Field(
        description="Which of the invariants of docs/design.md §1 does not hold (1-5)."
    )
    code: str = Field(description="Stable machine code of the problem.")
    detail: str
    exchange_id: str | None = None
    account: str | None = None
    seq: int | None = None


class AuditReport(ResponseModel):
    ok: bool
    checked_exchanges: int = Field(description="Exchanges re-hashed and checked one by one.")
    problems: list[AuditProblem]
    from_seq: int = Field(
        default=0,
        description="Exchanges after this seq were checked one by one; 0 for a full audit. "
        "Whole-ledger checks (balances, zero sum, limits, head) always cover everything.",
    )
    checkpoint_at: Timestamp | None = Field(
        default=None, description="When the full audit that verified up to from_seq ran."
    )
