"""What every router shares: path and query parameters, the Idempotency-Key dependency, the
problem documents an operation declares, and a rendered response sent as an HTTP response.

This is the HTTP layer's own module: the services below it know nothing of FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from protocoop.auth.deps import PrincipalDep
from protocoop.errors import PROBLEM_CONTENT_TYPE, ValidationFailed
from protocoop.idempotency import HEADER, IdempotencyKey, execute, fingerprint
from protocoop.pagination import MAX_LIMIT
from protocoop.responses import Rendered
from protocoop.schemas import ACCOUNT_ID_PATTERN

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1..1000).")]
CursorQuery = Annotated[
    str | None, Query(max_length=2048, description="`next_cursor` of the previous page.")
]

MemberPath = Annotated[
    str,
    Path(pattern=ACCOUNT_ID_PATTERN, description="A member id, or a system account (@commons)."),
]
ExchangePath = Annotated[
    str, Path(description="An exchange id (a UUID; its letters may be in either case).")
]
"""Any text: `exchange_id_in_path` reads it (an id that cannot exist is not found, not invalid)."""
KeyPath = Annotated[str, Path(pattern=r"^key_[0-9a-f]{16}$", description="An API key id.")]


def as_response(rendered: Rendered, **extra_headers: str) -> Response:
    """`rendered` as the HTTP response that sends exactly its status, type and bytes."""
    return Response(
        content=rendered.body,
        status_code=rendered.status_code,
        media_type=rendered.content_type,
        headers={**rendered.headers, **extra_headers},
    )


async def idempotency_key(
    request: Request,
    principal: PrincipalDep,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Any unique string (e.g. a UUID) to make retries of this POST safe: "
            "1 to 255 printable ASCII characters (HTTP drops leading and trailing spaces).",
            # Documented here, checked below (with a clearer message than a pattern mismatch).
            json_schema_extra={"maxLength": 255, "pattern": "^[!-~]([ -~]*[!-~])?$"},
        ),
    ] = None,
) -> IdempotencyKey | None:
    """The request's idempotency key, if it sent one."""
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise ValidationFailed(
            [{"loc": ["header", HEADER], "msg": "must be 1 to 255 printable ASCII characters"}]
        )
    body = await request.body()
    return IdempotencyKey(
        api_key_id=principal.key_id,
        key=key,
        fingerprint=fingerprint(request.method, request.url.path, request.url.query, body),
    )


IdempotencyDep = Annotated[IdempotencyKey | None, Depends(idempotency_key)]


def respond(
    request: Request,
    scope: str,
    key: IdempotencyKey | None,
    work: Callable[[Session], Rendered],
) -> Response:
    """`idempotency.execute` with this process's database and in-flight registry."""
    rendered = execute(request.app.state.db, request.app.state.in_flight, scope, key, work)
    return as_response(rendered)


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
