"""The OpenAPI document says every problem an operation can answer with.

Which problems a route can answer with follows from what it depends on: a route that
authenticates can answer 401 (and 429 when keys are rate limited), one that reads the database
503, one guarded by roles 403, one with path parameters 404, one with parameters or a body 422,
one that takes a body 413, one that takes an `Idempotency-Key` 409 (`request_in_progress`). Those
are added here to what each route declares itself (e.g. `409` for a refused exchange), so a route
added later is documented without anyone having to remember. Every problem is documented as what
is sent: `application/problem+json` with the `ProblemDocument` schema (FastAPI on its own would
document it as `application/json`, and its own validation error shape for 422).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.routing import BaseRoute

from protocoop.auth.deps import authenticate, get_database
from protocoop.auth.roles import Role
from protocoop.errors import PROBLEM_CONTENT_TYPE
from protocoop.routing import ProblemDocument, idempotency_key

PROBLEM_SCHEMA = "ProblemDocument"
_PROBLEM_REF = f"#/components/schemas/{PROBLEM_SCHEMA}"

_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing, unknown or revoked API key (`unauthorized`)",
    403: "The key's role may not do this (`forbidden`)",
    404: "Not found, or not visible to this key (`not_found`)",
    405: "The route exists, the method does not (`method_not_allowed`)",
    409: "Refused in the current state (see `code`)",
    413: "Request body over the size limit (`payload_too_large`)",
    415: "The request body must be JSON (`unsupported_media_type`)",
    422: "Invalid request (`validation_error`, `same_member`, `idempotency_key_reused`)",
    429: "Too many requests for this API key (`rate_limited`); retry after `Retry-After` seconds",
    503: "Database unavailable; safe to retry with the same Idempotency-Key (`unavailable`)",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": '`Bearer realm="protocoop"`',
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependency_calls(sub)


def _has_parameters(dependant: Dependant) -> bool:
    if dependant.path_params or dependant.query_params or dependant.header_params:
        return True
    if dependant.cookie_params or dependant.body_params:
        return True
    return any(_has_parameters(sub) for sub in dependant.dependencies)


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[RouteContext]:
    """Every API route of `routes` (those of included routers too), as the app serves it."""
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def route_problems(route: RouteContext) -> set[int]:
    """The problem statuses `route` can answer with because of what it depends on."""
    calls = set(_dependency_calls(route.dependant))
    statuses: set[int] = set()
    if authenticate in calls:
        statuses |= {401, 429, 503}
    if get_database in calls:
        statuses.add(503)
    if any(getattr(call, "allowed_roles", frozenset(Role)) != frozenset(Role) for call in calls):
        statuses.add(403)
    if "{" in (route.path_format or ""):
        statuses.add(404)
    if _has_parameters(route.dependant):
        statuses.add(422)
    if route.body_field is not None or (route.methods or set()) & _BODY_METHODS:
        statuses.add(413)
    if idempotency_key in calls:
        statuses |= {409, 422}
    return statuses


def _problem_response(status: int, declared: dict[str, Any] | None) -> dict[str, Any]:
    description = (declared or {}).get("description")
    if description in (None, "", "Validation Error"):  # absent, or FastAPI's own 422
        description = _DESCRIPTIONS.get(status, "Error")
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _PROBLEM_REF}}},
    }
    headers = {**(declared or {}).get("headers", {}), **_HEADERS.get(status, {})}
    if headers:
        response["headers"] = headers
    return response


def document_problems(document: dict[str, Any], routes: Sequence[BaseRoute]) -> None:
    """Give every operation of `document` the problem responses its route can answer with."""
    for route in api_routes(routes):
        if not route.include_in_schema:
            continue
        problems = route_problems(route)
        for method in route.methods or ():
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            declared = {int(status) for status in responses if status.isdigit()}
            for status in problems | {status for status in declared if status >= 400}:
                responses[str(status)] = _problem_response(status, responses.get(str(status)))
            operation["responses"] = dict(sorted(responses.items()))
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas[PROBLEM_SCHEMA] = ProblemDocument.model_json_schema()
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, replaced above
        if f"'#/components/schemas/{unused}'" not in repr(document):
            schemas.pop(unused, None)


def install(app: FastAPI) -> None:
    """Make `app.openapi()` document every problem each operation can answer with."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_problems(generate(), app.routes)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
