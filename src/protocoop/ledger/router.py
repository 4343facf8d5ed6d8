"""`/v1/communities/{community_id}/exchanges`: record, propose, settle, reverse, read."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from protocoop.auth.deps import DatabaseDep, Manager, Poster, Reader, revalidates_key
from protocoop.auth.roles import Principal, Role
from protocoop.errors import Forbidden
from protocoop.idempotency import IdempotencyKey
from protocoop.json_bodies import StrictJSONRoute
from protocoop.ledger import queries, service
from protocoop.ledger.expiry import read_after_expiry
from protocoop.ledger.planner import Post, Settle
from protocoop.ledger.records import Draft, Settlement
from protocoop.ledger.schemas import (
    DEFAULT_EXPIRES_IN,
    BatchPublic,
    ExchangeBatch,
    ExchangeCreate,
    ExchangePublic,
    ExchangeStatus,
    ReverseRequest,
)
from protocoop.ledger.writer import GroupCommitWriter, PostRequest
from protocoop.pagination import decode_cursor
from protocoop.responses import Rendered, render
from protocoop.routing import (
    CursorQuery,
    ExchangePath,
    IdempotencyDep,
    LimitQuery,
    as_response,
    problem_responses,
)
from protocoop.schemas import ACCOUNT_ID_PATTERN, Page, Timestamp, exchange_id_in_path

router = APIRouter(
    prefix="/v1/communities/{community_id}/exchanges",
    tags=["exchanges"],
    route_class=StrictJSONRoute,
)

POSTING_PROBLEMS = problem_responses(401, 403, 404, 409, 422, 503)


def draft(spec: ExchangeCreate) -> Draft:
    return Draft(
        provider=spec.provider,
        receiver=spec.receiver,
        amount=spec.amount,
        description=spec.description,
        category=spec.category,
        external_id=spec.external_id,
        occurred_at=spec.occurred_at,
        metadata=spec.metadata,
        pending=spec.pending,
        initiated_by=spec.initiated_by,
        expires_in=spec.expires_in or DEFAULT_EXPIRES_IN,
    )


def _guard_system_accounts(
    principal: Principal, parties: Iterable[tuple[str, str]], doing: str = "post"
) -> None:
    """Only a treasurer (or admin) moves a community's own funds such as @commons: posts an
    exchange, or settles a proposal, with (provider, receiver) among `parties`."""
    if principal.role in (Role.ADMIN, Role.TREASURER):
        return
    for provider, receiver in parties:
        if provider.startswith("@") or receiver.startswith("@"):
            raise Forbidden(f"Only a treasurer may {doing} exchanges with system accounts.")


async def _through_writer(
    request: Request,
    community_id: str,
    principal: Principal,
    idempotency: IdempotencyKey | None,
    change: Post | Settle,
    render_result: Callable[[Any], Rendered],
    also: Callable[[Session, Any], None] | None = None,
) -> Response:
    """Hand a change to the process's group-commit writer and wait for the answer: it is
    recorded, and its `Idempotency-Key` checked and remembered, in one transaction."""
    writer: GroupCommitWriter = request.app.state.writer
    claim = (
        request.app.state.in_flight.claim(community_id, idempotency)
        if idempotency is not None
        else nullcontext()
    )
    with claim:
        rendered = await writer.submit(
            PostRequest(
                community_id=community_id,
                change=change,
                key_id=principal.key_id,
                idempotency=idempotency,
                render=render_result,
                also=also,
            )
        )
    return as_response(rendered)


@router.post("", status_code=201, response_model=ExchangePublic, responses=POSTING_PROBLEMS)
@revalidates_key
async def post_exchange(
    community_id: str,
    spec: ExchangeCreate,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Record an exchange: the receiver's balance goes down by `amount`, the provider's up.
    With `"pending": true` it is only proposed: its amount is reserved until it is accepted,
    rejected, cancelled or expires."""
    _guard_system_accounts(principal, [(spec.provider, spec.receiver)])
    return await _through_writer(
        request,
        community_id,
        principal,
        idempotency,
        Post([draft(spec)], created_by=principal.key_id),
        lambda posted: render(201, queries.document(posted[0])),
    )


