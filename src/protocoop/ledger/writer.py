"""Group commit: one writer thread per process records concurrent posts in shared transactions.

Every request that changes a ledger comes this way: posts and batches, reversals, and the
accept, reject and cancel of proposals. This is also the one place where `Idempotency-Key`s of
those requests are checked and remembered.

A posting request does not open a transaction of its own. It is queued; the writer takes every
request waiting (up to `max_group`), groups them by community and records each group in **one**
transaction: one lock of the ledger head, one INSERT per table, one commit (and one fsync). Under
load, transactions grow by themselves — no timer, no added latency when idle. Once it holds the
head lock (which it may have waited for while another process's writer held it), the writer also
takes the requests for that community that arrived meanwhile: the longer the wait, the larger the
group, instead of a queue of small transactions taking turns.

Each request still succeeds or fails on its own: the planner checks a request in memory and
changes nothing when it refuses it, so a refusal is that request's answer and the others go
on. Idempotency records are written in the same transaction as the exchanges they answer for, and
each request's API key is checked again inside that transaction, so a key revoked a moment ago
records nothing. If the shared transaction fails as a whole (a database error), its requests are
retried one transaction each, so one bad request cannot take the others down with it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from protocoop.clock import utc_now
from protocoop.db import Database
from protocoop.db.engine import is_outage
from protocoop.errors import (
    IdempotencyKeyReused,
    InternalError,
    Unauthorized,
)
from protocoop.idempotency import REPLAYED_HEADER, IdempotencyKey
from protocoop.ledger.planner import Outcome, Post, Settle
from protocoop.ledger.service import record
from protocoop.ledger.store import LedgerStore
from protocoop.observability import count_posting_answer
from protocoop.problems import problem_for
from protocoop.responses import Rendered, render_problem

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PostRequest:
    """One request that changes a ledger, waiting for the writer: a post or batch (`Post`,
    reversals included) or a proposal's accept, reject or cancel (`Settle`)."""

    community_id: str
    change: Post | Settle
    key_id: str
    """The API key that sent it (checked again when recorded)."""
    idempotency: IdempotencyKey | None
    render: Callable[[Any], Rendered]
    """How to answer once recorded, from the planner's result (the exchanges of a `Post`, the
    exchange of a `Settle`)."""
    also: Callable[[Session, Any], None] | None = None
    """More to write in the same transaction once it succeeded (the audit log of a reversal)."""
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    answer: asyncio.Future[Rendered] = field(init=False)

    def __post_init__(self) -> None:
        self.answer = self.loop.create_future()

    def deliver(self, rendered: Rendered) -> None:
        self.loop.call_soon_threadsafe(_settle, self.answer, rendered)


def _settle(answer: asyncio.Future[Rendered], rendered: Rendered) -> None:
    if not answer.done():  # the client may have gone away
        answer.set_result(rendered)


@dataclass(frozen=True, slots=True)
class GroupStats:
    """What the writer has done (exported as metrics)."""

    groups: int
    requests: int


