"""Mutuality report documents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocoop.communities.schemas import Policy
from protocoop.schemas import ResponseModel, Timestamp


class AuditProblem(ResponseModel):
    invariant: int = Field(
        description="Which of the invariants of docs/design.md §1 does not hold (1-5, 8)."
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


class WindowPublic(ResponseModel):
    since: Timestamp | None
    until: Timestamp | None


class IntegrityPublic(ResponseModel):
    """Invariants 1-5. Whole-ledger checks cover everything; exchanges are re-hashed one by one
    after `verified_from_seq`, the point up to which the last full audit verified them."""

    ok: bool
    problems: list[AuditProblem]
    verified_from_seq: int
    checkpoint_at: Timestamp | None


class ZeroSumPublic(ResponseModel):
    ok: bool
    sum: int


class LimitPositionPublic(ResponseModel):
    member: str
    balance: int
    lower_limit: int
    upper_limit: int | None


class LimitsPublic(ResponseModel):
    outside: list[LimitPositionPublic] = Field(description="Must be empty for mutuality to hold.")
    near_lower: list[LimitPositionPublic] = Field(description="Stuck in debt: near the floor.")
    near_upper: list[LimitPositionPublic] = Field(description="Hoarding: near the ceiling.")


class IndicatorsPublic(ResponseModel):
    volume: int = Field(description="Sum of the window's counted amounts (minor units).")
    exchanges: int
    active_members: int
    members: int
    outstanding_credit: int = Field(description="Sum of positive balances at the window's end.")
    velocity: float | None = Field(description="volume / outstanding_credit.")
    mutuality_index: float | None = Field(
        description="1 - (sum of positive net changes) / volume: 1 all matched, 0 all one way."
    )
    dormant_with_balance: int


class MemberReciprocityPublic(ResponseModel):
    member: str
    given: int
    received: int
    exchanges: int
    partners: int
    balance: int
    reciprocity: float | None
    standing: Literal["reciprocal", "net_giver", "net_receiver", "inactive"]


class PairPublic(ResponseModel):
    a: str
    b: str
    a_to_b: int
    b_to_a: int
    net: int


class LinkPositionPublic(ResponseModel):
    other: str
    balance: int = Field(description="The clearing account: below zero, net exports.")
    cap: int
    exports: int
    imports: int
    near_cap: bool


class WarningPublic(ResponseModel):
    code: Literal[
        "near_lower_limit",
        "near_upper_limit",
        "one_way_member",
        "dormant_with_balance",
        "near_link_cap",
    ]
    member: str | None = None
    detail: str


class MutualityPublic(ResponseModel):
    """Does mutuality hold? `holds` is false only when integrity, zero-sum or limits fail;
    reciprocity figures give warnings. Reversed exchanges and reversals are not counted."""

    community: str
    window: WindowPublic
    as_of_seq: int
    holds: bool
    policy: Policy
    integrity: IntegrityPublic
    zero_sum: ZeroSumPublic
    limits: LimitsPublic
    indicators: IndicatorsPublic
    members: list[MemberReciprocityPublic]
    pairs: list[PairPublic] = Field(description="The 20 most imbalanced pairs.")
    links: list[LinkPositionPublic] = Field(
        default_factory=list,
        description="The community's links, over their whole history (not the window).",
    )
    warnings: list[WarningPublic]


class MutualitySummaryPublic(ResponseModel):
    """`MutualityPublic` without its members and pairs: the verdict, limits, indicators, links
    and warnings, as the report gives them (the dashboard's overview)."""

    community: str
    window: WindowPublic
    as_of_seq: int
    holds: bool
    integrity: IntegrityPublic
    zero_sum: ZeroSumPublic
    limits: LimitsPublic
    indicators: IndicatorsPublic
    links: list[LinkPositionPublic]
    warnings: list[WarningPublic]


class PartnerPublic(ResponseModel):
    partner: str
    given: int = Field(description="What the member provided to this partner.")
    received: int = Field(description="What the member received from this partner.")
    exchanges: int
    net: int
    reciprocity: float | None


class MemberMutualityPublic(MemberReciprocityPublic):
    as_of_seq: int
    window: WindowPublic
    with_partners: list[PartnerPublic] = Field(
        description="One row per partner, most imbalanced first."
    )
