"""Helpers for the exchange-workflow tests: proposals and their settlement, levies, the event
feed, and making a proposal's time run out.

Time: `expires_in` is at least 60 s, so the tests do not wait for a proposal to expire. They move
the proposal back in time instead — `make_overdue` rewrites its `created_at` and `expires_at` in
`pending_exchanges` (a mutable table, not part of the append-only ledger) so that it expired a
minute ago, exactly as if it had been proposed long enough ago — and let the service discover
it the way it would in production (on a read, a write, or the sweep).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, select, update

from protocoop.clock import utc_now
from protocoop.db import Database
from protocoop.db.models import PendingExchange
from tests.support.api import Api
from tests.support.ledger import EXCHANGES, C, all_exchanges, balance, exchange

EVENTS = f"{C}/events"
SEVEN_DAYS = 7 * 24 * 3600

_pending = cast(Table, PendingExchange.__table__)


def propose(api: Api, provider: str, receiver: str, amount: int, **fields: Any) -> Any:
    """`POST .../exchanges` with `pending: true`; returns the HTTP response."""
    headers = fields.pop("headers", None)
    body = exchange(provider, receiver, amount, pending=True, **fields)
    return api.post(EXCHANGES, json=body, headers=headers)


def proposed(api: Api, provider: str, receiver: str, amount: int, **fields: Any) -> dict[str, Any]:
    """A proposal that must be accepted for consideration (201); returns its document."""
    response = propose(api, provider, receiver, amount, **fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


def settle(api: Api, exchange_id: str, action: str, **kwargs: Any) -> Any:
    """`POST .../exchanges/{id}/accept|reject|cancel`."""
    return api.post(f"{EXCHANGES}/{exchange_id}/{action}", **kwargs)


def settled(api: Api, exchange_id: str, action: str) -> dict[str, Any]:
    response = settle(api, exchange_id, action)
    assert response.status_code == 200, response.text
    return dict(response.json())


def get_exchange(api: Api, exchange_id: str) -> dict[str, Any]:
    response = api.get(f"{EXCHANGES}/{exchange_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def proposals(api: Api, status: str = "pending", **params: Any) -> list[dict[str, Any]]:
    """Every proposal with `status` (following the cursor)."""
    return all_exchanges(api, status=status, **params)


def reserved(api: Api, member: str) -> tuple[int, int]:
    """(reserved_debit, reserved_credit) of a member, as its balance shows them."""
    shown = balance(api, member)
    return shown["reserved_debit"], shown["reserved_credit"]


def make_overdue(db: Database, exchange_id: str, community: str = "riverside") -> None:
    """Move a pending proposal back in time so that its reservation lapsed a minute ago (its
    lifetime, `expires_at - created_at`, is kept)."""

    def rewrite(session: Any) -> None:
        row = session.execute(
            select(_pending.c.created_at, _pending.c.expires_at).where(
                _pending.c.community_id == community, _pending.c.id == exchange_id
            )
        ).one()
        shift = row.expires_at - utc_now() + timedelta(minutes=1)
        session.execute(
            update(_pending)
            .where(_pending.c.community_id == community, _pending.c.id == exchange_id)
            .values(created_at=row.created_at - shift, expires_at=row.expires_at - shift)
        )

    db.run_write(rewrite)


def stored_status(db: Database, exchange_id: str, community: str = "riverside") -> str:
    """The proposal's status as stored, without any read path that could expire it first."""
    with db.read() as session:
        return str(
            session.execute(
                select(_pending.c.status).where(
                    _pending.c.community_id == community, _pending.c.id == exchange_id
                )
            ).scalar_one()
        )


def set_levy(api: Api, levy: dict[str, Any] | None, community: str = "riverside") -> Any:
    """PATCH the community's levy policy; returns the HTTP response."""
    return api.patch(f"/v1/communities/{community}", json={"policy": {"levy": levy}})


def read_events(api: Api, after: int = 0, **params: Any) -> dict[str, Any]:
    response = api.get(EVENTS, params={"after": after, **params})
    assert response.status_code == 200, response.text
    return dict(response.json())


def all_events(api: Api, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """Every event after `after`, following `next_after` until a page comes back empty."""
    items: list[dict[str, Any]] = []
    while True:
        page = read_events(api, after, limit=limit)
        if not page["items"]:
            assert page["next_after"] == after
            return items
        items.extend(page["items"])
        after = page["next_after"]


def expected_reservations(pending: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """What the still-pending proposals reserve, per account: (reserved_debit, reserved_credit),
    levy included (paid by the provider: it gets amount - levy; by the receiver: it pays
    amount + levy; @commons gets the levy)."""
    held: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for proposal in pending:
        levy = proposal["levy"]
        levy_amount = levy["amount"] if levy else 0
        debit = proposal["amount"] + (levy_amount if levy and levy["paid_by"] == "receiver" else 0)
        credit = proposal["amount"] - (levy_amount if levy and levy["paid_by"] == "provider" else 0)
        held[proposal["receiver"]][0] += debit
        if credit:
            held[proposal["provider"]][1] += credit
        if levy_amount:
            held["@commons"][1] += levy_amount
    return {account: (d, c) for account, (d, c) in held.items()}
