"""`/v1/communities/{community_id}/members`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from protocoop.auth.deps import DatabaseDep, Manager, Reader
from protocoop.json_bodies import StrictJSONRoute
from protocoop.members import service
from protocoop.members.schemas import MemberCreate, MemberPublic, MemberStatus, MemberUpdate
from protocoop.pagination import decode_cursor
from protocoop.responses import render
from protocoop.routing import (
    CursorQuery,
    IdempotencyDep,
    LimitQuery,
    MemberPath,
    problem_responses,
    respond,
)
from protocoop.schemas import Page

router = APIRouter(
    prefix="/v1/communities/{community_id}/members",
    tags=["members"],
    route_class=StrictJSONRoute,
)


@router.post(
    "",
    status_code=201,
    response_model=MemberPublic,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
def create_member(
    community_id: str,
    spec: MemberCreate,
    principal: Manager,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Add a member (treasurer) with balance 0 and the given or default limits."""
    return respond(
        request,
        community_id,
        idempotency,
        lambda session: render(
            201, service.create_member(session, community_id, spec, by=principal)
        ),
    )


@router.get("", response_model=Page[MemberPublic], responses=problem_responses(401, 404, 422))
def list_members(
    community_id: str,
    _: Reader,
    db: DatabaseDep,
    status: Annotated[MemberStatus | None, Query()] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[MemberPublic]:
    """Members in id order, each with balance and limits; `status` filters."""
    position = decode_cursor(cursor, expect={"after": str})
    with db.read() as session:
        return service.list_members(
            session,
            community_id,
            status=status,
            after=position["after"] if position else None,
            limit=limit,
        )


@router.get("/{member_id}", response_model=MemberPublic, responses=problem_responses(401, 404))
def get_member(
    community_id: str, member_id: MemberPath, _: Reader, db: DatabaseDep
) -> MemberPublic:
    with db.read() as session:
        return service.get_member(session, community_id, member_id)


@router.patch(
    "/{member_id}",
    response_model=MemberPublic,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
def update_member(
    community_id: str,
    member_id: MemberPath,
    changes: MemberUpdate,
    principal: Manager,
    db: DatabaseDep,
) -> MemberPublic:
    """Change name, status or limits (treasurer). Limits must keep the balance inside."""
    return db.run_write(
        lambda session: service.update_member(
            session, community_id, member_id, changes, by=principal
        )
    )
