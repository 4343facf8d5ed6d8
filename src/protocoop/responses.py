"""Rendered responses: the exact status, content type and bytes sent, so that an idempotent
replay can send the same again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Response
from pydantic import BaseModel

from protocoop.errors import PROBLEM_CONTENT_TYPE, ProblemError

JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A response as bytes."""

    status_code: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    remembered_body: bytes | None = None
    """What an idempotent replay should send instead of `body`, when the first answer held a
    secret that must not be stored (a new API key's token)."""

    def to_response(self, **extra_headers: str) -> Response:
        return Response(
            content=self.body,
            status_code=self.status_code,
            media_type=self.content_type,
            headers={**self.headers, **extra_headers},
        )


def render(status_code: int, document: BaseModel | dict[str, Any] | list[Any]) -> Rendered:
    """A JSON response; pydantic models are written in their JSON mode (RFC 3339 times...)."""
    if isinstance(document, BaseModel):
        body = document.model_dump_json().encode()
    else:
        body = orjson.dumps(document)
    return Rendered(status_code, JSON_CONTENT_TYPE, body)


def render_problem(error: ProblemError) -> Rendered:
    """The RFC 9457 problem document for `error`."""
    return Rendered(error.status, PROBLEM_CONTENT_TYPE, orjson.dumps(error.body()), error.headers())


class ProblemDocument(BaseModel):
    """An RFC 9457 problem: `code` is the stable machine-readable reason."""

    type: str
    title: str
    status: int
    detail: str
    code: str


_PROBLEM_STATUS_TEXT = {
    400: "Bad request",
    401: "Missing, unknown or revoked API key (`unauthorized`)",
    403: "The key's role may not do this (`forbidden`)",
    404: "Not found, or not visible to this key (`not_found`)",
    409: "Refused in the current state (see `code`)",
    413: "Request body over the size limit (`payload_too_large`)",
    422: "Invalid request (`validation_error`, `same_member`, `idempotency_key_reused`)",
    429: "Too many requests for this API key (`rate_limited`); retry after `Retry-After` seconds",
    503: "Database unavailable; safe to retry with the same Idempotency-Key (`unavailable`)",
}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problem documents a route may answer with. A route
    that authenticates (401) may also be rate limited (429)."""
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    documented: dict[int | str, dict[str, Any]] = {}
    for status in sorted(statuses):
        documented[status] = {
            "description": _PROBLEM_STATUS_TEXT[status],
            "model": ProblemDocument,
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
        if status in (429, 503):
            documented[status]["headers"] = _RETRY_AFTER
    return documented
