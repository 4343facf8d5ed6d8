"""`/v1/communities/{community_id}/events`: the feed apps stay in sync with."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from protocoop.auth.deps import DatabaseDep, Reader
from protocoop.events import service
from protocoop.events.schemas import EventPage, EventPublic
from protocoop.routing import LimitQuery, problem_responses

router = APIRouter(prefix="/v1/communities/{community_id}", tags=["events"])

POLL_INTERVAL_S = 0.1


@router.get("/events", response_model=EventPage, responses=problem_responses(401, 404, 422))
async def list_events(
    community_id: str,
    _: Reader,
    db: DatabaseDep,
    after: Annotated[int, Query(ge=0, lt=2**63, description="The last event id you saw.")] = 0,
    limit: LimitQuery = 50,
    wait: Annotated[
        float, Query(ge=0, le=30, description="Seconds to wait for an event when none is there.")
    ] = 0,
) -> EventPage:
    """Events after `after`, in commit order. With `wait`, the request is held open until an
    event arrives or the wait ends (long polling). Store `next_after` and pass it back: you will
    see every event exactly once, in order, across restarts of the server."""

    def read() -> list[service.StoredEvent]:
        with db.read() as session:
            return service.events_after(session, community_id, after, limit)

    deadline = time.monotonic() + wait
    events = await run_in_threadpool(read)
    while not events and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        events = await run_in_threadpool(read)
    return EventPage(
        items=[
            EventPublic(id=e.id, type=e.type, created_at=e.created_at, data=e.data) for e in events
        ],
        next_after=events[-1].id if events else after,
    )
