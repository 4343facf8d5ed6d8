"""Expiry of proposals: an overdue proposal is released the moment anything looks at it — a read
of the exchange, of a party's balance, of the pending list, a write touching a party — and by the
server's periodic sweep, even if nobody looks.

Making time pass: most tests move the proposal back in time in `pending_exchanges`
(`workflow_helpers.make_overdue`); `test_proposal_expires_exactly_when_its_expires_in_has_passed`
instead moves the service's clock forward (`protocoop.clock.use_clock` with a `ManualClock`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocoop.app import create_app
from protocoop.clock import ManualClock, use_clock
from protocoop.config import Settings
from protocoop.db import Database
from protocoop.ledger import expiry
from tests.support.api import Api, create_community, create_member
from tests.support.ledger import (
    C,
    all_exchanges,
    audit,
    balance,
    balances,
    posted,
    problem,
)
from tests.support.workflows import (
    all_events,
    get_exchange,
    make_overdue,
    proposals,
    propose,
    proposed,
    reserved,
    settle,
    stored_status,
)


def expired_events(api: Api) -> list[dict[str, Any]]:
    return [e for e in all_events(api) if e["type"] == "exchange.expired"]


def assert_expired_and_released(api: Api, db: Database, proposal: dict[str, Any]) -> None:
    """The proposal is expired (stored so), its reservation is gone, and an event says so."""
    assert stored_status(db, proposal["id"]) == "expired"
    shown = get_exchange(api, proposal["id"])
    assert shown["status"] == "expired"
    assert shown["resolved_at"] is not None
    assert shown["seq"] is None
    assert shown["entries"] == []
    assert reserved(api, proposal["receiver"]) == (0, 0)
    assert reserved(api, proposal["provider"]) == (0, 0)
    assert proposal["id"] in [x["id"] for x in proposals(api, "expired")]
    events = expired_events(api)
    assert [e["data"]["id"] for e in events] == [proposal["id"]]
    assert events[0]["data"]["status"] == "expired"
    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}


@pytest.fixture
def overdue(api: Api, db: Database, community: dict) -> dict[str, Any]:
    """alice proposed to give bob 80; the proposal's time ran out a minute ago, and nothing has
    looked at it since."""
    proposal = proposed(api, "alice", "bob", 80)
    make_overdue(db, proposal["id"])
    assert stored_status(db, proposal["id"]) == "pending"
    return proposal


def test_reading_an_overdue_exchange_expires_it(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    shown = api.get(f"{C}/exchanges/{overdue['id']}").json()

    assert shown["status"] == "expired"
    assert_expired_and_released(api, db, overdue)


def test_reading_a_partys_balance_expires_its_overdue_proposals(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    shown = balance(api, "bob")

    assert (shown["reserved_debit"], shown["available_to_spend"]) == (0, 100)
    assert stored_status(db, overdue["id"]) == "expired"
    assert_expired_and_released(api, db, overdue)


def test_listing_pending_proposals_expires_the_overdue_ones(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    fresh = proposed(api, "carol", "alice", 5)

    assert [x["id"] for x in proposals(api)] == [fresh["id"]]
    assert stored_status(db, overdue["id"]) == "expired"
    assert stored_status(db, fresh["id"]) == "pending"


def test_a_write_touching_a_party_expires_its_overdue_proposals_first(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    # 50 only fits into bob's room once the 80 reserved by the overdue proposal is released.
    recorded = posted(api, "carol", "bob", 50)

    assert recorded["seq"] == 1
    assert stored_status(db, overdue["id"]) == "expired"
    assert reserved(api, "bob") == (0, 0)
    assert reserved(api, "alice") == (0, 0)
    assert [e["data"]["id"] for e in expired_events(api)] == [overdue["id"]]


def test_a_new_proposal_touching_a_party_expires_its_overdue_proposals_first(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    fresh = proposed(api, "carol", "bob", 90)

    assert stored_status(db, overdue["id"]) == "expired"
    assert reserved(api, "bob") == (90, 0)
    assert [x["id"] for x in proposals(api)] == [fresh["id"]]


@pytest.mark.parametrize("action", ["accept", "reject", "cancel"])
def test_settling_an_overdue_proposal_is_invalid_state_expired_and_releases_it(
    api: Api, db: Database, overdue: dict[str, Any], action: str
) -> None:
    body = problem(settle(api, overdue["id"], action), 409, "invalid_state")

    assert body["current_status"] == "expired"
    assert all_exchanges(api) == []
    assert_expired_and_released(api, db, overdue)
    # ...and it stays expired.
    body = problem(settle(api, overdue["id"], "accept"), 409, "invalid_state")
    assert body["current_status"] == "expired"


def test_accepting_an_overdue_proposal_with_a_key_replays_the_refusal(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    key = {"Idempotency-Key": "late-accept"}

    first = settle(api, overdue["id"], "accept", headers=key)
    again = settle(api, overdue["id"], "accept", headers=key)

    problem(first, 409, "invalid_state")
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert_expired_and_released(api, db, overdue)


def test_sweep_expires_overdue_proposals_of_every_community_and_only_those(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    create_community(api, "hillside")
    create_member(api, "hillside", "dora")
    create_member(api, "hillside", "eve")
    elsewhere = api.post(
        "/v1/communities/hillside/exchanges",
        json={
            "provider": "dora",
            "receiver": "eve",
            "amount": 3,
            "description": "x",
            "pending": True,
        },
    ).json()
    make_overdue(db, elsewhere["id"], community="hillside")
    create_member(api, "riverside", "dave")
    fresh = proposed(api, "carol", "dave", 5)  # touches neither alice nor bob

    assert expiry.sweep(db) == 2

    assert stored_status(db, overdue["id"]) == "expired"
    assert stored_status(db, elsewhere["id"], community="hillside") == "expired"
    assert stored_status(db, fresh["id"]) == "pending"
    assert expiry.sweep(db) == 0
    assert reserved(api, "dave") == (5, 0)
    assert reserved(api, "bob") == (0, 0)
    hillside = api.get("/v1/communities/hillside/members/eve/balance").json()
    assert hillside["reserved_debit"] == 0
    assert audit(api)["ok"] is True


def test_server_sweeps_overdue_proposals_without_anyone_reading_them(
    settings: Settings, db: Database, admin_token: str
) -> None:
    sweeping = settings.model_copy(update={"expiry_sweep_s": 0.1})
    with TestClient(create_app(sweeping), raise_server_exceptions=False) as client:
        api = Api(client, admin_token)
        create_community(api)
        for member in ("alice", "bob"):
            create_member(api, "riverside", member)
        proposal = proposed(api, "alice", "bob", 10)
        make_overdue(db, proposal["id"])

        deadline = time.monotonic() + 10
        while stored_status(db, proposal["id"]) == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)

        assert stored_status(db, proposal["id"]) == "expired"
        assert reserved(api, "bob") == (0, 0)


@pytest.fixture
def clock() -> Iterator[ManualClock]:
    """The server's clock (the test's process serves the API), moved forward by the test."""
    with use_clock(ManualClock()) as manual:
        assert isinstance(manual, ManualClock)
        yield manual


def test_proposal_expires_exactly_when_its_expires_in_has_passed(
    api: Api, db: Database, community: dict, clock: ManualClock
) -> None:
    proposal = proposed(api, "alice", "bob", 10, expires_in=60)

    clock.offset = timedelta(seconds=55)
    assert get_exchange(api, proposal["id"])["status"] == "pending"
    assert reserved(api, "bob") == (10, 0)
    assert expiry.sweep(db) == 0

    clock.offset = timedelta(seconds=61)
    assert get_exchange(api, proposal["id"])["status"] == "expired"
    assert reserved(api, "bob") == (0, 0)


def test_proposal_accepted_before_it_expires_is_completed_for_good(
    api: Api, db: Database, community: dict, clock: ManualClock
) -> None:
    proposal = proposed(api, "alice", "bob", 10, expires_in=60)
    clock.offset = timedelta(seconds=50)
    assert settle(api, proposal["id"], "accept").status_code == 200

    clock.offset = timedelta(days=1)

    assert expiry.sweep(db) == 0
    assert get_exchange(api, proposal["id"])["status"] == "completed"
    assert balances(api)["bob"] == -10
    assert expired_events(api) == []


def test_refusal_counts_the_room_an_overdue_proposal_no_longer_holds(
    api: Api, db: Database, overdue: dict[str, Any]
) -> None:
    body = problem(propose(api, "carol", "bob", 101), 409, "limit_exceeded")

    assert body["member"] == "bob"
    assert body.get("reserved", 0) == 0  # the overdue 80 no longer counts against bob
    # A refused request writes nothing; the next read expires the proposal as usual.
    assert get_exchange(api, overdue["id"])["status"] == "expired"
    assert_expired_and_released(api, db, overdue)
