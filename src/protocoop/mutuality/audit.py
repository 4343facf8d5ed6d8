"""Recompute the ledger's invariants from its entries, trusting nothing the posting code wrote
except the entries themselves.

1. every exchange's entries sum to zero (and it has at least two, at its own seq);
2. every stored balance equals the sum of its entries, and every `balance_after` is the running
   sum in seq order;
3. the community's balances sum to zero;
4. every balance lies within its limits (counting reservations);
5. `seq` runs 1, 2, 3... without gaps, every `prev_hash` is the previous `hash`, every `hash`
   matches the exchange's canonical bytes, and the ledger head points at the last exchange.

A *full* audit checks every exchange from seq 1 and, when all holds, records a checkpoint: the seq
and hash it verified up to. An audit *since the checkpoint* re-checks per exchange (1, the running
part of 2, and 5) only what came after it, chained from the checkpoint's hash, while the
whole-ledger checks (stored balance = sum of all entries, zero sum, limits, head) always run in
full. That keeps the mutuality report fast on long histories; `protocoop check` and
`GET .../audit` run the full audit.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from protocoop.clock import utc_now
from protocoop.db import Database
from protocoop.db.models import (
    Account,
    AuditCheckpoint,
    Entry,
    Exchange,
    Intertrade,
    LedgerHead,
    Link,
)
from protocoop.db.sums import exact_sum, summed
from protocoop.ledger.chain import GENESIS_HASH, ChainedExchange, verify_chain
from protocoop.ledger.history import chain_links
from protocoop.links.convert import convert
from protocoop.mutuality.figures import Window, flows_by_member, most_imbalanced_pairs, totals
from protocoop.mutuality.schemas import AuditProblem, AuditReport

_a = Account.__table__
_e = Entry.__table__
_x = Exchange.__table__
_links = Link.__table__
_t = Intertrade.__table__

MAX_PROBLEMS_PER_CHECK = 100


def audit_community(
    session: Session, community_id: str, *, since_checkpoint: bool = False
) -> AuditReport:
    """The audit of one community's ledger: in full, or per exchange only after the last
    checkpoint (`since_checkpoint`)."""
    start_seq, start_hash = 0, GENESIS_HASH
    checkpoint = session.get(AuditCheckpoint, community_id) if since_checkpoint else None
    if checkpoint is not None:
        start_seq, start_hash = checkpoint.seq, checkpoint.hash
    problems: list[AuditProblem] = []
    problems += _unbalanced_exchanges(session, community_id, start_seq)
    problems += _stored_balances(session, community_id)
    problems += _running_balances(session, community_id, start_seq)
    problems += _zero_sum(session, community_id)
    problems += _limits(session, community_id)
    problems += _links_mirrored(session, community_id)
    checked, chain_problems = _hash_chain(session, community_id, start_seq, start_hash)
    problems += chain_problems
    if checkpoint is None:
        problems += _kept_figures(session, community_id)
    return AuditReport(
        ok=not problems,
        checked_exchanges=checked,
        problems=problems,
        from_seq=start_seq,
        checkpoint_at=checkpoint.checked_at if checkpoint else None,
    )


def record_checkpoint(session: Session, community_id: str, verified_seq: int) -> None:
    """Remember that a clean full audit verified the ledger up to `verified_seq` (a checkpoint
    never moves backwards)."""
    if verified_seq == 0:
        return
    verified_hash = session.execute(
        select(_x.c.hash).where(_x.c.community_id == community_id, _x.c.seq == verified_seq)
    ).scalar_one()
    checkpoint = session.get(AuditCheckpoint, community_id, with_for_update=True)
    if checkpoint is None:
        session.add(
            AuditCheckpoint(
                community_id=community_id,
                seq=verified_seq,
                hash=verified_hash,
                checked_at=utc_now(),
            )
        )
    elif checkpoint.seq <= verified_seq:
        checkpoint.seq = verified_seq
        checkpoint.hash = verified_hash
        checkpoint.checked_at = utc_now()
    session.flush()


def _unbalanced_exchanges(
    session: Session, community_id: str, after_seq: int
) -> list[AuditProblem]:
    per_exchange = (
        select(
            _x.c.id,
            _x.c.seq,
            func.coalesce(func.sum(_e.c.amount), 0).label("total"),
            func.count(_e.c.account_id).label("entries"),
            func.coalesce(func.sum(func.abs(_e.c.seq - _x.c.seq)), 0).label("seq_drift"),
        )
        .select_from(_x)
        .outerjoin(_e, and_(_e.c.community_id == _x.c.community_id, _e.c.exchange_id == _x.c.id))
        .where(_x.c.community_id == community_id, _x.c.seq > after_seq)
        .group_by(_x.c.id, _x.c.seq)
        .subquery()
    )
    rows = session.execute(
        select(per_exchange)
        .where(
            or_(
                per_exchange.c.total != 0,
                per_exchange.c.entries < 2,
                per_exchange.c.seq_drift != 0,
            )
        )
        .order_by(per_exchange.c.seq)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    problems = []
    for row in rows:
        if row.entries < 2:
            code, detail = "missing_entries", f"has {row.entries} entries"
        elif row.total != 0:
            code, detail = "unbalanced_exchange", f"entries sum to {row.total}, not 0"
        else:
            code, detail = "entry_seq_mismatch", "an entry carries another seq than its exchange"
        problems.append(
            AuditProblem(invariant=1, code=code, detail=detail, exchange_id=row.id, seq=row.seq)
        )
    return problems


def _stored_balances(session: Session, community_id: str) -> list[AuditProblem]:
    # MATERIALIZED: computed once, as a (parallel) hash aggregate. As a plain subquery under
    # `ORDER BY ... LIMIT`, PostgreSQL prefers walking the entries index in account order, which
    # is three times slower on a long history and was most of the mutuality report's time.
    sums = (
        select(_e.c.account_id, func.sum(_e.c.amount).label("total"))
        .where(_e.c.community_id == community_id)
        .group_by(_e.c.account_id)
        .cte("entry_sums")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    total = func.coalesce(sums.c.total, 0)
    rows = session.execute(
        select(_a.c.id, _a.c.balance, total.label("total"))
        .select_from(_a)
        .outerjoin(sums, sums.c.account_id == _a.c.id)
        .where(_a.c.community_id == community_id, _a.c.balance != total)
        .order_by(_a.c.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    return [
        AuditProblem(
            invariant=2,
            code="balance_mismatch",
            detail=f"stored balance {row.balance}, entries sum to {row.total}",
            account=row.id,
        )
        for row in rows
    ]


def _running_balances(session: Session, community_id: str, after_seq: int) -> list[AuditProblem]:
    """Each entry after `after_seq` must be its account's previous balance plus its amount; the
    balance before them is read from the last earlier entry's balance_after."""
    earlier = _e.alias("earlier")
    opening: ColumnElement[int] = func.coalesce(
        select(earlier.c.balance_after)
        .where(
            earlier.c.community_id == community_id,
            earlier.c.account_id == _e.c.account_id,
            earlier.c.seq <= after_seq,
        )
        .order_by(earlier.c.seq.desc())
        .limit(1)
        .correlate(_e)
        .scalar_subquery(),
        literal(0),
    )
    if after_seq == 0:
        opening = literal(0)
    running = (
        select(
            _e.c.exchange_id,
            _e.c.account_id,
            _e.c.seq,
            _e.c.balance_after,
            (
                opening
                + func.sum(_e.c.amount).over(partition_by=_e.c.account_id, order_by=_e.c.seq)
            ).label("running"),
        )
        .where(_e.c.community_id == community_id, _e.c.seq > after_seq)
        .subquery()
    )
    rows = session.execute(
        select(running)
        .where(running.c.balance_after != running.c.running)
        .order_by(running.c.seq)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    return [
        AuditProblem(
            invariant=2,
            code="running_balance_mismatch",
            detail=f"balance_after {row.balance_after}, running sum {row.running}",
            exchange_id=row.exchange_id,
            account=row.account_id,
            seq=row.seq,
        )
        for row in rows
    ]


def _kept_figures(session: Session, community_id: str) -> list[AuditProblem]:
    """The mutuality figures posting keeps must equal the same figures aggregated from the
    exchanges (a slow check, for full audits)."""
    head = session.execute(
        select(LedgerHead.last_seq).where(LedgerHead.community_id == community_id)
    ).scalar_one()
    kept = Window(community_id, 0, head, head)
    recomputed = Window(community_id, 0, head, head, recompute=True)
    problems = []
    if totals(session, kept) != totals(session, recomputed):
        problems.append(
            AuditProblem(
                invariant=2,
                code="figures_mismatch",
                detail=f"kept volume and count {totals(session, kept)}, "
                f"exchanges say {totals(session, recomputed)}",
            )
        )
    kept_flows = flows_by_member(session, kept)
    for account, figures in sorted(flows_by_member(session, recomputed).items()):
        if kept_flows.pop(account, None) != figures:
            problems.append(
                AuditProblem(
                    invariant=2,
                    code="figures_mismatch",
                    detail=f"kept given/received/exchanges/partners differ from {figures}",
                    account=account,
                )
            )
    problems += [
        AuditProblem(
            invariant=2,
            code="figures_mismatch",
            detail="kept figures for an account without counted exchanges",
            account=account,
        )
        for account in sorted(kept_flows)
    ]
    kept_pairs = set(most_imbalanced_pairs(session, kept, limit=None))
    if kept_pairs != set(most_imbalanced_pairs(session, recomputed, limit=None)):
        problems.append(
            AuditProblem(
                invariant=2, code="figures_mismatch", detail="kept pair flows differ from exchanges"
            )
        )
    return problems[:MAX_PROBLEMS_PER_CHECK]


def _zero_sum(session: Session, community_id: str) -> list[AuditProblem]:
    row = session.execute(
        select(*exact_sum(_a.c.balance, "total", session.get_bind().dialect.name)).where(
            _a.c.community_id == community_id
        )
    ).one()
    total = summed(row, "total")
    if total == 0:
        return []
    return [AuditProblem(invariant=3, code="nonzero_sum", detail=f"balances sum to {total}")]


def _limits(session: Session, community_id: str) -> list[AuditProblem]:
    rows = session.execute(
        select(_a.c.id, _a.c.balance, _a.c.lower_limit, _a.c.upper_limit)
        .where(
            _a.c.community_id == community_id,
            or_(
                _a.c.balance - _a.c.reserved_debit < _a.c.lower_limit,
                and_(
                    _a.c.upper_limit.is_not(None),
                    _a.c.balance + _a.c.reserved_credit > _a.c.upper_limit,
                ),
            ),
        )
        .order_by(_a.c.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    return [
        AuditProblem(
            invariant=4,
            code="outside_limits",
            detail=f"balance {row.balance} outside [{row.lower_limit}, {row.upper_limit}]",
            account=row.id,
        )
        for row in rows
    ]


def _hash_chain(
    session: Session, community_id: str, start_seq: int, start_hash: str
) -> tuple[int, list[AuditProblem]]:
    problems: list[AuditProblem] = []
    checked = 0
    last_seq, last_hash = start_seq, start_hash

    def counted() -> Iterator[tuple[ChainedExchange, str, str]]:
        nonlocal checked, last_seq, last_hash
        for link in chain_links(session, community_id, after_seq=start_seq):
            checked += 1
            last_seq, last_hash = link[0].seq, link[2]
            yield link

    for seq, code, detail in verify_chain(counted(), start_seq=start_seq, start_hash=start_hash):
        if len(problems) < MAX_PROBLEMS_PER_CHECK:
            problems.append(AuditProblem(invariant=5, code=code, detail=detail, seq=seq))
    head = session.execute(
        select(LedgerHead.last_seq, LedgerHead.last_hash).where(
            LedgerHead.community_id == community_id
        )
    ).one()
    if (head.last_seq, head.last_hash) != (last_seq, last_hash):
        problems.append(
            AuditProblem(
                invariant=5,
                code="head_mismatch",
                detail=f"the ledger head says seq {head.last_seq}; the last exchange is {last_seq}",
                seq=head.last_seq,
            )
        )
    return checked, problems


def audit_and_checkpoint(db: Database, community_id: str) -> AuditReport:
    """The full audit from a read snapshot; a clean result is recorded as the checkpoint later
    reports verify from."""
    with db.read() as session:
        report = audit_community(session, community_id)
    if report.ok:
        db.run_write(
            lambda session: record_checkpoint(session, community_id, report.checked_exchanges)
        )
    return report


def _links_mirrored(session: Session, community_id: str) -> list[AuditProblem]:
    """Invariant 8: every clearing account is what the intertrades over its link say (imports
    minus exports, reversals netted), every intertrade of the community is one of its exchanges
    with the same amount and its id, converted at the stored rate, and no exchange names an
    intertrade that does not name it back."""
    problems: list[AuditProblem] = []

    def problem(code: str, detail: str, **where: str | int | None) -> None:
        problems.append(AuditProblem(invariant=8, code=code, detail=detail, **where))

    links = session.execute(
        select(_links.c.id, _links.c.a, _links.c.b).where(
            or_(_links.c.a == community_id, _links.c.b == community_id)
        )
    ).all()
    for link in links:
        other = link.b if link.a == community_id else link.a
        account = f"@link:{other}"
        balance = session.execute(
            select(_a.c.balance).where(_a.c.community_id == community_id, _a.c.id == account)
        ).scalar_one_or_none()
        net = 0
        for amount, party, sign in (
            (_t.c.receiver_amount, _t.c.receiver_community, 1),  # imports
            (_t.c.provider_amount, _t.c.provider_community, -1),  # exports
        ):
            signed = case((_t.c.reverses.is_(None), amount), else_=-amount)
            total = session.execute(
                select(func.coalesce(func.sum(signed), 0)).where(
                    _t.c.link_id == link.id, party == community_id
                )
            ).scalar_one()
            net += sign * int(total)
        if (balance or 0) != net:
            problem(
                "clearing_mismatch",
                f"{account} is {balance or 0}; the intertrades over the link say {net}",
                account=account,
            )
    for side in ("provider", "receiver"):
        community_column = _t.c[f"{side}_community"]
        rows = session.execute(
            select(
                _t.c.id,
                _t.c.link_id,
                _t.c[f"{side}_amount"].label("stated"),
                _t.c.provider_amount,
                _t.c.receiver_amount,
                _t.c.provider_community,
                _t.c.amount_in,
                _t.c.rate_a,
                _t.c.rate_b,
                _t.c.reverses,
                _x.c.id.label("exchange_id"),
                _x.c.seq,
                _x.c.amount,
                _x.c.intertrade_id,
                _links.c.a.label("link_a"),
            )
            .select_from(
                _t.outerjoin(
                    _x,
                    and_(
                        _x.c.community_id == community_column,
                        _x.c.id == _t.c[f"{side}_exchange_id"],
                    ),
                ).join(_links, _links.c.id == _t.c.link_id)
            )
            .where(community_column == community_id)
        ).all()
        for row in rows:
            if row.exchange_id is None or row.intertrade_id != row.id or row.amount != row.stated:
                problem(
                    "intertrade_side_mismatch",
                    f"the {side} side of intertrade {row.id} is not its exchange as recorded",
                    exchange_id=row.exchange_id,
                    seq=row.seq,
                )
            if side == "receiver" and row.reverses is None:
                rate_p, rate_r = (
                    (row.rate_a, row.rate_b)
                    if row.provider_community == row.link_a
                    else (row.rate_b, row.rate_a)
                )
                converted = (
                    convert(row.provider_amount, rate_p, rate_r) == row.receiver_amount
                    if row.amount_in == "provider"
                    else convert(row.receiver_amount, rate_r, rate_p) == row.provider_amount
                )
                if not converted:
                    problem(
                        "intertrade_rate_mismatch",
                        f"intertrade {row.id}'s amounts do not follow its rate",
                        exchange_id=row.exchange_id,
                    )
    orphans = session.execute(
        select(_x.c.id, _x.c.seq)
        .select_from(
            _x.outerjoin(
                _t,
                and_(
                    _t.c.id == _x.c.intertrade_id,
                    or_(_t.c.provider_exchange_id == _x.c.id, _t.c.receiver_exchange_id == _x.c.id),
                ),
            )
        )
        .where(
            _x.c.community_id == community_id, _x.c.intertrade_id.is_not(None), _t.c.id.is_(None)
        )
    ).all()
    for orphan in orphans:
        problem(
            "intertrade_missing",
            "the exchange names an intertrade that does not name it",
            exchange_id=orphan.id,
            seq=orphan.seq,
        )
    # A clearing account moves only through intertrades. An exchange's provider and receiver
    # are accounts of its community (foreign keys, which tampering with the append-only triggers
    # leaves in force), so without a clearing account there is no such exchange to look for: the
    # scan of every exchange this needs was a fifth of the mutuality report's time.
    clearing = session.execute(
        select(_a.c.id).where(_a.c.community_id == community_id, _a.c.id.like("@link:%")).limit(1)
    ).first()
    strays = (
        session.execute(
            select(_x.c.id, _x.c.seq).where(
                _x.c.community_id == community_id,
                _x.c.intertrade_id.is_(None),
                or_(_x.c.provider.like("@link:%"), _x.c.receiver.like("@link:%")),
            )
        ).all()
        if clearing is not None
        else []
    )
    for stray in strays:
        problem(
            "clearing_outside_intertrade",
            "a clearing account moved outside an intertrade",
            exchange_id=stray.id,
            seq=stray.seq,
        )
    return problems[:MAX_PROBLEMS_PER_CHECK]
