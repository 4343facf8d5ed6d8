"""API key request and response documents."""

from __future__ import annotations

from pydantic import Field

from protocoop.auth.roles import Role
from protocoop.schemas import CommunityId, RequestModel, ResponseModel, Timestamp


class ApiKeyCreate(RequestModel):
    role: Role
    community: CommunityId | None = Field(
        default=None, description="Required for every role but admin; admin keys have none."
    )
    label: str | None = Field(default=None, max_length=200)


class ApiKeyPublic(ResponseModel):
    id: str
    role: Role
    community: str | None
    label: str | None
    prefix: str = Field(description="The token's first characters, to recognise it.")
    created_at: Timestamp
    revoked_at: Timestamp | None = None


class ApiKeyCreated(ApiKeyPublic):
    token: str = Field(description="The bearer token. Shown in this answer only; store it now.")
