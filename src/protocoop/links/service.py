"""Links between communities, and intertrades across them.

Lock order across communities: every transaction that touches two communities locks both ledger
heads first, in community-id order, and only then reads the link and any account. A transaction
of one community locks its head first too, so no two transactions can ever wait on each other in
a circle: intertrades in both directions between the same communities queue on the first head
instead of deadlocking.

An intertrade is two exchanges, one per community, recorded by the ledger's one transaction
function (`ledger.service.record`) in the caller's transaction; a refusal of either side raises,
so the caller's transaction (or its savepoint) takes the other side back with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table, case, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from protocoop.audit_log.service import record as record_change
from protocoop.auth.roles import Principal
from protocoop.clock import utc_now
from protocoop.db.models import Account, Community, Intertrade, Link
from protocoop.errors import (
    AlreadyExists,
    BalanceNotZero,
    InvalidState,
    LimitBelowBalance,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from protocoop.ledger.planner import Outcome, Post
from protocoop.ledger.records import Draft, PostedExchange, clearing_account
from protocoop.ledger.service import record
from protocoop.ledger.store import LedgerStore
from protocoop.links.convert import convert
from protocoop.links.schemas import (
    IntertradeCreate,
    IntertradePublic,
    IntertradeSide,
    LinkCreate,
    LinkPublic,
    LinkSide,
    LinkUpdate,
    RatePublic,
)
from protocoop.pagination import next_cursor
from protocoop.schemas import Page

_links = cast(Table, Link.__table__)
_accounts = cast(Table, Account.__table__)
_intertrades = cast(Table, Intertrade.__table__)

MAX_LINKED_ID = 57
"""A clearing account's id is `@link:` and the other community's id, and account ids have at
most 63 characters: communities with longer ids cannot be linked."""


# --- locks and lookups -------------------------------------------------------------------------


def lock_communities(session: Session, community_ids: Iterable[str]) -> dict[str, LedgerStore]:
    """Lock the ledger heads of `community_ids` in id order (the one cross-community lock
    order); one store per community, its head already locked."""
    stores: dict[str, LedgerStore] = {}
    for community_id in sorted(set(community_ids)):
        store = LedgerStore(session, community_id)
        store.lock_head()  # NotFound when there is no such community
        stores[community_id] = store
    return stores


def _link_between(session: Session, one: str, other: str) -> Link | None:
    low, high = sorted((one, other))
    return session.execute(
        select(Link).where(Link.low == low, Link.high == high)
    ).scalar_one_or_none()


def _visible_link(session: Session, link_id: str, principal: Principal) -> Link:
    link = session.get(Link, link_id)
    if link is None or not (principal.sees(link.a) or principal.sees(link.b)):
        raise NotFound(f"Link {link_id!r} not found.")
    return link


def _clearing_balances(session: Session, link: Link) -> dict[str, int]:
    rows = session.execute(
        select(_accounts.c.community_id, _accounts.c.balance).where(
            or_(
                (_accounts.c.community_id == link.a) & (_accounts.c.id == clearing_account(link.b)),
                (_accounts.c.community_id == link.b) & (_accounts.c.id == clearing_account(link.a)),
            )
        )
    ).all()
    return {row.community_id: int(row.balance) for row in rows}


def public(session: Session, link: Link) -> LinkPublic:
    balances = _clearing_balances(session, link)
    return LinkPublic(
        id=link.id,
        a=link.a,
        b=link.b,
        rate=RatePublic(a=link.rate_a, b=link.rate_b),
        a_cap=link.a_cap,
        b_cap=link.b_cap,
        status=cast(Any, link.status),
        sides=[
            LinkSide(
                community=community,
                account=clearing_account(other),
                balance=balances.get(community, 0),
                cap=cap,
            )
            for community, other, cap in (
                (link.a, link.b, link.a_cap),
                (link.b, link.a, link.b_cap),
            )
        ],
        created_at=link.created_at,
        updated_at=link.updated_at,
    )


# --- links -------------------------------------------------------------------------------------


def create_link(session: Session, spec: LinkCreate, *, by: Principal | None) -> LinkPublic:
    """A link between two communities, with a clearing account in each (admin)."""
    if spec.a == spec.b:
        raise ValidationFailed([{"loc": ["body", "b"], "msg": "a community cannot link to itself"}])
    for field, community_id in (("a", spec.a), ("b", spec.b)):
        if len(community_id) > MAX_LINKED_ID:
            raise ValidationFailed(
                [
                    {
                        "loc": ["body", field],
                        "msg": f"communities with ids over {MAX_LINKED_ID} characters "
                        "cannot be linked",
                    }
                ]
            )
    lock_communities(session, (spec.a, spec.b))
    if _link_between(session, spec.a, spec.b) is not None:
        raise AlreadyExists(f"Communities {spec.a!r} and {spec.b!r} are already linked.")
    now = utc_now()
    low, high = sorted((spec.a, spec.b))
    link = Link(
        id=str(uuid.uuid4()),
        a=spec.a,
        b=spec.b,
        low=low,
        high=high,
        rate_a=spec.rate.a,
        rate_b=spec.rate.b,
        a_cap=spec.a_cap,
        b_cap=spec.b_cap,
        status="active",
        created_at=now,
        updated_at=now,
    )
    session.add(link)
    for community, other, cap in ((spec.a, spec.b, spec.a_cap), (spec.b, spec.a, spec.b_cap)):
        session.add(
            Account(
                community_id=community,
                id=clearing_account(other),
                kind="system",
                balance=0,
                lower_limit=-cap,
                upper_limit=None,
                reserved_debit=0,
                reserved_credit=0,
                created_at=now,
            )
        )
    session.flush()
    created = public(session, link)
    for community in (spec.a, spec.b):
        record_change(
            session,
            community,
            by=by,
            action="link.created",
            target=link.id,
            before=None,
            after=created.model_dump(mode="json"),
        )
    return created


def list_links(
    session: Session, *, visible_to: Principal | None, after: str | None, limit: int
) -> Page[LinkPublic]:
    """Links in id order: every one for an admin (or the command line, `visible_to` None), its
    own community's for a treasurer or auditor."""
    query = select(Link).order_by(Link.id).limit(limit + 1)
    if visible_to is not None and visible_to.community_id is not None:
        query = query.where(
            or_(Link.a == visible_to.community_id, Link.b == visible_to.community_id)
        )
    if after is not None:
        query = query.where(Link.id > after)
    rows = list(session.execute(query).scalars())
    return Page(
        items=[public(session, link) for link in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda link: {"after": link.id}),
    )


