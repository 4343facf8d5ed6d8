"""`/v1/links` (admin) and `/v1/communities/{community_id}/intertrades`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from protocoop.auth.deps import Admin, DatabaseDep, LinkReader, Manager, Poster, Reader
from protocoop.idempotency import GLOBAL_SCOPE
from protocoop.json_bodies import StrictJSONRoute
from protocoop.links import service
from protocoop.links.schemas import (
    IntertradeCreate,
    IntertradePublic,
    IntertradeReverse,
    LinkCreate,
    LinkPublic,
    LinkUpdate,
)
from protocoop.pagination import decode_cursor
from protocoop.responses import render
from protocoop.routing import CursorQuery, IdempotencyDep, LimitQuery, problem_responses, respond
from protocoop.schemas import Page

links = APIRouter(prefix="/v1/links", tags=["links"], route_class=StrictJSONRoute)
intertrades = APIRouter(
    prefix="/v1/communities/{community_id}/intertrades",
    tags=["intertrades"],
    route_class=StrictJSONRoute,
)


@links.post(
    "",
    status_code=201,
    response_model=LinkPublic,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
def create_link(
    spec: LinkCreate, principal: Admin, idempotency: IdempotencyDep, request: Request
) -> Response:
    """Link two communities (admin): a rate, and a cap on each side's balance of trade. Each
    community gets a clearing account for the link, `@link:<the other>`."""
    return respond(
        request,
        GLOBAL_SCOPE,
        idempotency,
        lambda session: render(201, service.create_link(session, spec, by=principal)),
    )


@links.get("", response_model=Page[LinkPublic], responses=problem_responses(401, 403, 422))
def list_links(
    principal: LinkReader, db: DatabaseDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[LinkPublic]:
    """Every link for an admin; a treasurer's or auditor's own community's links."""
    position = decode_cursor(cursor, expect={"after": str})
    with db.read() as session:
        return service.list_links(
            session,
            visible_to=principal,
            after=position["after"] if position else None,
            limit=limit,
        )


@links.get("/{link_id}", response_model=LinkPublic, responses=problem_responses(401, 403, 404))
def get_link(link_id: str, principal: LinkReader, db: DatabaseDep) -> LinkPublic:
    with db.read() as session:
        return service.get_link(session, link_id, visible_to=principal)


@links.patch(
    "/{link_id}",
    response_model=LinkPublic,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
def update_link(link_id: str, changes: LinkUpdate, principal: Admin, db: DatabaseDep) -> LinkPublic:
    """A new rate (new intertrades only), new caps, or suspend and resume (admin)."""
    return db.run_write(
        lambda session: service.update_link(session, link_id, changes, by=principal)
    )


@links.delete("/{link_id}", status_code=204, responses=problem_responses(401, 403, 404, 409, 503))
def delete_link(link_id: str, principal: Admin, db: DatabaseDep) -> Response:
    """Delete a link whose clearing accounts are both at 0 (admin); one that carried
    intertrades is kept as `closed`, with its history."""
    db.run_write(lambda session: service.delete_link(session, link_id, by=principal))
    return Response(status_code=204)


@intertrades.post(
    "",
    status_code=201,
    response_model=IntertradePublic,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
def record_intertrade(
    community_id: str,
    spec: IntertradeCreate,
    principal: Poster,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """A member of another, linked community gave a member of this one: one exchange in each
    community, in one transaction. Posted by a key of this (the receiver's) community."""
    return respond(
        request,
        community_id,
        idempotency,
        lambda session: render(
            201, service.record_intertrade(session, community_id, spec, by=principal)
        ),
    )


@intertrades.get(
    "/{intertrade_id}", response_model=IntertradePublic, responses=problem_responses(401, 404)
)
def get_intertrade(
    community_id: str, intertrade_id: str, _: Reader, db: DatabaseDep
) -> IntertradePublic:
    with db.read() as session:
        return service.get_intertrade(session, community_id, intertrade_id)


@intertrades.post(
    "/{intertrade_id}/reverse",
    status_code=201,
    response_model=IntertradePublic,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
def reverse_intertrade(
    community_id: str,
    intertrade_id: str,
    spec: IntertradeReverse,
    principal: Manager,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Reverse both sides of an intertrade together (a treasurer of either community)."""
    return respond(
        request,
        community_id,
        idempotency,
        lambda session: render(
            201,
            service.reverse_intertrade(
                session, community_id, intertrade_id, spec.reason, by=principal
            ),
        ),
    )
