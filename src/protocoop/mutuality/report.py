"""Does mutuality hold? A pure computation over plain figures (docs/design.md §3).

Nothing here touches SQL, HTTP or the ORM: the figures come in as frozen dataclasses (SQL
aggregates produce them) and a `MutualityReport` comes out, so every definition can be checked
with literal numbers.

Definitions, for a window of time:
- a member's `given` is the sum of amounts of the exchanges it provided, `received` of those it
  received; exchanges that were reversed, and the reversals themselves, are left out (a mistake is
  not a gift);
- `reciprocity = 1 - |given - received| / (given + received)`: 1 when a member gives as much as it
  receives, 0 when only one way; None when it did neither;
- `standing`: `inactive` (no exchange), `reciprocal` (reciprocity >= the community's threshold),
  else `net_giver` or `net_receiver`;
- `mutuality_index = 1 - N / volume`, N the sum over members of their positive net change
  (given - received) in the window, plus the community fund's when it took part: 1 when every
  unit given was matched by a unit received, 0 when everything went one way; None without volume;
- `velocity = volume / outstanding_credit` (sum of positive balances); None without credit;
- mutuality `holds` when the ledger is whole (integrity), balances sum to zero and nobody is
  outside their limits. Reciprocity figures only give warnings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

Standing = Literal["reciprocal", "net_giver", "net_receiver", "inactive"]

PAIRS_SHOWN = 20
ONE_WAY_MIN_EXCHANGES = 3


@dataclass(frozen=True, slots=True)
class Policy:
    """A community's thresholds."""

    reciprocity_threshold: float = 0.5
    """A member at or above this reciprocity is `reciprocal`."""
    near_limit_ratio: float = 0.1
    """A balance within this fraction of a limit is near it."""
    dormant_after_days: int = 90
    """A member with no exchange for this long is dormant."""


@dataclass(frozen=True, slots=True)
class MemberFigures:
    """One member's flows in the window and its standing at the window's end."""

    member: str
    given: int
    """Sum of amounts provided in the window (minor units)."""
    received: int
    """Sum of amounts received in the window (minor units)."""
    exchanges: int
    """Exchanges taken part in, in the window."""
    partners: int
    """Distinct counterparties in the window."""
    balance: int
    """Balance at the window's end (minor units)."""
    lower_limit: int
    upper_limit: int | None
    last_exchange_at: datetime | None = None
    """The member's latest exchange at or before the window's end, if any."""


@dataclass(frozen=True, slots=True)
class PairFigures:
    """What two members gave each other in the window (`a` < `b`)."""

    a: str
    b: str
    a_to_b: int
    """Amounts `a` provided to `b`."""
    b_to_a: int
    """Amounts `b` provided to `a`."""


@dataclass(frozen=True, slots=True)
class LedgerFigures:
    """Community-wide facts the report checks."""

    balance_sum: int
    """Sum of every account's balance, system accounts included (must be 0)."""
    integrity_problems: tuple[str, ...] = ()
    """What the integrity check found (empty when the ledger is whole)."""
    volume: int = 0
    """Sum of amounts of the window's counted exchanges."""
    exchanges: int = 0
    """Number of the window's counted exchanges."""
    outstanding_credit: int = 0
    """Sum of positive balances at the window's end."""


@dataclass(frozen=True, slots=True)
class MemberReciprocity:
    member: str
    given: int
    received: int
    exchanges: int
    partners: int
    balance: int
    reciprocity: float | None
    standing: Standing


@dataclass(frozen=True, slots=True)
class LimitPosition:
    member: str
    balance: int
    lower_limit: int
    upper_limit: int | None


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    a_to_b: int
    b_to_a: int
    net: int
    """a_to_b - b_to_a: positive when `a` gave more than it got from `b`."""


@dataclass(frozen=True, slots=True)
class Warning:
    code: Literal[
        "near_lower_limit",
        "near_upper_limit",
        "one_way_member",
        "dormant_with_balance",
        "near_link_cap",
    ]
    detail: str
    member: str | None = None


@dataclass(frozen=True, slots=True)
class Indicators:
    volume: int
    exchanges: int
    active_members: int
    members: int
    outstanding_credit: int
    velocity: float | None
    mutuality_index: float | None
    dormant_with_balance: int


def reciprocity(given: int, received: int) -> float | None:
    """1 - |given - received| / (given + received); None when both are 0."""
    total = given + received
    if total == 0:
        return None
    return 1 - abs(given - received) / total


def standing(given: int, received: int, threshold: float) -> Standing:
    """Where a member stands: inactive, reciprocal, or a net giver or receiver."""
    value = reciprocity(given, received)
    if value is None:
        return "inactive"
    if value >= threshold:
        return "reciprocal"
    return "net_giver" if given > received else "net_receiver"


