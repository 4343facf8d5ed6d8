"""`/v1/communities/{community_id}/audit`."""

from __future__ import annotations

from fastapi import APIRouter

from protocoop.audit import service
from protocoop.audit.schemas import AuditReport
from protocoop.auth.deps import DatabaseDep, Overseer
from protocoop.routing import problem_responses

router = APIRouter(prefix="/v1/communities/{community_id}", tags=["audit"])


@router.get("/audit", response_model=AuditReport, responses=problem_responses(401, 403, 404))
def audit(community_id: str, _: Overseer, db: DatabaseDep) -> AuditReport:
    """Recompute invariants 1-5 from the entries and re-hash the whole chain; `ok` when all
    hold. A clean result becomes the checkpoint later reports verify from."""
    with db.read() as session:
        report = service.audit_community(session, community_id)
    if report.ok:
        db.run_write(
            lambda session: service.record_checkpoint(
                session, community_id, report.checked_exchanges
            )
        )
    return report