def get_link(session: Session, link_id: str, *, visible_to: Principal) -> LinkPublic:
    return public(session, _visible_link(session, link_id, visible_to))


def update_link(
    session: Session, link_id: str, changes: LinkUpdate, *, by: Principal | None
) -> LinkPublic:
    """New rate (for new intertrades), caps or status, under both communities' head locks."""
    found = session.get(Link, link_id)
    if found is None:
        raise NotFound(f"Link {link_id!r} not found.")
    lock_communities(session, (found.a, found.b))
    link = session.get(Link, link_id, with_for_update=True, populate_existing=True)
    assert link is not None  # links are deleted only under these same locks
    if link.status == "closed":
        raise InvalidState("The link is closed.", current_status="closed")
    before = public(session, link).model_dump(mode="json")
    if changes.rate is not None:
        link.rate_a, link.rate_b = changes.rate.a, changes.rate.b
    for field, community, other in (("a_cap", link.a, link.b), ("b_cap", link.b, link.a)):
        cap = getattr(changes, field)
        if cap is None:
            continue
        account = session.get(Account, (community, clearing_account(other)), with_for_update=True)
        assert account is not None  # created with the link
        if account.balance - account.reserved_debit < -cap:
            raise LimitBelowBalance(
                f"{community}'s clearing account is at {account.balance}: a cap of {cap} "
                "would put it below its limit.",
                account=account.id,
                balance=account.balance,
            )
        account.lower_limit = -cap
        setattr(link, field, cap)
    if changes.status is not None:
        link.status = changes.status
    link.updated_at = utc_now()
    session.flush()
    after = public(session, link)
    for community in (link.a, link.b):
        record_change(
            session,
            community,
            by=by,
            action="link.updated",
            target=link.id,
            before=before,
            after=after.model_dump(mode="json"),
        )
    return after


def delete_link(session: Session, link_id: str, *, by: Principal | None) -> None:
    """Remove a link whose clearing accounts are both at 0: with its accounts when it never
    carried an intertrade, else it is `closed` and its history stays."""
    found = session.get(Link, link_id)
    if found is None:
        raise NotFound(f"Link {link_id!r} not found.")
    lock_communities(session, (found.a, found.b))
    link = session.get(Link, link_id, with_for_update=True, populate_existing=True)
    assert link is not None
    balances = _clearing_balances(session, link)
    if any(balances.values()):
        raise BalanceNotZero(
            "Both clearing accounts must be at 0 before the link is deleted.",
            balances=balances,
        )
    before = public(session, link).model_dump(mode="json")
    used = session.execute(select(exists().where(_intertrades.c.link_id == link.id))).scalar()
    if used:
        link.status = "closed"
        link.updated_at = utc_now()
    else:
        for community, other in ((link.a, link.b), (link.b, link.a)):
            session.execute(
                delete(_accounts).where(
                    _accounts.c.community_id == community,
                    _accounts.c.id == clearing_account(other),
                )
            )
        session.delete(link)
    session.flush()
    for community in (link.a, link.b):
        record_change(
            session,
            community,
            by=by,
            action="link.deleted",
            target=link_id,
            before=before,
            after={"status": "closed"} if used else None,
        )


