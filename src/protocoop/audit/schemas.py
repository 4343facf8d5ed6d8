"""Audit documents."""

from __future__ import annotations

from pydantic import Field

from protocoop.schemas import ResponseModel


class AuditProblem(ResponseModel):
    invariant: int = Field(description="Which of DESIGN §1's invariants does not hold (1-5).")
    code: str = Field(description="Stable machine code of the problem.")
    detail: str
    exchange_id: str | None = None
    account: str | None = None
    seq: int | None = None


class AuditReport(ResponseModel):
    ok: bool
    checked_exchanges: int
    problems: list[AuditProblem]
