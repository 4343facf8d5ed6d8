"""HTTP plumbing: the RFC 9457 rendering of every error, and the middleware every request passes."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocoop.db.errors import DatabaseUnavailable
from protocoop.errors import (
    PROBLEM_CONTENT_TYPE,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from protocoop.observability import DB_CONNECTIONS_IN_USE, REQUEST_SECONDS, request_id_var
from protocoop.problems import problem_for
from protocoop.responses import render_problem
from protocoop.routing import as_response
from protocoop.security import SECURITY_HEADERS

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _problem(error: ProblemError) -> Response:
    return as_response(render_problem(error))


async def _on_problem(_: Request, error: Exception) -> Response:
    assert isinstance(error, ProblemError)
    return _problem(error)


async def _on_validation(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    content_type = request.headers.get("content-type", "")
    # Only a complaint about the body can come from its not being JSON; a bad path or query
    # parameter of a body-less POST (a settle) is reported as itself.
    about_body = any(tuple(item.get("loc", ()))[:1] == ("body",) for item in error.errors())
    if (
        about_body
        and request.method in ("POST", "PATCH", "PUT")
        and "json" not in content_type.lower()
    ):
        return _problem(
            ValidationFailed(
                [
                    {
                        "loc": ["header", "Content-Type"],
                        "msg": "the body must be JSON, sent with `Content-Type: application/json`",
                        "type": "content_type",
                    }
                ]
            )
        )
    errors = [
        {
            "loc": list(item.get("loc", ())),
            "msg": item.get("msg", "invalid"),
            "type": item.get("type"),
        }
        for item in error.errors()
    ]
    return _problem(ValidationFailed(errors))


_HTTP_STATUS_PROBLEMS: dict[int, type[ProblemError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def _allowed_methods(request: Request) -> str:
    """Every method the request's path is served with. Starlette's own 405 names only those of
    the first route with that path, and a path can have one route per method."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        path_regex = getattr(route, "path_regex", None)
        if path_regex is not None and path_regex.match(request.scope["path"]):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _on_http_exception(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    problem_class = _HTTP_STATUS_PROBLEMS.get(error.status_code)
    if problem_class is not None:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = _allowed_methods(request)  # RFC 9110 requires it
        return as_response(render_problem(problem_class()), **headers)
    if error.status_code == 400:  # an unreadable body: the client's mistake, said the same way
        return _problem(ValidationFailed([{"loc": ["body"], "msg": str(error.detail)}]))
    if error.status_code >= 500:
        return _problem(Unavailable())
    body = {**ProblemError(str(error.detail)).body(), "status": error.status_code}
    return Response(orjson.dumps(body), error.status_code, media_type=PROBLEM_CONTENT_TYPE)


async def _on_database_error(_: Request, error: Exception) -> Response:
    """A database failure that reached the edge: `503`, never a `500`."""
    return _problem(problem_for(error))


async def _on_unexpected(_: Request, error: Exception) -> Response:
    log.exception("unexpected error", exc_info=error)
    # Starlette sends this answer from outside every middleware: add the security headers here.
    problem = render_problem(InternalError("An unexpected error occurred; it has been logged."))
    return as_response(problem, **SECURITY_HEADERS)


def install_error_handlers(app: FastAPI) -> None:
    """Every error, whatever raised it, leaves as `application/problem+json` with a `code`."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(DBAPIError, _on_database_error)
    app.add_exception_handler(DatabaseUnavailable, _on_database_error)
    app.add_exception_handler(Exception, _on_unexpected)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, and bodies that take more than
    `timeout_s` to arrive with 408, before the application reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send, self._too_large())
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read_body(receive)
        except TimeoutError:
            late = RequestTimeout(f"A request body must arrive within {self.timeout_s:g} seconds.")
            await self._refuse(scope, receive, send, late)
            return
        if body is None:
            await self._refuse(scope, receive, send, self._too_large())
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body (None: more than `max_bytes`)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request bodies are limited to {self.max_bytes} bytes.")

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, problem: ProblemError
    ) -> None:
        """Answer `problem` and close the connection (the rest of the body is not read)."""
        await as_response(render_problem(problem), Connection="close")(scope, receive, send)


class RequestIdMiddleware:
    """Give every request an id (or keep a sane one the client sent) and return it in
    `X-Request-Id`, so a client's report can be matched with the server's logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER.lower().encode())
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_var.set(request_id)
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


access_log = logging.getLogger("protocoop.access")


class MetricsMiddleware:
    """Time every request by route template and status; optionally log it (access log)."""

    def __init__(self, app: ASGIApp, *, log_requests: bool = False) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUEST_SECONDS.labels(route, scope["method"], str(status)).observe(elapsed)
            db = getattr(getattr(scope.get("app"), "state", None), "db", None)
            if db is not None:
                DB_CONNECTIONS_IN_USE.set(db.engine.pool.checkedout())
            if self.log_requests:
                access_log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