# --- intertrades -------------------------------------------------------------------------------


def _posted(outcome: Outcome) -> PostedExchange:
    if outcome.refusal is not None:
        raise outcome.refusal
    result = cast(list[PostedExchange], outcome.result)
    return result[0]


def _rates(link: Link, provider_community: str) -> tuple[int, int]:
    """(provider side's rate, receiver side's rate)."""
    if link.a == provider_community:
        return link.rate_a, link.rate_b
    return link.rate_b, link.rate_a


def record_intertrade(
    session: Session, receiver_community: str, spec: IntertradeCreate, *, by: Principal
) -> IntertradePublic:
    """Record one intertrade: `provider +x, @link:<receiver's> -x` in the provider's community,
    `@link:<provider's> +y, receiver -y` in the receiver's, in the caller's transaction."""
    provider_community, provider = spec.provider.split("/", 1)
    if provider_community == receiver_community:
        raise ValidationFailed(
            [{"loc": ["body", "provider"], "msg": "the provider is in another community"}]
        )
    missing = NotFound(f"No link between {receiver_community!r} and {provider_community!r}.")
    if session.get(Community, provider_community) is None:
        raise missing
    stores = lock_communities(session, (provider_community, receiver_community))
    if by.key_id not in stores[receiver_community].check([by.key_id], [])[0]:
        raise Unauthorized("Unknown or revoked API key.")
    link = _link_between(session, provider_community, receiver_community)
    if link is None or link.status == "closed":
        raise missing
    if link.status != "active":
        raise InvalidState(
            f"The link with {provider_community!r} is {link.status}: no new intertrades.",
            link_status=link.status,
        )
    provider_rate, receiver_rate = _rates(link, provider_community)
    if spec.amount_in == "provider":
        provider_amount = spec.amount
        receiver_amount = convert(spec.amount, provider_rate, receiver_rate)
    else:
        receiver_amount = spec.amount
        provider_amount = convert(spec.amount, receiver_rate, provider_rate)
    if min(provider_amount, receiver_amount) < 1:
        raise ValidationFailed(
            [{"loc": ["body", "amount"], "msg": "converts to 0 at the link's rate"}]
        )
    intertrade_id = str(uuid.uuid4())
    sides = [
        (
            provider_community,
            Draft(
                provider=provider,
                receiver=clearing_account(receiver_community),
                amount=provider_amount,
                description=spec.description,
                intertrade_id=intertrade_id,
            ),
        ),
        (
            receiver_community,
            Draft(
                provider=clearing_account(provider_community),
                receiver=spec.receiver,
                amount=receiver_amount,
                description=spec.description,
                intertrade_id=intertrade_id,
            ),
        ),
    ]
    posted: dict[str, PostedExchange] = {}
    for community, draft in sides:
        [outcome] = record(
            session,
            community,
            [Post([draft], created_by=by.key_id)],
            store=stores[community],
        )
        posted[community] = _posted(outcome)
    now = utc_now()
    row = {
        "id": intertrade_id,
        "link_id": link.id,
        "provider_community": provider_community,
        "provider": provider,
        "provider_amount": provider_amount,
        "provider_exchange_id": posted[provider_community].id,
        "receiver_community": receiver_community,
        "receiver": spec.receiver,
        "receiver_amount": receiver_amount,
        "receiver_exchange_id": posted[receiver_community].id,
        "amount_in": spec.amount_in,
        "rate_a": link.rate_a,
        "rate_b": link.rate_b,
        "reverses": None,
        "description": spec.description,
        "created_by": by.key_id,
        "created_at": now,
    }
    session.execute(_intertrades.insert().values(row))
    return intertrade_public(row)


def intertrade_public(row: Any) -> IntertradePublic:
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    return IntertradePublic(
        id=get("id"),
        link=get("link_id"),
        provider=IntertradeSide(
            community=get("provider_community"),
            member=get("provider"),
            amount=get("provider_amount"),
            exchange_id=get("provider_exchange_id"),
        ),
        receiver=IntertradeSide(
            community=get("receiver_community"),
            member=get("receiver"),
            amount=get("receiver_amount"),
            exchange_id=get("receiver_exchange_id"),
        ),
        amount_in=get("amount_in"),
        rate=RatePublic(a=get("rate_a"), b=get("rate_b")),
        description=get("description"),
        reverses=get("reverses"),
        created_at=get("created_at"),
    )


