"""Audit log documents."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from protocoop.schemas import ResponseModel, Timestamp


class AuditLogEntryPublic(ResponseModel):
    id: int = Field(description="1, 2, 3... per community (or for the instance), in commit order.")
    at: Timestamp = Field(description="When the change was made.")
    actor_key_id: str | None = Field(
        description="The API key that made the change; null when made from the command line."
    )
    action: str = Field(
        examples=["member.updated"],
        description="community.created|updated, member.created|updated, "
        "api_key.created|revoked, exchange.reversed, link.created|updated|deleted, "
        "intertrade.reversed.",
    )
    target: str = Field(
        description="Id of what was changed: community, member, API key or reversed exchange."
    )
    before: dict[str, Any] | None = Field(
        description="The changed fields as they were (null for a creation)."
    )
    after: dict[str, Any] | None = Field(
        description="The changed fields as they became (for a creation, the whole resource)."
    )
