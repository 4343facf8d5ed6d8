"""Safe retries (IETF `Idempotency-Key` draft).

A POST with an `Idempotency-Key` stores its response in the same transaction as the change it
made, so neither exists without the other. A retry with the same key and the same request gets
that response again (status and body, byte for byte) without writing anything; the same key with
another request is `422 idempotency_key_reused`; a retry that arrives while the first is still
running in this process is `409 request_in_progress` (across processes the second one waits for the
first to commit, then replays it). Refusals (4xx) are stored too: they are the first response.
Keys are scoped to the API key (and its community) and kept at least 24 hours.

Requests that change a ledger (posts, batches, reversals, accept/reject/cancel) are made
idempotent by the group-commit writer (`ledger.writer.record_group`), with the same records and
the same answers; `execute` below (through `routing.respond`) serves the other writes only:
members, communities and API keys.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import orjson
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocoop.clock import utc_now
from protocoop.db import Database
from protocoop.db.models import IdempotencyRecord
from protocoop.errors import IdempotencyKeyReused, ProblemError, RequestInProgress
from protocoop.responses import Rendered, render_problem

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
GLOBAL_SCOPE = ""
"""The scope of requests that belong to no community (creating communities and admin keys)."""


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's key for one request, with what makes a retry "the same request"."""

    api_key_id: str
    key: str
    fingerprint: str
    """SHA-256 of method, path, query and the canonical JSON body."""


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """The identity of a request: formatting and key order of the JSON body do not matter."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        # Not JSON, or nested deeper than orjson writes (255 levels): such a body is refused
        # anyway, and its bytes identify it as well as a canonical form would.
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class InFlight:
    """Keys whose first request is running in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[tuple[str, str, str]] = set()

    @contextmanager
    def claim(self, scope: str, key: IdempotencyKey) -> Iterator[None]:
        ident = (scope, key.api_key_id, key.key)
        with self._lock:
            if ident in self._running:
                raise RequestInProgress(
                    "A request with this Idempotency-Key is still running; retry shortly."
                )
            self._running.add(ident)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(ident)


def stored_response(session: Session, scope: str, key: IdempotencyKey) -> Rendered | None:
    """The first response for `key`, or None; a different request under the same key is a 422."""
    record = session.get(IdempotencyRecord, (scope, key.api_key_id, key.key))
    if record is None:
        return None
    if record.request_hash != key.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different request; use a new key."
        )
    return Rendered(record.status_code, record.content_type, record.response_body.encode())


def remember(session: Session, scope: str, key: IdempotencyKey, response: Rendered) -> None:
    """Store `response` as the answer to `key`, in the caller's transaction."""
    session.add(
        IdempotencyRecord(
            community_id=scope,
            api_key_id=key.api_key_id,
            key=key.key,
            request_hash=key.fingerprint,
            status_code=response.status_code,
            content_type=response.content_type,
            response_body=(response.remembered_body or response.body).decode(),
            created_at=utc_now(),
        )
    )
    session.flush()


def forget_older_than(session: Session, hours: int) -> int:
    """Delete records older than `hours` (never less than 24); returns how many."""
    cutoff = utc_now() - timedelta(hours=max(hours, 24))
    result = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


def execute(
    db: Database,
    in_flight: InFlight,
    scope: str,
    key: IdempotencyKey | None,
    work: Callable[[Session], Rendered],
) -> Rendered:
    """Run `work` in one write transaction, made idempotent by `key` when there is one.

    Returns the rendered response; refusals raised by `work` propagate when there is no key and
    are returned (and stored) when there is one.
    """
    if key is None:
        return db.run_write(work)

    def attempt(session: Session) -> Rendered:
        first = stored_response(session, scope, key)
        if first is not None:
            return Rendered(
                first.status_code, first.content_type, first.body, {REPLAYED_HEADER: "true"}
            )
        savepoint = session.begin_nested()
        try:
            response = work(session)
            savepoint.commit()
        except ProblemError as refusal:
            savepoint.rollback()
            if refusal.status >= 500:
                raise
            response = render_problem(refusal)
        remember(session, scope, key, response)
        return response

    with in_flight.claim(scope, key):
        try:
            return db.run_write(attempt)
        except IntegrityError:
            # Another process stored this key between our lookup and our insert: replay it.
            return db.run_write(attempt)
