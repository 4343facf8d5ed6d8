"""`/v1/communities`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from protocoop.auth.deps import Admin, DatabaseDep, Manager, PrincipalDep, Reader
from protocoop.communities import service
from protocoop.communities.schemas import CommunityCreate, CommunityPublic, CommunityUpdate
from protocoop.idempotency import GLOBAL_SCOPE
from protocoop.json_bodies import StrictJSONRoute
from protocoop.pagination import decode_cursor
from protocoop.responses import render
from protocoop.routing import CursorQuery, IdempotencyDep, LimitQuery, problem_responses, respond
from protocoop.schemas import Page

router = APIRouter(prefix="/v1/communities", tags=["communities"], route_class=StrictJSONRoute)


@router.post(
    "",
    status_code=201,
    response_model=CommunityPublic,
    responses=problem_responses(401, 403, 409, 422, 503),
)
def create_community(
    spec: CommunityCreate, principal: Admin, idempotency: IdempotencyDep, request: Request
) -> Response:
    """Create a community (admin). Its `@commons` fund account is created with it."""
    return respond(
        request,
        GLOBAL_SCOPE,
        idempotency,
        lambda session: render(201, service.create_community(session, spec, by=principal)),
    )


@router.get("", response_model=Page[CommunityPublic], responses=problem_responses(401, 422))
def list_communities(
    principal: PrincipalDep, db: DatabaseDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[CommunityPublic]:
    """Communities in id order: every one for an admin key, its own for any other key."""
    position = decode_cursor(cursor, expect={"after": str})
    with db.read() as session:
        return service.list_communities(
            session,
            visible_to=principal,
            after=position["after"] if position else None,
            limit=limit,
        )


@router.get(
    "/{community_id}", response_model=CommunityPublic, responses=problem_responses(401, 404)
)
def get_community(community_id: str, _: Reader, db: DatabaseDep) -> CommunityPublic:
    with db.read() as session:
        return service.public(service.get_community(session, community_id))


@router.patch(
    "/{community_id}",
    response_model=CommunityPublic,
    responses=problem_responses(401, 403, 404, 422, 503),
)
def update_community(
    community_id: str, changes: CommunityUpdate, principal: Manager, db: DatabaseDep
) -> CommunityPublic:
    """Change the name or default limits (admin, treasurer) or the status (admin)."""
    return db.run_write(
        lambda session: service.update_community(session, community_id, changes, by=principal)
    )
