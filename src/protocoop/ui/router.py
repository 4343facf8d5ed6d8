"""`/ui`: the treasurer's dashboard, server-rendered pages that only read.

Treasurers, auditors and admins sign in with their API key; the pages show the same report,
balances and statements the API answers with (`ui.service`). Nothing here changes the ledger.
Admins choose the community; other keys see only their own, and any other is 404.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from protocoop.auth import service as auth_service
from protocoop.auth.roles import OVERSEERS, Principal, Role
from protocoop.balances import service as balances
from protocoop.clock import utc_now
from protocoop.config import Settings
from protocoop.csv_rows import csv_chunks
from protocoop.db import Database
from protocoop.db.models import ApiKey, Community
from protocoop.errors import NotFound
from protocoop.ledger import queries
from protocoop.links import service as links
from protocoop.mutuality import service as mutuality
from protocoop.schemas import exchange_id_in_path
from protocoop.ui import charts, service
from protocoop.ui.sessions import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Signer,
    UiSession,
    new_csrf_value,
)

PAGE_SIZE = 50
STATEMENT_LINES = 200
UI_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""The pages load one stylesheet of their own and run no script at all."""

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STYLESHEET = (HERE / "static" / "ui.css").read_bytes()

router = APIRouter(prefix="/ui", include_in_schema=False)


class SignInRequired(Exception):
    """No live session: the page answers a redirect to the sign-in form."""


def _signer(request: Request) -> Signer:
    signer: Signer = request.app.state.ui_signer
    return signer


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, template, {"viewer": None, "community": None, **context}, status_code=status
    )
    response.headers["Content-Security-Policy"] = UI_CONTENT_SECURITY_POLICY
    return response


