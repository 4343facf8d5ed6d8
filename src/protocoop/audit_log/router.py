"""`/v1/communities/{community_id}/audit-log` and `/v1/audit-log`: who changed what, and when."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from protocoop.audit_log import service
from protocoop.audit_log.schemas import AuditLogEntryPublic
from protocoop.auth.deps import Admin, DatabaseDep, Overseer
from protocoop.pagination import decode_cursor
from protocoop.routing import CursorQuery, LimitQuery, problem_responses
from protocoop.schemas import Page

router = APIRouter(tags=["audit log"])

ActionQuery = Annotated[service.Action | None, Query(description="Only entries of this action.")]
TargetQuery = Annotated[
    str | None,
    Query(
        pattern=r"^@?[a-z0-9][a-z0-9_-]{0,99}$",
        description="Only entries about this id (a member, API key, exchange or community).",
    ),
]


def _page(
    db: DatabaseDep,
    community_id: str | None,
    action: str | None,
    target: str | None,
    limit: int,
    cursor: str | None,
) -> Page[AuditLogEntryPublic]:
    position = decode_cursor(cursor, expect={"before": int})
    with db.read() as session:
        return service.list_entries(
            session,
            community_id,
            action=action,
            target=target,
            before_id=position["before"] if position else None,
            limit=limit,
        )


@router.get(
    "/v1/communities/{community_id}/audit-log",
    response_model=Page[AuditLogEntryPublic],
    responses=problem_responses(401, 403, 404, 422),
)
def community_audit_log(
    community_id: str,
    _: Overseer,
    db: DatabaseDep,
    action: ActionQuery = None,
    target: TargetQuery = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[AuditLogEntryPublic]:
    """Every change to the community that is not an exchange — the community itself, members,
    limits, status, its API keys, reversals — newest first, with the key that made it and the
    changed values before and after (treasurer, auditor, admin)."""
    return _page(db, community_id, action, target, limit, cursor)


@router.get(
    "/v1/audit-log",
    response_model=Page[AuditLogEntryPublic],
    responses=problem_responses(401, 403, 422),
)
def instance_audit_log(
    _: Admin,
    db: DatabaseDep,
    action: ActionQuery = None,
    target: TargetQuery = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[AuditLogEntryPublic]:
    """Changes that belong to no community — admin keys created and revoked — newest first
    (admin). Everything else is in its community's `/audit-log`."""
    return _page(db, None, action, target, limit, cursor)
