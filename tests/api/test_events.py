"""The event feed: every state change writes its event in the same transaction; ids run 1, 2, 3...
per community in commit order; `after` + `next_after` sees each event once; `wait` long-polls."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from protocoop.db import Database
from tests.support.api import Api, create_community, create_member
from tests.support.checks import validation_problem
from tests.support.ledger import (
    EXCHANGES,
    C,
    all_exchanges,
    audit,
    post,
    posted,
    problem,
    reverse,
    set_member,
)
from tests.support.workflows import (
    EVENTS,
    all_events,
    get_exchange,
    make_overdue,
    propose,
    proposed,
    read_events,
    set_levy,
    settle,
    settled,
)


def test_every_state_change_writes_its_event_with_the_resource_as_it_became(
    api: Api, db: Database, keys: dict[str, str]
) -> None:
    app, treasurer = api.as_(keys["app"]), api.as_(keys["treasurer"])
    writes: list[tuple[str, Any]] = []

    def did(event_type: str, data: Any) -> None:
        writes.append((event_type, data))

    community = treasurer.patch(C, json={"name": "Riverside Timebank"}).json()
    did("community.updated", community)
    dave = api.post(f"{C}/members", json={"id": "dave", "name": "Dave"}).json()
    did("member.created", dave)
    did("member.updated", set_member(treasurer, "dave", lower_limit=-50))
    direct = posted(app, "alice", "bob", 5)
    did("exchange.completed", direct)
    to_accept = proposed(app, "bob", "carol", 3)
    did("exchange.pending", to_accept)
    did("exchange.completed", settled(app, to_accept["id"], "accept"))
    to_reject = proposed(app, "carol", "alice", 2, initiated_by="receiver")
    did("exchange.pending", to_reject)
    did("exchange.rejected", settled(app, to_reject["id"], "reject"))
    to_cancel = proposed(app, "carol", "dave", 4)
    did("exchange.pending", to_cancel)
    did("exchange.cancelled", settled(app, to_cancel["id"], "cancel"))
    to_expire = proposed(app, "dave", "alice", 6)
    did("exchange.pending", to_expire)
    make_overdue(db, to_expire["id"])
    did("exchange.expired", get_exchange(app, to_expire["id"]))
    reversal = reverse(treasurer, direct["id"]).json()
    did("exchange.completed", reversal)
    did("exchange.reversed", {"id": direct["id"], "reversed_by": reversal["id"]})

    events = all_events(app)

    # The community fixture created alice, bob and carol first.
    assert [e["type"] for e in events[:3]] == ["member.created"] * 3
    assert [e["data"]["id"] for e in events[:3]] == ["alice", "bob", "carol"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [(e["type"], e["data"]) for e in events[3:]] == writes
    for event in events:
        assert event["created_at"].endswith("Z")


def test_event_ids_are_per_community(api: Api, keys: dict[str, str]) -> None:
    create_community(api, "hillside")
    create_member(api, "hillside", "dora")

    hillside = api.get("/v1/communities/hillside/events").json()

    assert [(e["id"], e["type"], e["data"]["id"]) for e in hillside["items"]] == [
        (1, "member.created", "dora")
    ]
    assert [e["id"] for e in all_events(api)] == [1, 2, 3]
    problem(api.as_(keys["app"]).get("/v1/communities/hillside/events"), 404, "not_found")


def test_every_role_of_the_community_reads_its_events(api: Api, keys: dict[str, str]) -> None:
    for role in ("app", "auditor", "treasurer"):
        assert [e["id"] for e in all_events(api.as_(keys[role]))] == [1, 2, 3], role


def test_paging_with_next_after_sees_every_event_once_in_order(api: Api, community: dict) -> None:
    for n in range(10):
        posted(api, "alice", "bob", n + 1)

    pages = []
    after = 0
    while True:
        page = read_events(api, after, limit=4)
        pages.append([e["id"] for e in page["items"]])
        if not page["items"]:
            assert page["next_after"] == after
            break
        assert page["next_after"] == page["items"][-1]["id"]
        after = page["next_after"]

    assert pages == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13], []]
    assert [e["id"] for e in read_events(api, 5, limit=2)["items"]] == [6, 7]
    assert read_events(api, 99) == {"items": [], "next_after": 99}
    amounts = [e["data"]["amount"] for e in all_events(api, after=3)]
    assert amounts == list(range(1, 11))


def test_bad_feed_parameters_are_refused(api: Api, community: dict) -> None:
    for params in (
        {"after": -1},
        {"after": "x"},
        {"limit": 0},
        {"limit": 1001},
        {"wait": -1},
        {"wait": 31},
        {"wait": "soon"},
    ):
        validation_problem(api.get(EVENTS, params=params))


def test_long_poll_returns_as_soon_as_an_event_is_written(api: Api, community: dict) -> None:
    last = read_events(api)["next_after"]
    writer = threading.Timer(0.5, lambda: posted(api, "alice", "bob", 7))

    started = time.monotonic()
    writer.start()
    page = read_events(api, last, wait=5)
    elapsed = time.monotonic() - started
    writer.join()

    assert [(e["type"], e["data"]["amount"]) for e in page["items"]] == [("exchange.completed", 7)]
    assert page["next_after"] == last + 1
    assert 0.4 < elapsed < 4.0, elapsed  # well before the 5 s wait ends


def test_long_poll_with_nothing_written_returns_empty_when_the_wait_ends(
    api: Api, community: dict
) -> None:
    started = time.monotonic()
    page = read_events(api, 3, wait=1)
    elapsed = time.monotonic() - started

    assert page == {"items": [], "next_after": 3}
    assert 0.9 < elapsed < 4.0, elapsed


def test_long_poll_with_events_already_there_returns_at_once(api: Api, community: dict) -> None:
    started = time.monotonic()
    page = read_events(api, 0, wait=10)

    assert [e["id"] for e in page["items"]] == [1, 2, 3]
    assert time.monotonic() - started < 3


def test_refused_and_replayed_requests_write_no_event(
    api: Api, db: Database, keys: dict[str, str]
) -> None:
    app = api.as_(keys["app"])
    posted(app, "alice", "bob", 5, headers={"Idempotency-Key": "once"})
    pending = proposed(app, "alice", "carol", 10)
    done = posted(app, "carol", "bob", 1)
    set_member(api, "carol", status="suspended")
    before = all_events(api)

    assert post(app, "alice", "bob", 5, headers={"Idempotency-Key": "once"}).status_code == 201
    problem(post(app, "alice", "bob", 500), 409, "limit_exceeded")
    problem(propose(app, "alice", "bob", 500), 409, "limit_exceeded")
    problem(post(app, "bob", "carol", 1), 409, "member_inactive")
    problem(settle(app, pending["id"], "accept"), 409, "member_inactive")
    problem(settle(app, done["id"], "reject"), 409, "invalid_state")
    validation_problem(app.post(EXCHANGES, json={"provider": "alice"}))
    problem(reverse(app, done["id"]), 403, "forbidden")
    problem(api.patch(f"{C}/members/alice", json={"status": "closed"}), 409, "invalid_state")
    problem(api.patch(f"{C}/members/bob", json={"lower_limit": -1}), 409, "limit_below_balance")
    problem(set_levy(app, {"rate_ppm": 1}), 403, "forbidden")
    validation_problem(set_levy(api, {"rate_ppm": -1}))

    assert all_events(api) == before


def test_concurrent_writers_and_a_following_reader_agree_on_every_event(
    api: Api, keys: dict[str, str]
) -> None:
    """Threads post exchanges, propose, accept and reject against one app while a reader
    long-polls the feed: the reader sees every event exactly once, in id order, and the
    completed exchanges it saw are exactly the ledger's."""
    app = api.as_(keys["app"])
    for member in ("dave", "erin"):
        create_member(api, "riverside", member)
    members = ["alice", "bob", "carol", "dave", "erin"]
    done = threading.Event()
    seen: list[dict[str, Any]] = []
    errors: list[str] = []

    def write(number: int) -> None:
        rng = random.Random(number)
        try:
            for _ in range(12):
                provider, receiver = rng.sample(members, 2)
                amount = rng.randint(1, 30)
                choice = rng.random()
                if choice < 0.5:
                    response = post(app, provider, receiver, amount)
                else:
                    response = propose(app, provider, receiver, amount)
                    if response.status_code == 201:
                        action = "accept" if choice < 0.8 else "reject"
                        response = settle(app, response.json()["id"], action)
                if response.status_code not in (200, 201, 409):
                    errors.append(response.text)
        except Exception as error:
            errors.append(repr(error))

    def read() -> None:
        after = 0
        while True:
            finished = done.is_set()
            page = read_events(app, after, wait=0.5, limit=7)
            seen.extend(page["items"])
            after = page["next_after"]
            if finished and not page["items"]:
                return

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    done.set()
    reader.join(timeout=60)

    assert not errors, errors[:3]
    assert [e["id"] for e in seen] == list(range(1, len(seen) + 1))
    assert seen == all_events(api)
    completed = [e["data"]["id"] for e in seen if e["type"] == "exchange.completed"]
    assert len(completed) == len(set(completed))
    assert set(completed) == {x["id"] for x in all_exchanges(api)}
    assert audit(api)["ok"] is True
