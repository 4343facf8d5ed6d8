"""Posting exchanges: the one transaction function by which balances and reservations change.

Every change to a community's ledger — posts, batches, proposals, reversals, settlements,
expiries — runs `record` inside one write transaction: the store (`ledger.store`) locks the
ledger head and then everything the group touches and reads it in a few batched statements, the
planner (`ledger.planner`) decides each request's outcome and the group's writes in memory, and
the store writes them. The caller commits once. A refusal of one request leaves the others
untouched, which is what group commit needs. Requests from clients reach it through the
group-commit writer (`ledger.writer.record_group`), which also checks and remembers their
`Idempotency-Key`s in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from protocoop.audit_log.service import record_reversal
from protocoop.auth.roles import Principal
from protocoop.clock import utc_now
from protocoop.ledger.planner import Expire, Outcome, Request, plan
from protocoop.ledger.records import PostedExchange
from protocoop.ledger.store import LedgerStore


def record(
    session: Session,
    community_id: str,
    requests: Sequence[Request],
    *,
    store: LedgerStore | None = None,
    remembered: Any = None,
) -> list[Outcome]:
    """Load and lock what `requests` touch, plan them, write the plan; one outcome each.
    `remembered(outcomes)`, when given, returns idempotency records written with the plan."""
    from protocoop.ledger.queries import document

    store = store or LedgerStore(session, community_id)
    now = utc_now()
    state = store.load(requests, now)
    planned = plan(state, requests, now=now, clock=lambda: utc_now())
    writes = planned.writes
    event_data = [
        document(event.exchange) if event.exchange is not None else (event.data or {})
        for event in writes.events
    ]
    store.flush(
        writes,
        event_data,
        remembered(planned.outcomes) if remembered is not None else (),
        now=now,
    )
    return planned.outcomes


def _result(outcome: Outcome) -> Any:
    if outcome.refusal is not None:
        raise outcome.refusal
    return outcome.result


def expire_due(session: Session, community_id: str, account_id: str | None = None) -> int:
    """Release every pending exchange of the community (or of one account) whose time is up."""
    accounts = frozenset([account_id]) if account_id is not None else None
    [outcome] = record(session, community_id, [Expire(accounts)])
    expired: int = _result(outcome)
    return expired


def logs_reversal(
    community_id: str, by: Principal, exchange_id: str, reason: str
) -> Callable[[Session, list[PostedExchange]], None]:
    """What a reversal also writes in its transaction: the audit-log entry saying who reversed
    `exchange_id`, why, and by which exchange."""

    def log(session: Session, posted: list[PostedExchange]) -> None:
        record_reversal(
            session,
            community_id,
            by=by,
            exchange_id=exchange_id,
            reversal_id=posted[0].id,
            reason=reason,
        )

    return log