def get_intertrade(session: Session, community_id: str, intertrade_id: str) -> IntertradePublic:
    """An intertrade either side of which is in `community_id`."""
    row = session.execute(
        select(_intertrades).where(
            _intertrades.c.id == intertrade_id,
            or_(
                _intertrades.c.provider_community == community_id,
                _intertrades.c.receiver_community == community_id,
            ),
        )
    ).first()
    if row is None:
        raise NotFound(f"Intertrade {intertrade_id!r} not found.")
    return intertrade_public(row)


def reverse_intertrade(
    session: Session, community_id: str, intertrade_id: str, reason: str, *, by: Principal
) -> IntertradePublic:
    """Undo both sides of an intertrade together, each with a reversal in its own community (a
    treasurer of either community)."""
    original = get_intertrade(session, community_id, intertrade_id)
    provider_community = original.provider.community
    receiver_community = original.receiver.community
    stores = lock_communities(session, (provider_community, receiver_community))
    if by.key_id not in stores[community_id].check([by.key_id], [])[0]:
        raise Unauthorized("Unknown or revoked API key.")
    already = session.execute(
        select(_intertrades.c.id).where(_intertrades.c.reverses == intertrade_id)
    ).scalar_one_or_none()
    if already is not None or original.reverses is not None:
        raise InvalidState(
            "The intertrade is already reversed, or is itself a reversal.",
            current_status="reversed",
        )
    reversal_id = str(uuid.uuid4())
    posted: dict[str, PostedExchange] = {}
    for side in (original.provider, original.receiver):
        draft = Draft(
            provider="",
            receiver="",
            amount=0,
            description=reason,
            reverses=side.exchange_id,
            intertrade_id=reversal_id,
        )
        [outcome] = record(
            session,
            side.community,
            [Post([draft], created_by=by.key_id)],
            store=stores[side.community],
        )
        posted[side.community] = _posted(outcome)
    link = session.get(Link, original.link)
    assert link is not None
    row = {
        "id": reversal_id,
        "link_id": original.link,
        "provider_community": provider_community,
        "provider": original.provider.member,
        "provider_amount": original.provider.amount,
        "provider_exchange_id": posted[provider_community].id,
        "receiver_community": receiver_community,
        "receiver": original.receiver.member,
        "receiver_amount": original.receiver.amount,
        "receiver_exchange_id": posted[receiver_community].id,
        "amount_in": original.amount_in,
        "rate_a": original.rate.a,
        "rate_b": original.rate.b,
        "reverses": intertrade_id,
        "description": reason,
        "created_by": by.key_id,
        "created_at": utc_now(),
    }
    session.execute(_intertrades.insert().values(row))
    for side in (original.provider, original.receiver):
        record_change(
            session,
            side.community,
            by=by,
            action="intertrade.reversed",
            target=intertrade_id,
            before={"reversed_by": None},
            after={"reversed_by": reversal_id, "reason": reason},
        )
    return intertrade_public(row)


# --- what the audit and the report read --------------------------------------------------------


def link_figures(session: Session, community_id: str) -> list[dict[str, Any]]:
    """For each link of `community_id`: the other community, the clearing balance, the cap, and
    what the community exported and imported over it (its own minor units, reversals netted)."""
    links = session.execute(
        select(Link).where(or_(Link.a == community_id, Link.b == community_id)).order_by(Link.id)
    ).scalars()
    figures = []
    for link in links:
        other = link.b if link.a == community_id else link.a
        cap = link.a_cap if link.a == community_id else link.b_cap
        exported = _sum_side(session, link.id, provider_community=community_id)
        imported = _sum_side(session, link.id, receiver_community=community_id)
        figures.append(
            {
                "link": link.id,
                "other": other,
                "status": link.status,
                "balance": _clearing_balances(session, link).get(community_id, 0),
                "cap": cap,
                "exports": exported,
                "imports": imported,
            }
        )
    return figures


def _sum_side(
    session: Session,
    link_id: str,
    *,
    provider_community: str | None = None,
    receiver_community: str | None = None,
) -> int:
    """Net amount of the link's intertrades on one side: provider amounts of those whose
    provider is `provider_community`, or receiver amounts of those whose receiver is
    `receiver_community`; reversals count negative."""
    if provider_community is not None:
        amount = _intertrades.c.provider_amount
        side = _intertrades.c.provider_community == provider_community
    else:
        amount = _intertrades.c.receiver_amount
        side = _intertrades.c.receiver_community == receiver_community
    signed = case((_intertrades.c.reverses.is_(None), amount), else_=-amount)
    total = session.execute(
        select(func.coalesce(func.sum(signed), 0)).where(_intertrades.c.link_id == link_id, side)
    ).scalar_one()
    return int(total)
