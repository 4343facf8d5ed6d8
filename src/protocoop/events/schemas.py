"""Event feed documents."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from protocoop.schemas import ResponseModel, Timestamp


class EventPublic(ResponseModel):
    id: int = Field(description="1, 2, 3... per community, in commit order.")
    type: str = Field(description="e.g. exchange.completed, exchange.pending, member.updated.")
    created_at: Timestamp
    data: dict[str, Any] = Field(description="The resource as it was right after the change.")


class EventPage(ResponseModel):
    items: list[EventPublic]
    next_after: int = Field(
        description="Pass as `after` next time: the last id seen (unchanged when none came)."
    )