class GroupCommitWriter:
    """The process's posting writers: `lanes` threads, each with its own queue. A community's
    requests always go to the same lane (so they stay in order and group together), and a slow
    or locked community holds up only the communities that share its lane."""

    def __init__(
        self,
        db: Database,
        *,
        max_group: int = 256,
        lanes: int = 1,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        self.db = db
        self.max_group = max_group
        self.on_group = on_group
        self._queues: list[queue.SimpleQueue[PostRequest | None]] = [
            queue.SimpleQueue() for _ in range(max(1, lanes))
        ]
        self._threads = [
            threading.Thread(
                target=self._run, args=(lane,), name=f"protocoop-writer-{n}", daemon=True
            )
            for n, lane in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    async def submit(self, request: PostRequest) -> Rendered:
        """Queue a request on its community's lane and wait for its answer."""
        lane = zlib.crc32(request.community_id.encode()) % len(self._queues)
        self._queues[lane].put(request)
        return await request.answer

    def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        for lane in self._queues:
            lane.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, queue_: queue.SimpleQueue[PostRequest | None]) -> None:
        lane = _Lane(queue_)
        while True:
            first = lane.take()
            if first is None:
                return
            group = [first]
            while len(group) < self.max_group and (more := lane.take_nowait()) is not None:
                group.append(more)
            try:
                self._record(group, lane)
            except Exception:  # never let the writer die: answer and carry on
                log.exception("group commit failed")
                for request in group:
                    request.deliver(render_problem(InternalError()))

    def _record(self, group: list[PostRequest], lane: _Lane) -> None:
        by_community: dict[str, list[PostRequest]] = defaultdict(list)
        for request in group:
            by_community[request.community_id].append(request)
        for community_id, requests in by_community.items():
            taken = len(requests)
            gather = partial(lane.gather, community_id, self.max_group - taken)
            try:
                # record_group appends what it gathers to `requests`, so a failure answers them too.
                answers = self.db.run_write(
                    partial(
                        record_group, community_id=community_id, requests=requests, gather=gather
                    )
                )
            except Exception as error:
                if len(requests) == 1 or is_outage(error):
                    # The database failed, not one request: trying each request alone would
                    # make every one wait for the same timeout in turn. All may retry.
                    answers = [_failure(error)] * len(requests)
                else:
                    answers = [self._record_alone(community_id, request) for request in requests]
            group.extend(requests[taken:])  # so that an unexpected error answers them too
            if self.on_group is not None:
                self.on_group(len(requests))
            for request, answer in zip(requests, answers, strict=True):
                request.deliver(answer)
                if isinstance(request.change, Post):
                    count_posting_answer(
                        answer.status_code, answer.problem_code, len(request.change.drafts)
                    )

    def _record_alone(self, community_id: str, request: PostRequest) -> Rendered:
        try:
            return self.db.run_write(
                lambda session: record_group(session, community_id, [request])
            )[0]
        except Exception as error:
            return _failure(error)


class _Lane:
    """A writer's queue, plus the requests it took out of order while gathering for another
    community (answered next, in the order they came)."""

    def __init__(self, queue_: queue.SimpleQueue[PostRequest | None]) -> None:
        self.queue = queue_
        self.held: deque[PostRequest] = deque()
        self.stopping = False
        """The writer was asked to stop: finish what was taken, then return."""

    def take(self) -> PostRequest | None:
        """The next request, waiting for one; None when the writer should stop."""
        if self.held:
            return self.held.popleft()
        if self.stopping:
            return None
        return self._arrived(self.queue.get())

    def take_nowait(self) -> PostRequest | None:
        """The next request if one is waiting, else None."""
        if self.held:
            return self.held.popleft()
        if self.stopping:
            return None
        try:
            return self._arrived(self.queue.get_nowait())
        except queue.Empty:
            return None

    def gather(self, community_id: str, limit: int) -> list[PostRequest]:
        """Up to `limit` waiting requests for `community_id`; others are held for later. Nothing
        when one of that community's is already held (it must be answered in its turn)."""
        taken: list[PostRequest] = []
        if any(request.community_id == community_id for request in self.held):
            return taken
        while len(taken) < limit and not self.stopping:
            try:
                request = self._arrived(self.queue.get_nowait())
            except queue.Empty:
                break
            if request is None:
                break
            (taken if request.community_id == community_id else self.held).append(request)
        return taken

    def _arrived(self, item: PostRequest | None) -> PostRequest | None:
        if item is None:
            self.stopping = True
        return item


def _failure(error: Exception) -> Rendered:
    """The answer for a request whose transaction failed."""
    if isinstance(error, DBAPIError):
        log.warning("posting transaction failed: %s", error.orig)
    return render_problem(
        problem_for(
            error,
            sql_detail="The database could not record it; retry with the same Idempotency-Key.",
        )
    )


def record_group(
    session: Session,
    community_id: str,
    requests: list[PostRequest],
    gather: Callable[[], list[PostRequest]] | None = None,
) -> list[Rendered]:
    """Record `requests` in one community within the caller's transaction; one answer each.

    The ledger head is locked first, so the idempotency lookups below see every request recorded
    before this transaction by any process. Then `gather` may add to `requests` those that came
    in while the lock was awaited."""
    store = LedgerStore(session, community_id)
    store.lock_head()
    if gather is not None:
        requests.extend(gather())
    live_keys, stored = store.check(
        (r.key_id for r in requests),
        [(r.idempotency.api_key_id, r.idempotency.key) for r in requests if r.idempotency],
    )
    answers: list[Rendered | None] = []
    planned: list[int] = []
    succeeded: list[tuple[PostRequest, Any]] = []
    for index, request in enumerate(requests):
        key = request.idempotency
        first = stored.get((key.api_key_id, key.key)) if key else None
        if request.key_id not in live_keys:
            answers.append(render_problem(Unauthorized("Unknown or revoked API key.")))
        elif first is not None and key is not None:
            if first.request_hash != key.fingerprint:
                answers.append(
                    render_problem(
                        IdempotencyKeyReused(
                            "This Idempotency-Key was used for a different request; use a new key."
                        )
                    )
                )
            else:
                answers.append(
                    Rendered(
                        first.status_code,
                        first.content_type,
                        first.response_body.encode(),
                        {REPLAYED_HEADER: "true"},
                    )
                )
        else:
            answers.append(None)
            planned.append(index)

    def remembered(outcomes: list[Outcome]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        now = utc_now()
        for index, outcome in zip(planned, outcomes, strict=True):
            request = requests[index]
            if outcome.refusal is not None:
                answer = render_problem(outcome.refusal)
            else:
                answer = request.render(outcome.result)
                if request.also is not None:
                    succeeded.append((request, outcome.result))
            answers[index] = answer
            key = request.idempotency
            if key is not None:
                records.append(
                    {
                        "community_id": community_id,
                        "api_key_id": key.api_key_id,
                        "key": key.key,
                        "request_hash": key.fingerprint,
                        "status_code": answer.status_code,
                        "content_type": answer.content_type,
                        "response_body": answer.body.decode(),
                        "created_at": now,
                    }
                )
        return records

    record(
        session,
        community_id,
        [requests[i].change for i in planned],
        store=store,
        remembered=remembered,
    )
    for request, result in succeeded:
        cast(Callable[[Session, Any], None], request.also)(session, result)
    return [answer for answer in answers if answer is not None]
