"""Balances, statements and the trial balance under `/v1/communities/{community_id}`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from protocoop.auth.deps import DatabaseDep, Overseer, Reader
from protocoop.balances import service
from protocoop.balances.schemas import BalancePublic, BalancesPage, Statement, TrialBalance
from protocoop.csv_rows import Cell, csv_chunks
from protocoop.db import Database
from protocoop.ledger.expiry import read_checking_expiry
from protocoop.pagination import bad_cursor, decode_cursor
from protocoop.routing import CursorQuery, LimitQuery, MemberPath, problem_responses
from protocoop.schemas import Timestamp

router = APIRouter(prefix="/v1/communities/{community_id}", tags=["balances"])

CSV_MEDIA_TYPE = "text/csv"
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}}}
}
AS_OF_SEQ_HEADER = "X-As-Of-Seq"

SeqQuery = Annotated[int | None, Query(ge=0, lt=2**63)]


def wants_csv(request: Request) -> bool:
    """Whether the client asked for CSV (`Accept: text/csv`)."""
    return CSV_MEDIA_TYPE in request.headers.get("accept", "")


def csv_response(
    db: Database,
    header: list[str],
    rows: Callable[[Session], Iterable[list[Cell]]],
    filename: str,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """Stream `rows` as spreadsheet-safe CSV (`protocoop.csv_rows`) from their own read
    transaction, in chunks."""

    def generate() -> Iterator[str]:
        with db.read() as session:
            yield from csv_chunks(header, rows(session))

    return StreamingResponse(
        generate(),
        media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', **(headers or {})},
    )


@router.get(
    "/members/{member_id}/balance",
    response_model=BalancePublic,
    responses=problem_responses(401, 404, 422),
)
def get_balance(
    community_id: str,
    member_id: MemberPath,
    _: Reader,
    db: DatabaseDep,
    as_of: Annotated[Timestamp | None, Query(description="A past time (RFC 3339).")] = None,
    as_of_seq: SeqQuery = None,
) -> BalancePublic:
    """The balance and the room left within the limits, now or at a past time or `seq`, with
    what pending exchanges reserve."""
    return read_checking_expiry(
        db,
        community_id,
        lambda session, check_due: service.member_balance(
            session,
            community_id,
            member_id,
            as_of=as_of,
            as_of_seq=as_of_seq,
            check_due=check_due,
        ),
    )


@router.get(
    "/balances",
    response_model=BalancesPage,
    responses={**problem_responses(401, 403, 404, 422), **CSV_RESPONSE},
)
def list_balances(
    community_id: str,
    request: Request,
    _: Overseer,
    db: DatabaseDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Any:
    """Every account's balance as one consistent snapshot: every page is at the first page's
    `as_of_seq`, and `sum` (over the whole snapshot) is 0. `Accept: text/csv` gives it all."""
    position = decode_cursor(cursor, expect={"as_of_seq": int, "after": str})
    if wants_csv(request):
        with db.read() as session:
            seq = service.head_seq(session, community_id)
        return csv_response(
            db,
            ["account", "kind", "balance", "lower_limit", "upper_limit"],
            lambda session: (
                [b.account, b.kind, b.balance, b.lower_limit, b.upper_limit]
                for b in service.every_balance(session, community_id, seq)
            ),
            f"{community_id}-balances-{seq}.csv",
            {AS_OF_SEQ_HEADER: str(seq)},
        )
    with db.read() as session:
        return service.balances_page(
            session,
            community_id,
            as_of_seq=position["as_of_seq"] if position else None,
            after=position["after"] if position else None,
            limit=limit,
        )


@router.get(
    "/members/{member_id}/statement",
    response_model=Statement,
    responses={**problem_responses(401, 404, 422), **CSV_RESPONSE},
)
def get_statement(
    community_id: str,
    member_id: MemberPath,
    request: Request,
    _: Reader,
    db: DatabaseDep,
    since: Annotated[Timestamp | None, Query(description="Window start (inclusive).")] = None,
    until: Annotated[Timestamp | None, Query(description="Window end (exclusive).")] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Any:
    """The member's entries in [since, until) with running balance, opening and closing
    balance. `Accept: text/csv` gives the whole window."""
    position = decode_cursor(cursor, expect={"from_seq": int, "to_seq": int, "after_seq": int})
    with db.read() as session:
        if position:
            from_seq, to_seq = position["from_seq"], position["to_seq"]
            # The window a first page fixed: (from_seq, to_seq] within the ledger, the page
            # after an entry inside it. Anything else would give meaningless balances.
            head = service.head_seq(session, community_id)
            if not from_seq < position["after_seq"] <= to_seq <= head:
                raise bad_cursor()
        else:
            from_seq, to_seq = service.statement_window(session, community_id, since, until)
        if not wants_csv(request):
            return service.statement(
                session,
                community_id,
                member_id,
                from_seq=from_seq,
                to_seq=to_seq,
                after_seq=position["after_seq"] if position else None,
                limit=limit,
            )
        service.require_account(session, community_id, member_id)
    return csv_response(
        db,
        [
            "seq",
            "exchange_id",
            "created_at",
            "counterparty",
            "description",
            "amount",
            "balance_after",
        ],
        lambda session: (
            [
                line.seq,
                line.exchange_id,
                line.model_dump(mode="json")["created_at"],
                line.counterparty,
                line.description,
                line.amount,
                line.balance_after,
            ]
            for line in service.statement_lines(session, community_id, member_id, from_seq, to_seq)
        ),
        f"{community_id}-{member_id}-statement.csv",
    )


@router.get(
    "/trial-balance", response_model=TrialBalance, responses=problem_responses(401, 403, 404)
)
def get_trial_balance(community_id: str, _: Overseer, db: DatabaseDep) -> TrialBalance:
    """Totals of all balances at the head: positive, negative and their sum (0)."""
    with db.read() as session:
        return service.trial_balance(session, community_id)
