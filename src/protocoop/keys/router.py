"""`/v1/api-keys`."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from protocoop.auth.deps import DatabaseDep, KeyManager
from protocoop.idempotency import GLOBAL_SCOPE
from protocoop.json_bodies import StrictJSONRoute
from protocoop.keys import service
from protocoop.keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from protocoop.pagination import decode_cursor
from protocoop.responses import Rendered, render
from protocoop.routing import (
    CursorQuery,
    IdempotencyDep,
    KeyPath,
    LimitQuery,
    problem_responses,
    respond,
)
from protocoop.schemas import Page

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"], route_class=StrictJSONRoute)


@router.post(
    "",
    status_code=201,
    # A replay (same Idempotency-Key) answers without the token, which is never stored.
    response_model=ApiKeyCreated | ApiKeyPublic,
    responses={
        201: {"description": "The key, with its `token` (a replay: without it)"},
        **problem_responses(401, 403, 404, 409, 422, 503),
    },
)
def create_key(
    spec: ApiKeyCreate, principal: KeyManager, idempotency: IdempotencyDep, request: Request
) -> Response:
    """Create a key (admin; a treasurer: app and auditor keys of its community). The `token` is
    in this answer only. A retry with the same Idempotency-Key gets the key without its token."""

    def work(session: Session) -> Rendered:
        created = service.create_key(
            session,
            role=spec.role,
            community_id=spec.community,
            label=spec.label,
            created_by=principal,
        )
        without_token = render(201, ApiKeyPublic(**created.model_dump(exclude={"token"})))
        return replace(render(201, created), remembered_body=without_token.body)

    scope = spec.community or principal.community_id or GLOBAL_SCOPE
    return respond(request, scope, idempotency, work)


@router.get("", response_model=Page[ApiKeyPublic], responses=problem_responses(401, 403, 422))
def list_keys(
    principal: KeyManager, db: DatabaseDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[ApiKeyPublic]:
    """Keys without their tokens: all for an admin, its community's for a treasurer."""
    position = decode_cursor(cursor, expect={"after": str})
    with db.read() as session:
        return service.list_keys(
            session,
            visible_to=principal,
            after=position["after"] if position else None,
            limit=limit,
        )


@router.delete("/{key_id}", status_code=204, responses=problem_responses(401, 403, 404, 503))
def revoke_key(
    key_id: KeyPath, principal: KeyManager, db: DatabaseDep, request: Request
) -> Response:
    """Revoke a key; it stops working from the next request."""
    db.run_write(lambda session: service.revoke_key(session, key_id, by=principal))
    request.app.state.principals.forget_key(key_id)
    return Response(status_code=204)