def _principal(session: Session, key_id: str) -> Principal | None:
    row = session.execute(
        select(ApiKey.role, ApiKey.community_id).where(
            ApiKey.id == key_id, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return Principal(key_id=key_id, role=Role(row.role), community_id=row.community_id)


class Viewer:
    """The signed-in key, and the session its sign-out form is signed for."""

    def __init__(self, principal: Principal, ui_session: UiSession, csrf: str) -> None:
        self.principal = principal
        self.session = ui_session
        self.csrf = csrf

    @property
    def is_admin(self) -> bool:
        return self.principal.role is Role.ADMIN


def _viewer(request: Request, session: Session) -> Viewer:
    """The page's viewer, in the page's read transaction; SignInRequired when there is none
    (no cookie, a forged or expired one, or a key revoked since)."""
    signer = _signer(request)
    ui_session = signer.session(request.cookies.get(SESSION_COOKIE))
    if ui_session is None:
        raise SignInRequired
    principal = _principal(session, ui_session.key_id)
    if principal is None or principal.role not in OVERSEERS:
        raise SignInRequired
    return Viewer(principal, ui_session, signer.csrf_token(ui_session.number))


def _community(session: Session, viewer: Viewer, community_id: str) -> service.Unit:
    """The community's unit, when the viewer may see the community (NotFound otherwise)."""
    if not viewer.principal.sees(community_id) or session.get(Community, community_id) is None:
        raise NotFound(f"Community {community_id!r} not found.")
    return service.unit_of(session, community_id)


def _not_found(request: Request, viewer: Viewer | None, message: str) -> HTMLResponse:
    return _page(request, "not_found.html", 404, viewer=viewer, message=message)


def _day(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _midnight(day: date | None) -> datetime | None:
    return datetime.combine(day, time(), tzinfo=UTC) if day else None


def _read_page(request: Request, render: Any) -> Response:
    """Run `render(session, viewer)` in one read transaction: the page's figures are one
    snapshot. A missing session redirects, anything not found is the 404 page."""
    db = _db(request)
    viewer: Viewer | None = None
    try:
        with db.read() as session:
            viewer = _viewer(request, session)
            response: Response = render(session, viewer)
            return response
    except NotFound as error:
        return _not_found(request, viewer, str(error.detail))


@router.get("/static/ui.css")
async def stylesheet() -> Response:
    return Response(
        STYLESHEET, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get("", response_class=HTMLResponse)
def home(request: Request) -> Response:
    """Admins choose a community; other keys go straight to their own."""

    def render(session: Session, viewer: Viewer) -> Response:
        if viewer.principal.community_id is not None:
            return RedirectResponse(f"/ui/communities/{viewer.principal.community_id}", 303)
        return _page(
            request, "communities.html", viewer=viewer, communities=service.community_ids(session)
        )

    return _read_page(request, render)


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request, next: str = "/ui") -> Response:
    return _sign_in_page(request, next)


def _sign_in_page(request: Request, next_page: str, error: str | None = None) -> Response:
    value = new_csrf_value()
    response = _page(
        request,
        "sign_in.html",
        400 if error else 200,
        csrf=_signer(request).csrf_token(value),
        next=_safe_next(next_page),
        error=error,
    )
    response.set_cookie(
        CSRF_COOKIE,
        value,
        max_age=3600,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _safe_next(path: str) -> str:
    """Only a page of the dashboard itself, never another site (`//evil.example`)."""
    if path.startswith("/ui") and not path.startswith("//") and "\\" not in path:
        return path
    return "/ui"


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {name: values[0] for name, values in parse_qs(body).items()}


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await _form(request)
    signer = _signer(request)
    next_page = form.get("next", "/ui")
    if not signer.csrf_valid(form.get("csrf"), request.cookies.get(CSRF_COOKIE)):
        return _sign_in_page(request, next_page, "The form had expired; please sign in again.")
    token = form.get("token", "").strip()
    db = _db(request)

    def look_up() -> Principal | None:
        return db.run_read(lambda session: auth_service.authenticate(session, token))

    principal = await run_in_threadpool(look_up) if token else None
    if principal is None:
        return _sign_in_page(request, next_page, "Unknown or revoked API key.")
    if principal.role not in OVERSEERS:
        return _sign_in_page(
            request,
            next_page,
            f"The {principal.role.value} role may not use the dashboard: sign in with a "
            "treasurer, auditor or admin key.",
        )
    settings: Settings = request.app.state.settings
    response = RedirectResponse(_safe_next(next_page), 303)
    response.set_cookie(
        SESSION_COOKIE,
        signer.new_session(principal.key_id),
        max_age=settings.ui_session_minutes * 60,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(CSRF_COOKIE, path="/ui")
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    form = await _form(request)
    signer = _signer(request)
    ui_session = signer.session(request.cookies.get(SESSION_COOKIE))
    if ui_session is not None and not signer.csrf_valid(form.get("csrf"), ui_session.number):
        return Response("The sign-out form had expired; reload the page.", 400)
    response = RedirectResponse("/ui/sign-in", 303)
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


@router.get("/communities/{community_id}", response_class=HTMLResponse)
def overview(
    request: Request, community_id: str, since: str | None = None, until: str | None = None
) -> Response:
    """Does mutuality hold: the verdict, indicators for a window, charts, warnings, links."""
    since_day, until_day = _day(since), _day(until)
    if since_day and until_day and since_day > until_day:
        since_day, until_day = until_day, since_day

    def render(session: Session, viewer: Viewer) -> Response:
        unit = _community(session, viewer, community_id)
        # The report's summary: the page shows no member rows or pairs, and building them was
        # most of the page's time on a large community.
        report = mutuality.community_mutuality_summary(
            session, community_id, _midnight(since_day), _midnight(until_day)
        )
        months = service.monthly(session, community_id, utc_now())
        histogram = service.balance_histogram(session, community_id)
        labels = [m.label for m in months]
        return _page(
            request,
            "overview.html",
            viewer=viewer,
            community=community_id,
            unit=unit,
            report=report,
            since=since_day,
            until=until_day,
            months=months,
            volume_chart=charts.bars(
                "volume",
                "Volume by month",
                labels,
                [m.volume for m in months],
                [unit.format(m.volume) for m in months],
                charts.short(max(m.volume for m in months) / 10**unit.scale),
            ),
            index_chart=charts.bars(
                "index",
                "Mutuality index by month",
                labels,
                [m.mutuality_index for m in months],
                [_ratio(m.mutuality_index) for m in months],
            ),
            histogram=histogram,
            histogram_chart=charts.bars(
                "histogram",
                "Members by balance against their limits",
                [str(i + 1) for i in range(len(histogram))],
                [count for _, count in histogram],
                [f"{name}: {count}" for name, count in histogram],
            ),
        )

    return _read_page(request, render)


def _ratio(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"


@router.get("/communities/{community_id}/members", response_class=HTMLResponse)
def members(
    request: Request,
    community_id: str,
    q: str = "",
    sort: str = "member",
    order: str = "asc",
    page: int = 1,
    format: str = "html",
) -> Response:
    """Every member: search, sort, pages of 50; `format=csv` downloads every matching row."""
    key: service.SortKey = sort if sort in service.SORT_KEYS else "member"
    descending = order == "desc"

    def render(session: Session, viewer: Viewer) -> Response:
        unit = _community(session, viewer, community_id)
        rows = service.sort_and_search(
            service.member_rows(session, community_id), q[:100], key, descending
        )
        if format == "csv":
            return _members_csv(community_id, rows)
        pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
        current = min(max(1, page), pages)

        def link(**changes: Any) -> str:
            params = {"q": q, "sort": key, "order": order, "page": current, **changes}
            return f"/ui/communities/{community_id}/members?{urlencode(params)}"

        return _page(
            request,
            "members.html",
            viewer=viewer,
            community=community_id,
            unit=unit,
            rows=rows[(current - 1) * PAGE_SIZE : current * PAGE_SIZE],
            total=len(rows),
            q=q,
            sort=key,
            descending=descending,
            page=current,
            pages=pages,
            link=link,
            sort_keys=service.SORT_KEYS,
        )

    return _read_page(request, render)


def _members_csv(community_id: str, rows: list[service.MemberRow]) -> Response:
    header = [
        "member",
        "name",
        "status",
        "balance",
        "lower_limit",
        "upper_limit",
        "given",
        "received",
        "exchanges",
        "reciprocity",
        "standing",
        "last_exchange_at",
    ]
    lines = (
        [
            r.member,
            r.name,
            r.status,
            r.balance,
            r.lower_limit,
            r.upper_limit,
            r.given,
            r.received,
            r.exchanges,
            None if r.reciprocity is None else f"{r.reciprocity:.4f}",
            r.standing,
            r.last_exchange_at.isoformat() if r.last_exchange_at else None,
        ]
        for r in rows
    )
    return StreamingResponse(
        csv_chunks(header, lines),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{community_id}-members.csv"'},
    )


@router.get("/communities/{community_id}/members/{member_id}", response_class=HTMLResponse)
def member(request: Request, community_id: str, member_id: str) -> Response:
    """One member: balance over time, the statement with running balance, partners."""

    def render(session: Session, viewer: Viewer) -> Response:
        unit = _community(session, viewer, community_id)
        # An unknown member is NotFound here: the 404 page, with no existence check of its own.
        figures = mutuality.member_mutuality_document(session, community_id, member_id, None, None)
        # The balance now, and the head it is read at (one statement): the closing balance, and
        # where the statement ends.
        balance = balances.member_balance(session, community_id, member_id)
        closing = balance.balance
        # Newest first, as the statement shows them; the chart runs oldest first.
        lines = balances.latest_statement_lines(
            session, community_id, member_id, balance.as_of_seq, STATEMENT_LINES
        )
        # The balance just before the oldest line shown: that line's balance less its change.
        opening = lines[-1].balance_after - lines[-1].amount if lines else 0
        points = [(line.seq, line.balance_after) for line in reversed(lines)]
        return _page(
            request,
            "member.html",
            viewer=viewer,
            community=community_id,
            unit=unit,
            member=member_id,
            lines=lines,
            statement_limit=STATEMENT_LINES,
            opening=opening,
            closing=closing,
            balance=balance,
            figures=figures,
            chart=charts.line(
                "balance",
                f"Balance of {member_id} over time",
                points,
                f"From {unit.format(opening)} to {unit.format(closing)} over "
                f"{len(points)} exchanges.",
            ),
        )

    return _read_page(request, render)


@router.get("/communities/{community_id}/exchanges", response_class=HTMLResponse)
def exchanges(
    request: Request,
    community_id: str,
    member: str = "",
    since: str | None = None,
    until: str | None = None,
    before: Annotated[int | None, Query(ge=1, lt=2**63)] = None,
) -> Response:
    """The latest exchanges, newest first, by member and dates (`until` is inclusive)."""
    since_day, until_day = _day(since), _day(until)

    def render(session: Session, viewer: Viewer) -> Response:
        unit = _community(session, viewer, community_id)
        found = queries.latest_exchanges(
            session,
            community_id,
            member=member.strip() or None,
            since=_midnight(since_day),
            until=_midnight(until_day + timedelta(days=1)) if until_day else None,
            before_seq=before,
            limit=PAGE_SIZE + 1,
        )
        shown = found[:PAGE_SIZE]
        older = None
        if len(found) > PAGE_SIZE and shown[-1].seq is not None:
            params = {
                "member": member,
                "since": since or "",
                "until": until or "",
                "before": shown[-1].seq,
            }
            older = f"/ui/communities/{community_id}/exchanges?{urlencode(params)}"
        return _page(
            request,
            "exchanges.html",
            viewer=viewer,
            community=community_id,
            unit=unit,
            exchanges=shown,
            member=member,
            since=since_day,
            until=until_day,
            older=older,
        )

    return _read_page(request, render)


@router.get("/communities/{community_id}/exchanges/{exchange_id}", response_class=HTMLResponse)
def exchange(request: Request, community_id: str, exchange_id: str) -> Response:
    """One exchange: entries, levy, hashes, and the intertrade's other side."""

    def render(session: Session, viewer: Viewer) -> Response:
        unit = _community(session, viewer, community_id)
        found = queries.get_exchange(session, community_id, exchange_id_in_path(exchange_id))
        intertrade = (
            links.get_intertrade(session, community_id, found.intertrade_id)
            if found.intertrade_id
            else None
        )
        return _page(
            request,
            "exchange.html",
            viewer=viewer,
            community=community_id,
            unit=unit,
            exchange=found,
            intertrade=intertrade,
        )

    return _read_page(request, render)


async def _to_sign_in(request: Request, _: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/sign-in?{urlencode({'next': target})}", 303)


def install(app: FastAPI, settings: Settings, secret: str) -> None:
    """Serve the dashboard under `/ui`, signing its cookies with `secret`."""
    app.state.ui_signer = Signer(secret, settings.ui_session_minutes)
    app.add_exception_handler(SignInRequired, _to_sign_in)
    app.include_router(router)
