"""`/v1/communities/{community_id}/exchanges`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from protocoop.auth.deps import DatabaseDep, Manager, Poster, Reader
from protocoop.auth.roles import Principal, Role
from protocoop.errors import Forbidden
from protocoop.idempotency import IdempotencyDep, respond
from protocoop.ledger import queries
from protocoop.ledger.schemas import (
    BatchPublic,
    ExchangeBatch,
    ExchangeCreate,
    ExchangePublic,
    ReverseRequest,
)
from protocoop.ledger.service import Draft, post_exchanges
from protocoop.pagination import CursorQuery, LimitQuery, decode_cursor
from protocoop.responses import Rendered, problem_responses, render
from protocoop.schemas import ACCOUNT_ID_PATTERN, ExchangePath, Page, Timestamp

router = APIRouter(prefix="/v1/communities/{community_id}/exchanges", tags=["exchanges"])

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
    )


def _guard_system_accounts(principal: Principal, specs: Iterable[ExchangeCreate]) -> None:
    """Only a treasurer (or admin) moves a community's own funds such as @commons."""
    if principal.role in (Role.ADMIN, Role.TREASURER):
        return
    for spec in specs:
        if spec.provider.startswith("@") or spec.receiver.startswith("@"):
            raise Forbidden("Only a treasurer may post exchanges with system accounts.")


@router.post("", status_code=201, response_model=ExchangePublic, responses=POSTING_PROBLEMS)
def post_exchange(
    community_id: str,
    spec: ExchangeCreate,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Record an exchange: the receiver's balance goes down by `amount`, the provider's up."""
    _guard_system_accounts(principal, [spec])
    drafts = [draft(spec)]
    return respond(
        request,
        community_id,
        idempotency,
        lambda session: render(
            201,
            queries.public(
                post_exchanges(session, community_id, drafts, created_by=principal.key_id)[0]
            ),
        ),
    )


@router.post(":batch", status_code=201, response_model=BatchPublic, responses=POSTING_PROBLEMS)
def post_batch(
    community_id: str,
    batch: ExchangeBatch,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Record up to 1000 exchanges in order, all or nothing: a refusal names the item's `index`.
    Limits apply to the running balances within the batch."""
    _guard_system_accounts(principal, batch.exchanges)
    drafts = [draft(spec) for spec in batch.exchanges]

    def work(session: Session) -> Rendered:
        posted = post_exchanges(
            session, community_id, drafts, created_by=principal.key_id, batch=True
        )
        return render(201, BatchPublic(exchanges=[queries.public(p) for p in posted]))

    return respond(request, community_id, idempotency, work)


@router.post(
    "/{exchange_id}/reverse",
    status_code=201,
    response_model=ExchangePublic,
    responses=POSTING_PROBLEMS,
)
def reverse_exchange(
    community_id: str,
    exchange_id: ExchangePath,
    spec: ReverseRequest,
    principal: Manager,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Undo an exchange with a new one going the other way (`reverses`); once only."""
    reversal = Draft(
        provider="", receiver="", amount=0, description=spec.reason, reverses=exchange_id
    )
    return respond(
        request,
        community_id,
        idempotency,
        lambda session: render(
            201,
            queries.public(
                post_exchanges(session, community_id, [reversal], created_by=principal.key_id)[0]
            ),
        ),
    )


@router.get("", response_model=Page[ExchangePublic], responses=problem_responses(401, 404, 422))
def list_exchanges(
    community_id: str,
    _: Reader,
    db: DatabaseDep,
    member: Annotated[str | None, Query(pattern=ACCOUNT_ID_PATTERN)] = None,
    status: Annotated[Literal["completed"] | None, Query()] = None,
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
    after_seq: Annotated[int, Query(ge=0, lt=2**63)] = 0,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[ExchangePublic]:
    """Exchanges in `seq` order; `member` keeps those it took part in, `since`/`until` bound
    the recording time to [since, until)."""
    position = decode_cursor(cursor, expect=("after_seq",))
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


@router.get(
    "/{exchange_id}", response_model=ExchangePublic, responses=problem_responses(401, 404, 422)
)
def get_exchange(
    community_id: str, exchange_id: ExchangePath, _: Reader, db: DatabaseDep
) -> ExchangePublic:
    with db.read() as session:
        return queries.get_exchange(session, community_id, exchange_id)
