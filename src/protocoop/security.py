"""Security headers on every response, and CORS only where it was asked for.

Every response — errors included — says: do not sniff its type, send no referrer, never frame
it, never store it (`Cache-Control: no-store`: balances and statements must not linger in
caches), and a Content-Security-Policy that allows nothing at all (an API answers JSON and CSV;
nothing in it should ever run in a browser). The interactive docs (`/docs`, `/redoc`) are HTML
pages that load Swagger UI and ReDoc from a CDN: they get a policy that allows exactly those
assets, and their inline script only by its SHA-256.

Cross-origin requests from browsers are refused (no CORS headers) unless `PROTOCOOP_CORS_ORIGINS`
names the origins allowed.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocoop.config import Settings
from protocoop.errors import CorsRefused
from protocoop.responses import render_problem
from protocoop.routing import as_response

API_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Content-Security-Policy": API_CONTENT_SECURITY_POLICY,
}
"""What every response carries (a response that set one of them itself keeps its own)."""

DOCS_CDN = "https://cdn.jsdelivr.net"
"""Where FastAPI's Swagger UI and ReDoc pages load their scripts and styles from."""


def docs_content_security_policy(inline_script_hashes: list[str]) -> str:
    """The policy of a docs page: its CDN's scripts and styles, its own inline scripts (by hash),
    fonts, the favicon, and requests to this server only (for `/openapi.json` and "Try it out")."""
    scripts = " ".join([DOCS_CDN, *(f"'sha256-{digest}'" for digest in inline_script_hashes)])
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {scripts}",
            # Swagger UI and ReDoc set styles inline; styles cannot run code.
            f"style-src {DOCS_CDN} https://fonts.googleapis.com 'unsafe-inline'",
            "font-src https://fonts.gstatic.com",
            "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly",
            "connect-src 'self'",
            "worker-src blob:",  # ReDoc's search runs in a worker made from a blob
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def inline_script_hashes(html: bytes) -> list[str]:
    """Base64 SHA-256 of each inline `<script>` of a page, as CSP `'sha256-...'` sources want."""
    return [
        base64.b64encode(hashlib.sha256(script).digest()).decode()
        for script in _INLINE_SCRIPT.findall(html)
    ]


class SecurityHeadersMiddleware:
    """Add `SECURITY_HEADERS` to every response; docs pages get their own CSP."""

    def __init__(self, app: ASGIApp, *, docs_paths: frozenset[str]) -> None:
        self.app = app
        self.docs_paths = docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path in self.docs_paths:
            await self._docs_page(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(message.get("headers", []))
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hold a docs page (a few KiB of HTML) until it is complete, to hash its scripts."""
        start: Message | None = None
        body: list[bytes] = []

        async def hold(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = b"".join(body)
            policy = docs_content_security_policy(inline_script_hashes(page))
            start["headers"] = with_security_headers(
                start.get("headers", []), {"Content-Security-Policy": policy}
            )
            await send(start)
            await send({"type": "http.response.body", "body": page, "more_body": False})

        await self.app(scope, receive, hold)


def with_security_headers(
    headers: list[tuple[bytes, bytes]], overrides: dict[str, str] | None = None
) -> list[tuple[bytes, bytes]]:
    """`headers` plus the security headers it does not set itself."""
    present = {name.lower() for name, _ in headers}
    added = [
        (name.lower().encode(), value.encode())
        for name, value in {**SECURITY_HEADERS, **(overrides or {})}.items()
        if name.lower().encode() not in present
    ]
    return [*headers, *added]


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, except that a refused preflight is a problem document (`400
    cors_refused`) like every other error, not a line of plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = CorsRefused(f"{bytes(response.body).decode()} for this server.")
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        return as_response(render_problem(refused), **kept)


def install(app: FastAPI, settings: Settings) -> None:
    """Add CORS (when origins are configured) and the security headers as the outermost
    middleware, so that preflight answers and every error carry the headers too. (The one
    response produced outside all middleware, the 500 for a bug, adds them itself.)"""
    origins = settings.cors_origin_list
    if origins:
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"],
            expose_headers=[
                "X-Request-Id",
                "Retry-After",
                "Idempotent-Replayed",
                "X-As-Of-Seq",
                "WWW-Authenticate",
            ],
            allow_credentials=False,  # bearer tokens, never cookies
            max_age=600,
        )
    docs_paths = {
        path for path in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if path
    }
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=frozenset(docs_paths))
