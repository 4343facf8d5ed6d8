"""The application factory: routers, error handlers and middleware — nothing else."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from protocoop import __version__, openapi, security
from protocoop.audit_log.router import router as audit_log_router
from protocoop.auth.cache import PrincipalCache, install_key_check
from protocoop.auth.ratelimit import RateLimiter
from protocoop.balances.router import router as balances_router
from protocoop.communities.router import router as communities_router
from protocoop.config import Settings, get_settings
from protocoop.db import Database, migrate
from protocoop.events.router import router as events_router
from protocoop.http import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
    install_error_handlers,
)
from protocoop.idempotency import InFlight, forget_older_than
from protocoop.keys.router import router as api_keys_router
from protocoop.ledger.expiry import sweep
from protocoop.ledger.router import router as exchanges_router
from protocoop.ledger.writer import GroupCommitWriter
from protocoop.links.router import intertrades as intertrades_router
from protocoop.links.router import links as links_router
from protocoop.members.router import router as members_router
from protocoop.mutuality.router import router as mutuality_router
from protocoop.observability import GROUP_COMMIT_SIZE, configure_logging
from protocoop.ops import router as ops_router
from protocoop.replay import ReplayLostReads
from protocoop.ui import router as ui

log = logging.getLogger(__name__)

DESCRIPTION = """
A mutual-credit exchange ledger for cooperatives, timebanks and associations.

Every exchange is recorded as balanced, append-only, hash-chained entries; every community's
balances sum to zero; credit limits are enforced by the database. Authenticate with
`Authorization: Bearer <token>`. Errors are RFC 9457 problem documents with a stable `code`.
"""


async def _housekeeping(db: Database, settings: Settings) -> None:
    """Periodically release expired pending exchanges and forget old idempotency keys."""
    if not settings.expiry_sweep_s:
        return
    while True:
        await asyncio.sleep(settings.expiry_sweep_s)
        try:
            await run_in_threadpool(sweep, db)
            await run_in_threadpool(
                db.run_write,
                lambda session: forget_older_than(session, settings.idempotency_retention_hours),
            )
        except Exception:  # the next round tries again; the error is logged, not fatal
            log.exception("housekeeping failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """A protocoop ASGI application for `settings` (by default, from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            migrate.upgrade(settings.database_url)
        db = Database(settings)
        app.state.db = db
        app.state.writer = GroupCommitWriter(
            db,
            max_group=settings.group_commit_max,
            # SQLite has one writer at a time anyway; PostgreSQL can record several communities
            # at once.
            lanes=1 if db.is_sqlite else settings.writer_lanes,
            on_group=GROUP_COMMIT_SIZE.observe,
        )
        housekeeping = asyncio.create_task(_housekeeping(db, settings))
        try:
            yield
        finally:
            housekeeping.cancel()
            app.state.writer.close()
            db.dispose()

    app = FastAPI(
        title="protocoop",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # No badge that sends the spec's address to swagger.io (the docs' CSP would block it).
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.settings = settings
    app.state.in_flight = InFlight()
    app.state.known_communities = set()
    app.state.principals = PrincipalCache(settings.auth_cache_s)
    install_key_check()  # a cached key is checked again by each request's first transaction
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.head_revisions = migrate.head_revisions()

    install_error_handlers(app)
    # innermost: a GET that lost its database connection is answered again, seen from outside once
    app.add_middleware(ReplayLostReads, attempts=settings.db_retry_attempts)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(MetricsMiddleware, log_requests=settings.access_log)
    app.add_middleware(RequestIdMiddleware)
    security.install(app, settings)  # outermost: CORS and security headers on every answer

    for router in (
        ops_router,
        communities_router,
        members_router,
        exchanges_router,
        balances_router,
        mutuality_router,
        events_router,
        api_keys_router,
        audit_log_router,
        links_router,
        intertrades_router,
    ):
        app.include_router(router)
    # The dashboard's secret: from settings, or (a single process, such as the tests) made here.
    secret = settings.ui_secret.get_secret_value() if settings.ui_secret else None
    ui.install(app, settings, secret or secrets.token_urlsafe(32))
    openapi.install(app)  # after the routers: documents every problem each route can answer
    return app