def mutuality_index(members: Sequence[MemberFigures], volume: int) -> float | None:
    """1 - (sum of positive net changes) / volume; None when nothing was exchanged.

    The community fund (@commons) is not a member, but its exchanges are in the volume, so its
    net change counts too: every counted unit one account gives another receives, so the fund's
    net is what the members' nets leave over. (Without it, the fund handing out credit one way
    would read as perfectly reciprocal.)"""
    return index_of_nets([m.given - m.received for m in members], volume)


def index_of_nets(nets: Iterable[int], volume: int) -> float | None:
    """`mutuality_index` from the members' net changes (given - received) alone: what a caller
    that has only the flows needs, without a `MemberFigures` per member."""
    if volume == 0:
        return None
    one_way = total = 0
    for net in nets:
        total += net
        if net > 0:
            one_way += net
    return 1 - (one_way + max(0, -total)) / volume


def is_outside(m: MemberFigures) -> bool:
    return m.balance < m.lower_limit or (m.upper_limit is not None and m.balance > m.upper_limit)


def _share(ratio: float, amount: int) -> Decimal:
    """`ratio` of `amount`, exactly as the ratio is written (0.29 of 100 is 29, not 28.99...)."""
    return Decimal(repr(ratio)) * amount


def is_near_lower(m: MemberFigures, ratio: float) -> bool:
    """At or within `ratio` of a (negative) lower limit: stuck in debt."""
    return m.lower_limit < 0 and m.balance - m.lower_limit <= _share(ratio, -m.lower_limit)


def is_near_upper(m: MemberFigures, ratio: float) -> bool:
    """At or within `ratio` of a (positive) upper limit: hoarding."""
    return (
        m.upper_limit is not None
        and m.upper_limit > 0
        and m.upper_limit - m.balance <= _share(ratio, m.upper_limit)
    )


def is_dormant(m: MemberFigures, as_of: datetime, days: int) -> bool:
    """No exchange within `days` before `as_of`."""
    return m.last_exchange_at is None or m.last_exchange_at < as_of - timedelta(days=days)


@dataclass(frozen=True, slots=True)
class MutualitySummary:
    """The report without its per-member rows and pairs: the verdict, the limits, the indicators
    and the warnings, which is all the dashboard's overview shows."""

    holds: bool
    integrity_ok: bool
    integrity_problems: tuple[str, ...]
    zero_sum_ok: bool
    balance_sum: int
    outside: tuple[LimitPosition, ...]
    near_lower: tuple[LimitPosition, ...]
    near_upper: tuple[LimitPosition, ...]
    indicators: Indicators
    warnings: tuple[Warning, ...]


@dataclass(frozen=True, slots=True)
class MutualityReport(MutualitySummary):
    """The summary, with a row per member and the most imbalanced pairs."""

    members: tuple[MemberReciprocity, ...]
    pairs: tuple[Pair, ...]


def mutuality_summary(
    members: Sequence[MemberFigures], ledger: LedgerFigures, policy: Policy, as_of: datetime
) -> MutualitySummary:
    """The verdict, limits, indicators and warnings of `mutuality_report`, which is this plus a
    row per member and the pairs (so the two never disagree)."""
    outside: list[LimitPosition] = []
    near_lower: list[LimitPosition] = []
    near_upper: list[LimitPosition] = []
    one_way: list[Warning] = []
    dormant: list[MemberFigures] = []
    threshold = policy.reciprocity_threshold
    for m in members:
        if is_outside(m):
            outside.append(_position(m))
        else:
            if is_near_lower(m, policy.near_limit_ratio):
                near_lower.append(_position(m))
            if is_near_upper(m, policy.near_limit_ratio):
                near_upper.append(_position(m))
        value = reciprocity(m.given, m.received)
        if value is not None and value < threshold and m.exchanges >= ONE_WAY_MIN_EXCHANGES:
            one_way.append(
                Warning(
                    "one_way_member",
                    f"reciprocity {value:.2f} over {m.exchanges} exchanges "
                    f"(given {m.given}, received {m.received})",
                    m.member,
                )
            )
        if m.balance != 0 and is_dormant(m, as_of, policy.dormant_after_days):
            dormant.append(m)

    warnings: list[Warning] = []
    warnings += [
        Warning("near_lower_limit", f"balance {p.balance}, lower limit {p.lower_limit}", p.member)
        for p in near_lower
    ]
    warnings += [
        Warning("near_upper_limit", f"balance {p.balance}, upper limit {p.upper_limit}", p.member)
        for p in near_upper
    ]
    warnings += one_way
    warnings += [
        Warning(
            "dormant_with_balance",
            f"balance {m.balance}, no exchange in {policy.dormant_after_days} days",
            m.member,
        )
        for m in dormant
    ]
    indicators = Indicators(
        volume=ledger.volume,
        exchanges=ledger.exchanges,
        active_members=sum(1 for m in members if m.exchanges > 0),
        members=len(members),
        outstanding_credit=ledger.outstanding_credit,
        velocity=(ledger.volume / ledger.outstanding_credit if ledger.outstanding_credit else None),
        mutuality_index=mutuality_index(members, ledger.volume),
        dormant_with_balance=len(dormant),
    )
    integrity_ok = not ledger.integrity_problems
    zero_sum_ok = ledger.balance_sum == 0
    return MutualitySummary(
        holds=integrity_ok and zero_sum_ok and not outside,
        integrity_ok=integrity_ok,
        integrity_problems=ledger.integrity_problems,
        zero_sum_ok=zero_sum_ok,
        balance_sum=ledger.balance_sum,
        outside=tuple(outside),
        near_lower=tuple(near_lower),
        near_upper=tuple(near_upper),
        indicators=indicators,
        warnings=tuple(warnings),
    )