@router.post(":batch", status_code=201, response_model=BatchPublic, responses=POSTING_PROBLEMS)
@revalidates_key
async def post_batch(
    community_id: str,
    batch: ExchangeBatch,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Record up to 1000 exchanges in order, all or nothing: a refusal names the item's `index`.
    Limits apply to the running balances within the batch."""
    _guard_system_accounts(principal, ((spec.provider, spec.receiver) for spec in batch.exchanges))
    return await _through_writer(
        request,
        community_id,
        principal,
        idempotency,
        Post([draft(spec) for spec in batch.exchanges], created_by=principal.key_id, batch=True),
        lambda posted: render(201, {"exchanges": [queries.document(p) for p in posted]}),
    )


@router.post(
    "/{exchange_id}/reverse",
    status_code=201,
    response_model=ExchangePublic,
    responses=POSTING_PROBLEMS,
)
@revalidates_key
async def reverse_exchange(
    community_id: str,
    exchange_id: ExchangePath,
    spec: ReverseRequest,
    principal: Manager,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Undo a completed exchange with a new one going the other way (`reverses`); once only."""
    exchange_id = exchange_id_in_path(exchange_id)
    reversal = Draft(
        provider="", receiver="", amount=0, description=spec.reason, reverses=exchange_id
    )

    return await _through_writer(
        request,
        community_id,
        principal,
        idempotency,
        Post([reversal], created_by=principal.key_id),
        lambda posted: render(201, queries.public(posted[0])),
        also=service.logs_reversal(community_id, principal, exchange_id, spec.reason),
    )


async def _settle(
    request: Request,
    community_id: str,
    exchange_id: str,
    action: Settlement,
    idempotency: IdempotencyKey | None,
    principal: Principal,
) -> Response:
    """Accept, reject or cancel a proposal. One found expired is released (that is kept) and
    the answer is `409 invalid_state` with `current_status` `expired`."""
    exchange_id = exchange_id_in_path(exchange_id)
    return await _through_writer(
        request,
        community_id,
        principal,
        idempotency,
        Settle(
            exchange_id,
            action,
            system_accounts=principal.role in (Role.ADMIN, Role.TREASURER),
        ),
        lambda settled: render(200, queries.public(settled)),
    )


SETTLE_RESPONSES = problem_responses(401, 403, 404, 409, 503)


@router.post("/{exchange_id}/accept", response_model=ExchangePublic, responses=SETTLE_RESPONSES)
@revalidates_key
async def accept_exchange(
    community_id: str,
    exchange_id: ExchangePath,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Accept a pending exchange: it is recorded now (entries, `seq`, `hash`) and its
    reservation released, in one transaction. Never fails on limits: they were reserved."""
    return await _settle(request, community_id, exchange_id, "accept", idempotency, principal)


@router.post("/{exchange_id}/reject", response_model=ExchangePublic, responses=SETTLE_RESPONSES)
@revalidates_key
async def reject_exchange(
    community_id: str,
    exchange_id: ExchangePath,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """The counterparty declines a pending exchange; its reservation is released."""
    return await _settle(request, community_id, exchange_id, "reject", idempotency, principal)


@router.post("/{exchange_id}/cancel", response_model=ExchangePublic, responses=SETTLE_RESPONSES)
@revalidates_key
async def cancel_exchange(
    community_id: str,
    exchange_id: ExchangePath,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """The initiator withdraws a pending exchange; its reservation is released."""
    return await _settle(request, community_id, exchange_id, "cancel", idempotency, principal)


@router.get("", response_model=Page[ExchangePublic], responses=problem_responses(401, 404, 422))
def list_exchanges(
    community_id: str,
    _: Reader,
    db: DatabaseDep,
    member: Annotated[str | None, Query(pattern=ACCOUNT_ID_PATTERN)] = None,
    status: Annotated[ExchangeStatus, Query()] = "completed",
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
    after_seq: Annotated[int, Query(ge=0, lt=2**63)] = 0,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[ExchangePublic]:
    """Completed exchanges in `seq` order (the ledger), or with `status` pending, rejected,
    cancelled or expired the proposals in creation order. `member` keeps those it took part in;
    `since`/`until` bound the time recorded to [since, until)."""
    if status == "completed":
        position = decode_cursor(cursor, expect={"after_seq": int})
        with db.read() as session:
            return queries.list_exchanges(
                session,
                community_id,
                member=member,
                since=since,
                until=until,
                after_seq=position["after_seq"] if position else after_seq,
                limit=limit,
            )
    proposals = decode_cursor(cursor, expect={"after_time": datetime, "after_id": str})
    after = (proposals["after_time"], proposals["after_id"]) if proposals else None
    return read_after_expiry(
        db,
        community_id,
        lambda session: queries.list_proposals(
            session,
            community_id,
            status=status,
            member=member,
            since=since,
            until=until,
            after=after,
            limit=limit,
        ),
    )


@router.get(
    "/{exchange_id}", response_model=ExchangePublic, responses=problem_responses(401, 404, 422)
)
def get_exchange(
    community_id: str, exchange_id: ExchangePath, _: Reader, db: DatabaseDep
) -> ExchangePublic:
    """One exchange, completed or proposed."""
    exchange_id = exchange_id_in_path(exchange_id)
    return read_after_expiry(
        db,
        community_id,
        lambda session: queries.get_exchange(session, community_id, exchange_id),
        exchange_id=exchange_id,
    )
