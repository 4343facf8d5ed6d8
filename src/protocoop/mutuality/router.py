"""`/v1/communities/{community_id}/mutuality`, `.../members/{member_id}/mutuality` and
`.../audit`: does mutuality hold, and is the ledger whole."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from protocoop.auth.deps import DatabaseDep, Overseer, Reader
from protocoop.errors import ValidationFailed
from protocoop.mutuality import audit as audit_service
from protocoop.mutuality import service
from protocoop.mutuality.schemas import AuditReport, MemberMutualityPublic, MutualityPublic
from protocoop.routing import MemberPath, problem_responses
from protocoop.schemas import Timestamp

router = APIRouter(prefix="/v1/communities/{community_id}", tags=["mutuality"])

Since = Annotated[Timestamp | None, Query(description="Window start (inclusive), RFC 3339.")]
Until = Annotated[Timestamp | None, Query(description="Window end (exclusive), RFC 3339.")]


def _require_window(since: datetime | None, until: datetime | None) -> None:
    """A window [since, until) must not end before it starts."""
    if since is not None and until is not None and since > until:
        raise ValidationFailed(
            [{"loc": ["query", "since"], "msg": "since must not be later than until"}]
        )


@router.get(
    "/mutuality", response_model=MutualityPublic, responses=problem_responses(401, 403, 404, 422)
)
def community_mutuality(
    community_id: str, _: Overseer, db: DatabaseDep, since: Since = None, until: Until = None
) -> MutualityPublic:
    """Does mutuality hold? Integrity, zero sum and limits decide; reciprocity per member and
    pair, and community indicators, describe. Reversed exchanges are not counted."""
    _require_window(since, until)
    with db.read() as session:
        return service.community_mutuality(session, community_id, since, until)


@router.get(
    "/members/{member_id}/mutuality",
    response_model=MemberMutualityPublic,
    responses=problem_responses(401, 404, 422),
)
def member_mutuality(
    community_id: str,
    member_id: MemberPath,
    _: Reader,
    db: DatabaseDep,
    since: Since = None,
    until: Until = None,
) -> MemberMutualityPublic:
    """One member's reciprocity, overall and with each partner."""
    _require_window(since, until)
    with db.read() as session:
        return service.member_mutuality_document(session, community_id, member_id, since, until)


@router.get(
    "/audit",
    response_model=AuditReport,
    tags=["audit"],
    responses=problem_responses(401, 403, 404),
)
def audit(community_id: str, _: Overseer, db: DatabaseDep) -> AuditReport:
    """Recompute invariants 1-5 from the entries and re-hash the whole chain; `ok` when all
    hold. A clean result becomes the checkpoint later reports verify from."""
    return audit_service.audit_and_checkpoint(db, community_id)
