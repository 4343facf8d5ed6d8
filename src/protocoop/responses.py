"""Rendered responses: the exact status, content type and bytes sent, so that an idempotent
replay can send the same again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
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
    problem_code: str | None = None
    """The refusal's problem `code`, when this is a problem document rendered here (so metrics
    count outcomes without reading the body back)."""


def render(status_code: int, document: BaseModel | dict[str, Any] | list[Any]) -> Rendered:
    """A JSON response; pydantic models are written in their JSON mode (RFC 3339 times...)."""
    if isinstance(document, BaseModel):
        body = document.model_dump_json().encode()
    else:
        body = orjson.dumps(document)
    return Rendered(status_code, JSON_CONTENT_TYPE, body)


def render_problem(error: ProblemError) -> Rendered:
    """The RFC 9457 problem document for `error`."""
    return Rendered(
        error.status,
        PROBLEM_CONTENT_TYPE,
        orjson.dumps(error.body()),
        error.headers(),
        problem_code=error.code,
    )