def mutuality_report(
    members: Sequence[MemberFigures],
    pairs: Sequence[PairFigures],
    ledger: LedgerFigures,
    policy: Policy,
    as_of: datetime,
) -> MutualityReport:
    """The mutuality report for one community and window: its summary, a row per member, and
    the most imbalanced pairs."""
    summary = mutuality_summary(members, ledger, policy, as_of)
    rows = tuple(
        MemberReciprocity(
            member=m.member,
            given=m.given,
            received=m.received,
            exchanges=m.exchanges,
            partners=m.partners,
            balance=m.balance,
            reciprocity=reciprocity(m.given, m.received),
            standing=standing(m.given, m.received, policy.reciprocity_threshold),
        )
        for m in members
    )
    shown_pairs = sorted(
        (Pair(p.a, p.b, p.a_to_b, p.b_to_a, p.a_to_b - p.b_to_a) for p in pairs),
        key=lambda p: (-abs(p.net), p.a, p.b),
    )[:PAIRS_SHOWN]
    return MutualityReport(
        **{f.name: getattr(summary, f.name) for f in fields(MutualitySummary)},
        members=rows,
        pairs=tuple(shown_pairs),
    )


def _position(m: MemberFigures) -> LimitPosition:
    return LimitPosition(m.member, m.balance, m.lower_limit, m.upper_limit)


@dataclass(frozen=True, slots=True)
class PartnerFigures:
    """What one member exchanged with one partner in the window."""

    partner: str
    given: int
    """Amounts the member provided to the partner."""
    received: int
    """Amounts the member received from the partner."""
    exchanges: int


@dataclass(frozen=True, slots=True)
class PartnerReciprocity:
    partner: str
    given: int
    received: int
    exchanges: int
    net: int
    """given - received."""
    reciprocity: float | None


@dataclass(frozen=True, slots=True)
class MemberMutuality:
    figures: MemberReciprocity
    partners: tuple[PartnerReciprocity, ...]


def member_mutuality(
    member: MemberFigures, partners: Sequence[PartnerFigures], policy: Policy
) -> MemberMutuality:
    """One member's reciprocity overall and with each partner (most imbalanced first)."""
    figures = MemberReciprocity(
        member=member.member,
        given=member.given,
        received=member.received,
        exchanges=member.exchanges,
        partners=member.partners,
        balance=member.balance,
        reciprocity=reciprocity(member.given, member.received),
        standing=standing(member.given, member.received, policy.reciprocity_threshold),
    )
    rows = sorted(
        (
            PartnerReciprocity(
                partner=p.partner,
                given=p.given,
                received=p.received,
                exchanges=p.exchanges,
                net=p.given - p.received,
                reciprocity=reciprocity(p.given, p.received),
            )
            for p in partners
        ),
        key=lambda p: (-abs(p.net), p.partner),
    )
    return MemberMutuality(figures=figures, partners=tuple(rows))


@dataclass(frozen=True, slots=True)
class LinkFigures:
    """One link as the community sees it, in its own minor units: its clearing account's
    balance (below zero: net exports), its cap, and what went each way over the link."""

    other: str
    balance: int
    cap: int
    exports: int
    imports: int


@dataclass(frozen=True, slots=True)
class LinkPosition:
    other: str
    balance: int
    cap: int
    exports: int
    imports: int
    near_cap: bool
    """The community's net exports are within `near_limit_ratio` of the cap (or at it)."""


def link_positions(
    links: Sequence[LinkFigures], near_limit_ratio: float
) -> tuple[tuple[LinkPosition, ...], tuple[Warning, ...]]:
    """Each link's position, and a `near_link_cap` warning for each link whose balance of trade
    is close to its cap: the community is about to stop exporting over it."""
    positions = tuple(
        LinkPosition(
            other=link.other,
            balance=link.balance,
            cap=link.cap,
            exports=link.exports,
            imports=link.imports,
            near_cap=-link.balance >= link.cap * (1 - near_limit_ratio) and link.balance < 0,
        )
        for link in links
    )
    warnings = tuple(
        Warning(
            "near_link_cap",
            f"balance of trade with {p.other} is {p.balance}, cap {p.cap}",
        )
        for p in positions
        if p.near_cap
    )
    return positions, warnings
