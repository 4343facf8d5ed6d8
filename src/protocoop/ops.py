"""Liveness, readiness and metrics: what an orchestrator and Prometheus ask."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from protocoop.auth.deps import MetricsReader
from protocoop.db import migrate
from protocoop.errors import Unavailable
from protocoop.observability import metrics_document
from protocoop.routing import problem_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (says nothing about the database)."""
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
def readyz(request: Request) -> dict[str, str]:
    """200 when the database answers and its schema is at the latest migration, else 503."""
    db = request.app.state.db
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current = migrate.current_revisions(db.engine)
    except Exception as error:
        raise Unavailable("The database does not answer.") from error
    if current != request.app.state.head_revisions:
        raise Unavailable(
            f"The database schema is at {sorted(current) or 'nothing'}, not at the latest "
            "migration; run `protocoop db upgrade`."
        )
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **problem_responses(401, 403, 429, 503),
    },
)
def metrics(_: MetricsReader) -> Response:
    """Prometheus text exposition: latencies, exchanges recorded and refused, batch and
    group-commit sizes, database connections in use. Send the metrics token
    (`PROTOCOOP_METRICS_TOKEN`) or an admin key as `Authorization: Bearer ...`, unless the
    operator made it public (`PROTOCOOP_METRICS_PUBLIC=true`)."""
    document, content_type = metrics_document()
    return Response(document, media_type=content_type)
