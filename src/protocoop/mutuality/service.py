"""The mutuality report of a community, and of one member: SQL figures in, pure report out."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy.orm import Session

from protocoop.balances.service import head_seq, statement_window
from protocoop.clock import utc_now
from protocoop.communities.service import get_community, public
from protocoop.db.models import Community
from protocoop.errors import NotFound
from protocoop.links.service import link_figures
from protocoop.mutuality import figures
from protocoop.mutuality.audit import audit_community
from protocoop.mutuality.report import (
    LedgerFigures,
    LinkFigures,
    LinkPosition,
    MemberFigures,
    MutualitySummary,
    Policy,
    Warning,
    link_positions,
    member_mutuality,
    mutuality_report,
    mutuality_summary,
)
from protocoop.mutuality.schemas import (
    AuditReport,
    IndicatorsPublic,
    IntegrityPublic,
    LimitPositionPublic,
    LimitsPublic,
    LinkPositionPublic,
    MemberMutualityPublic,
    MemberReciprocityPublic,
    MutualityPublic,
    MutualitySummaryPublic,
    PairPublic,
    PartnerPublic,
    WarningPublic,
    WindowPublic,
    ZeroSumPublic,
)


@cache
def _field_names(kind: Any) -> tuple[str, ...]:
    return tuple(field.name for field in fields(kind))


def _flat(value: Any) -> dict[str, Any]:
    """A report value's fields, one level deep: `dataclasses.asdict` deep-copies every value,
    which for a report of 10,000 members cost as much as computing it."""
    kind = value.__class__  # (`type(value)` is not Hashable to mypy)
    return {name: getattr(value, name) for name in _field_names(kind)}


def _window(
    session: Session, community_id: str, since: datetime | None, until: datetime | None
) -> figures.Window:
    from_seq, to_seq = statement_window(session, community_id, since, until)
    return figures.Window(community_id, from_seq, to_seq, head_seq(session, community_id))


@dataclass(frozen=True, slots=True)
class _Read:
    """What the report and its summary are computed from, read in one snapshot."""

    community: Community
    policy: Policy
    window: figures.Window
    members: list[MemberFigures]
    ledger: LedgerFigures
    audit: AuditReport
    links: tuple[LinkPosition, ...]
    link_warnings: tuple[Warning, ...]


def _read(
    session: Session,
    community_id: str,
    since: datetime | None,
    until: datetime | None,
    full_audit: bool,
) -> _Read:
    """Everything but the pairs, which only the full report shows."""
    community = get_community(session, community_id)
    policy = Policy(
        reciprocity_threshold=community.reciprocity_threshold,
        near_limit_ratio=community.near_limit_ratio,
        dormant_after_days=community.dormant_after_days,
    )
    window = _window(session, community_id, since, until)
    positions = figures.account_positions(session, window)
    members = figures.member_figures(session, window, positions)
    volume, exchanges = figures.totals(session, window)
    audit = audit_community(session, community_id, since_checkpoint=not full_audit)
    links, link_warnings = link_positions(
        [
            LinkFigures(
                other=f["other"],
                balance=f["balance"],
                cap=f["cap"],
                exports=f["exports"],
                imports=f["imports"],
            )
            for f in link_figures(session, community_id)
            if f["status"] != "closed"
        ],
        community.near_limit_ratio,
    )
    ledger = LedgerFigures(
        balance_sum=sum(p.balance for p in positions),
        integrity_problems=tuple(f"{p.code}: {p.detail}" for p in audit.problems),
        volume=volume,
        exchanges=exchanges,
        outstanding_credit=sum(p.balance for p in positions if p.balance > 0),
    )
    return _Read(community, policy, window, members, ledger, audit, links, link_warnings)


def _integrity(read: _Read, ok: bool) -> IntegrityPublic:
    return IntegrityPublic(
        ok=ok,
        problems=read.audit.problems,
        verified_from_seq=read.audit.from_seq,
        checkpoint_at=read.audit.checkpoint_at,
    )


def _limits(report: MutualitySummary) -> LimitsPublic:
    return LimitsPublic(
        outside=[LimitPositionPublic(**_flat(p)) for p in report.outside],
        near_lower=[LimitPositionPublic(**_flat(p)) for p in report.near_lower],
        near_upper=[LimitPositionPublic(**_flat(p)) for p in report.near_upper],
    )


def _warnings(read: _Read, report: MutualitySummary) -> list[WarningPublic]:
    return [WarningPublic(**_flat(w)) for w in (*report.warnings, *read.link_warnings)]


def _summary_fields(
    read: _Read,
    community_id: str,
    since: datetime | None,
    until: datetime | None,
    summary: MutualitySummary,
) -> dict[str, Any]:
    """The fields the report and its summary documents share (each document keeps its own
    field order when written)."""
    return {
        "community": community_id,
        "window": WindowPublic(since=since, until=until),
        "as_of_seq": read.window.to_seq,
        "holds": summary.holds,
        "integrity": _integrity(read, summary.integrity_ok),
        "zero_sum": ZeroSumPublic(ok=summary.zero_sum_ok, sum=summary.balance_sum),
        "limits": _limits(summary),
        "indicators": IndicatorsPublic(**_flat(summary.indicators)),
        "links": [LinkPositionPublic(**_flat(p)) for p in read.links],
        "warnings": _warnings(read, summary),
    }


def community_mutuality(
    session: Session,
    community_id: str,
    since: datetime | None,
    until: datetime | None,
    *,
    full_audit: bool = False,
) -> MutualityPublic:
    """The mutuality report (docs/design.md §3) over the exchanges recorded in [since, until).

    Integrity is checked since the last audit checkpoint, or from the first exchange with
    `full_audit`."""
    read = _read(session, community_id, since, until, full_audit)
    report = mutuality_report(
        read.members,
        figures.most_imbalanced_pairs(session, read.window),
        read.ledger,
        read.policy,
        as_of=until or utc_now(),
    )
    return MutualityPublic(
        **_summary_fields(read, community_id, since, until, report),
        policy=public(read.community).policy,
        members=[MemberReciprocityPublic(**_flat(m)) for m in report.members],
        pairs=[PairPublic(**_flat(p)) for p in report.pairs],
    )


def community_mutuality_summary(
    session: Session, community_id: str, since: datetime | None, until: datetime | None
) -> MutualitySummaryPublic:
    """The report's verdict, limits, indicators, links and warnings, as `community_mutuality`
    answers them, without a document per member or the pairs: the dashboard's overview shows
    only these, and for 10,000 members the rows cost more than everything else it shows."""
    read = _read(session, community_id, since, until, full_audit=False)
    summary = mutuality_summary(read.members, read.ledger, read.policy, as_of=until or utc_now())
    return MutualitySummaryPublic(**_summary_fields(read, community_id, since, until, summary))


def member_mutuality_document(
    session: Session,
    community_id: str,
    member_id: str,
    since: datetime | None,
    until: datetime | None,
) -> MemberMutualityPublic:
    """One member's reciprocity over [since, until), overall and with each partner."""
    community = get_community(session, community_id)
    window = _window(session, community_id, since, until)
    positions = figures.account_positions(session, window, member_id)
    if not positions:
        raise NotFound(f"Member {member_id!r} not found.", member=member_id)
    result = member_mutuality(
        figures.one_member_figures(session, window, positions[0]),
        figures.partner_figures(session, window, member_id),
        Policy(reciprocity_threshold=community.reciprocity_threshold),
    )
    return MemberMutualityPublic(
        **_flat(result.figures),
        as_of_seq=window.to_seq,
        window=WindowPublic(since=since, until=until),
        with_partners=[PartnerPublic(**_flat(p)) for p in result.partners],
    )
