"""Proposals: `pending: true` reserves the amount; the other side accepts or rejects, the
initiator cancels. Every transition, every illegal one, member status, and retries."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from protocoop.db import Database
from tests.support.api import Api
from tests.support.checks import validation_problem, walk_pages
from tests.support.ledger import (
    EXCHANGES,
    C,
    all_exchanges,
    audit,
    balance,
    balances,
    exchange,
    ledger_state,
    post,
    posted,
    problem,
    recompute_hash,
    set_member,
)
from tests.support.workflows import (
    SEVEN_DAYS,
    get_exchange,
    make_overdue,
    proposals,
    propose,
    proposed,
    reserved,
    settle,
    settled,
)

SETTLED_AS = [("accept", "completed"), ("reject", "rejected"), ("cancel", "cancelled")]
"""Each way to settle a proposal, and the status it leaves the exchange in."""


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- proposing ---------------------------------------------------------------------------------


def test_proposal_is_pending_reserves_its_amount_and_changes_no_balance(
    api: Api, keys: dict[str, str]
) -> None:
    set_member(api, "alice", upper_limit=100)
    app = api.as_(keys["app"])

    response = propose(app, "alice", "bob", 30)

    assert response.status_code == 201, response.text
    proposal = response.json()
    assert proposal["status"] == "pending"
    assert proposal["seq"] is None
    assert proposal["entries"] == []
    assert proposal["hash"] is None
    assert proposal["prev_hash"] is None
    assert proposal["initiated_by"] == "provider"
    assert proposal["resolved_at"] is None
    lifetime = moment(proposal["expires_at"]) - moment(proposal["created_at"])
    assert lifetime == timedelta(seconds=SEVEN_DAYS)

    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}
    assert all_exchanges(api) == []
    bob, alice = balance(api, "bob"), balance(api, "alice")
    assert (bob["balance"], bob["reserved_debit"], bob["reserved_credit"]) == (0, 30, 0)
    assert bob["available_to_spend"] == 70  # 0 - 30 reserved - (-100)
    assert (alice["balance"], alice["reserved_debit"], alice["reserved_credit"]) == (0, 0, 30)
    assert alice["available_to_earn"] == 70  # 100 - 0 - 30 reserved
    assert alice["available_to_spend"] == 100
    assert get_exchange(app, proposal["id"]) == proposal
    assert proposals(app) == [proposal]
    assert api.get(f"{C}/members/bob/statement").json()["items"] == []


def test_receiver_may_initiate_a_proposal(api: Api, community: dict) -> None:
    proposal = proposed(api, "alice", "bob", 5, initiated_by="receiver")

    assert proposal["initiated_by"] == "receiver"
    assert reserved(api, "bob") == (5, 0)
    assert reserved(api, "alice") == (0, 5)


def test_expires_in_sets_when_the_reservation_lapses(api: Api, community: dict) -> None:
    for seconds in (60, 3600, 90 * 24 * 3600, None):
        proposal = proposed(api, "alice", "bob", 1, expires_in=seconds)

        lifetime = moment(proposal["expires_at"]) - moment(proposal["created_at"])
        assert lifetime == timedelta(seconds=seconds or SEVEN_DAYS), seconds


def test_expires_in_outside_60_seconds_to_90_days_is_refused(api: Api, community: dict) -> None:
    for expires_in in (59, 0, -60, 90 * 24 * 3600 + 1, "3600", 3600.0, 3600.5, True):
        validation_problem(propose(api, "alice", "bob", 5, expires_in=expires_in))

    assert proposals(api) == []
    assert reserved(api, "bob") == (0, 0)


def test_proposal_options_without_pending_are_refused(api: Api, community: dict) -> None:
    before = ledger_state(api)

    for fields in (
        {"expires_in": 3600},
        {"initiated_by": "receiver"},
        {"initiated_by": "provider"},
        {"pending": False, "expires_in": 3600},
        {"pending": False, "initiated_by": "receiver"},
    ):
        response = api.post(EXCHANGES, json=exchange("alice", "bob", 5, **fields))
        validation_problem(response)

    assert ledger_state(api) == before
    assert proposals(api) == []


def test_malformed_proposal_is_refused(api: Api, community: dict) -> None:
    for fields in ({"pending": "true"}, {"pending": 1}, {"initiated_by": "treasurer"}):
        body = {**exchange("alice", "bob", 5), "pending": True, **fields}
        validation_problem(api.post(EXCHANGES, json=body))

    assert proposals(api) == []
    assert ledger_state(api) == ({"@commons": 0, "alice": 0, "bob": 0, "carol": 0}, 0)


def test_proposal_that_does_not_fit_beside_the_reservations_is_refused_and_reserves_nothing(
    api: Api, community: dict
) -> None:
    first = proposed(api, "alice", "bob", 60)

    body = problem(propose(api, "carol", "bob", 50), 409, "limit_exceeded")

    assert body["member"] == "bob"
    assert body["attempted"] == 50
    assert body["balance"] == 0
    assert proposals(api) == [first]
    assert reserved(api, "bob") == (60, 0)
    assert reserved(api, "carol") == (0, 0)
    # The room that is left can still be proposed, up to the limit exactly.
    proposed(api, "carol", "bob", 40)
    assert balance(api, "bob")["available_to_spend"] == 0


def test_direct_exchange_cannot_use_room_a_proposal_reserved(api: Api, community: dict) -> None:
    proposed(api, "alice", "bob", 80)
    before = ledger_state(api)

    problem(post(api, "carol", "bob", 30), 409, "limit_exceeded")

    assert ledger_state(api) == before
    posted(api, "carol", "bob", 20)
    assert balance(api, "bob")["available_to_spend"] == 0


def test_proposal_beyond_the_providers_upper_limit_is_refused(api: Api, community: dict) -> None:
    set_member(api, "alice", upper_limit=10)
    proposed(api, "alice", "bob", 6)

    body = problem(propose(api, "alice", "carol", 5), 409, "limit_exceeded")

    assert body["member"] == "alice"
    assert reserved(api, "alice") == (0, 6)
    assert reserved(api, "carol") == (0, 0)


def test_proposal_with_a_suspended_member_is_refused(api: Api, community: dict) -> None:
    set_member(api, "bob", status="suspended")

    problem(propose(api, "alice", "bob", 5), 409, "member_inactive")

    assert proposals(api) == []
    assert reserved(api, "alice") == (0, 0)


def test_auditor_may_not_propose_or_settle(api: Api, keys: dict[str, str]) -> None:
    auditor = api.as_(keys["auditor"])
    proposal = proposed(api, "alice", "bob", 5)

    problem(propose(auditor, "alice", "bob", 5), 403, "forbidden")
    for action in ("accept", "reject", "cancel"):
        problem(settle(auditor, proposal["id"], action), 403, "forbidden")

    assert get_exchange(api, proposal["id"])["status"] == "pending"
    assert len(proposals(api)) == 1


@pytest.mark.parametrize(("action", "status"), SETTLED_AS)
def test_only_a_treasurer_may_settle_proposals_with_system_accounts(
    api: Api, keys: dict[str, str], action: str, status: str
) -> None:
    """As for posting: an app key may not move @commons, so it may not settle such a proposal
    either (accept, reject or cancel); a treasurer or admin may."""
    app, treasurer = api.as_(keys["app"]), api.as_(keys["treasurer"])
    posted(treasurer, "@commons", "carol", 10)  # @commons (lower limit 0) has 10 to spend
    from_commons = proposed(treasurer, "@commons", "alice", 5)
    to_commons = proposed(treasurer, "bob", "@commons", 3)
    with_members = proposed(app, "carol", "alice", 2)
    before = ledger_state(api), reserved(api, "alice"), reserved(api, "bob")

    for proposal in (from_commons, to_commons):
        problem(settle(app, proposal["id"], action), 403, "forbidden")
        assert get_exchange(api, proposal["id"])["status"] == "pending"
    assert (ledger_state(api), reserved(api, "alice"), reserved(api, "bob")) == before

    assert settled(app, with_members["id"], action)["status"] == status
    assert settled(treasurer, from_commons["id"], action)["status"] == status
    assert settled(api, to_commons["id"], action)["status"] == status  # the admin
    assert proposals(api) == []


# --- settling ----------------------------------------------------------------------------------


def test_accept_records_the_exchange_now_continuing_the_chain_and_releases_the_reservation(
    api: Api, keys: dict[str, str]
) -> None:
    app = api.as_(keys["app"])
    first = posted(app, "carol", "alice", 7)
    proposal = proposed(app, "alice", "bob", 30, external_id="order-17", category="garden")
    second = posted(app, "bob", "carol", 2)

    accepted = settled(app, proposal["id"], "accept")

    assert accepted["id"] == proposal["id"]
    assert accepted["status"] == "completed"
    assert accepted["seq"] == 3
    assert accepted["prev_hash"] == second["hash"] != first["hash"]
    assert accepted["hash"] == recompute_hash(second["hash"], accepted)
    assert accepted["entries"] == [
        {"account": "bob", "amount": -30, "balance_after": -28},
        {"account": "alice", "amount": 30, "balance_after": 23},
    ]
    assert (accepted["external_id"], accepted["category"]) == ("order-17", "garden")
    assert accepted["initiated_by"] == "provider"
    assert accepted["resolved_at"] is not None
    assert balances(api) == {"@commons": 0, "alice": 23, "bob": -28, "carol": 5}
    assert reserved(api, "alice") == (0, 0)
    assert reserved(api, "bob") == (0, 0)
    assert [x["id"] for x in all_exchanges(api)] == [first["id"], second["id"], proposal["id"]]
    assert get_exchange(app, proposal["id"]) == accepted
    assert proposals(api) == []
    assert audit(api)["ok"] is True
    # The next exchange chains on the accepted one.
    assert posted(app, "alice", "carol", 1)["prev_hash"] == accepted["hash"]


@pytest.mark.parametrize(("action", "status"), [("reject", "rejected"), ("cancel", "cancelled")])
def test_reject_and_cancel_release_the_reservation_and_record_nothing(
    api: Api, keys: dict[str, str], action: str, status: str
) -> None:
    app = api.as_(keys["app"])
    proposal = proposed(app, "alice", "bob", 30)
    kept = proposed(app, "carol", "bob", 20)

    answer = settled(app, proposal["id"], action)

    assert answer["id"] == proposal["id"]
    assert answer["status"] == status
    assert answer["seq"] is None
    assert answer["entries"] == []
    assert answer["resolved_at"] is not None
    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}
    assert all_exchanges(api) == []
    assert reserved(api, "bob") == (20, 0)
    assert reserved(api, "alice") == (0, 0)
    assert get_exchange(app, proposal["id"]) == answer
    assert proposals(app, status) == [answer]
    assert proposals(app) == [kept]
    # The released room is usable again.
    posted(app, "alice", "bob", 80)


def _proposal_in(api: Api, db: Database, state: str) -> dict[str, Any]:
    """An exchange in `state`: completed (a direct exchange, or an accepted proposal),
    rejected, cancelled or expired."""
    if state == "completed-direct":
        return posted(api, "alice", "bob", 5)
    proposal = proposed(api, "alice", "bob", 5)
    if state == "expired":
        make_overdue(db, proposal["id"])
        return get_exchange(api, proposal["id"])
    action = {"completed-accepted": "accept", "rejected": "reject", "cancelled": "cancel"}[state]
    return settled(api, proposal["id"], action)


@pytest.mark.parametrize(
    "state", ["completed-direct", "completed-accepted", "rejected", "cancelled", "expired"]
)
def test_every_transition_from_a_settled_exchange_is_invalid_state_and_changes_nothing(
    api: Api, db: Database, keys: dict[str, str], state: str
) -> None:
    app = api.as_(keys["app"])
    exchange_before = _proposal_in(app, db, state)
    current = state.split("-")[0]
    assert exchange_before["status"] == current
    before = ledger_state(api), reserved(api, "alice"), reserved(api, "bob")

    for action in ("accept", "reject", "cancel"):
        body = problem(settle(app, exchange_before["id"], action), 409, "invalid_state")
        assert body["current_status"] == current, (action, body)

    assert (ledger_state(api), reserved(api, "alice"), reserved(api, "bob")) == before
    assert get_exchange(app, exchange_before["id"]) == exchange_before


def test_settling_an_unknown_exchange_is_not_found(api: Api, keys: dict[str, str]) -> None:
    """As the README shows it: no body. An id that is no UUID cannot exist: it is not found."""
    app = api.as_(keys["app"])
    proposal = proposed(app, "alice", "bob", 5)
    unknown = [str(uuid.uuid4()), str(uuid.uuid4()).upper(), "not-a-uuid", "x" * 300, "%00"]
    for action in ("accept", "reject", "cancel"):
        for exchange_id in unknown:
            problem(settle(app, exchange_id, action), 404, "not_found")
    for exchange_id in unknown:
        problem(app.get(f"{EXCHANGES}/{exchange_id}"), 404, "not_found")
    assert get_exchange(app, proposal["id"])["status"] == "pending"


@pytest.mark.parametrize(("action", "status"), [("accept", "completed"), ("reject", "rejected")])
def test_an_exchange_id_in_upper_case_names_that_exchange(
    api: Api, keys: dict[str, str], action: str, status: str
) -> None:
    app = api.as_(keys["app"])
    proposal = proposed(app, "alice", "bob", 5)
    shouted = proposal["id"].upper()
    assert get_exchange(app, shouted) == proposal

    answer = settled(app, shouted, action)

    assert (answer["id"], answer["status"]) == (proposal["id"], status)
    assert get_exchange(app, proposal["id"]) == answer
    problem(settle(app, shouted, "cancel"), 409, "invalid_state")


def test_settling_an_exchange_of_another_community_is_not_found(
    api: Api, keys: dict[str, str]
) -> None:
    from tests.support.api import create_community, create_member

    create_community(api, "hillside")
    create_member(api, "hillside", "dora")
    create_member(api, "hillside", "eve")
    other = api.post(
        "/v1/communities/hillside/exchanges", json=exchange("dora", "eve", 3, pending=True)
    ).json()

    for action in ("accept", "reject", "cancel"):
        problem(settle(api.as_(keys["app"]), other["id"], action), 404, "not_found")
    assert api.get(f"/v1/communities/hillside/exchanges/{other['id']}").json()["status"] == (
        "pending"
    )


@pytest.mark.parametrize("suspended", ["bob", "alice"])
def test_accept_with_a_suspended_party_is_refused_and_keeps_the_reservation(
    api: Api, keys: dict[str, str], suspended: str
) -> None:
    app = api.as_(keys["app"])
    proposal = proposed(app, "alice", "bob", 30)
    set_member(api, suspended, status="suspended")

    body = problem(settle(app, proposal["id"], "accept"), 409, "member_inactive")

    assert body["member"] == suspended
    assert get_exchange(app, proposal["id"])["status"] == "pending"
    assert reserved(api, "bob") == (30, 0)
    assert reserved(api, "alice") == (0, 30)
    assert all_exchanges(api) == []
    # Once active again, the same proposal is accepted.
    set_member(api, suspended, status="active")
    assert settled(app, proposal["id"], "accept")["status"] == "completed"
    assert balances(api) == {"@commons": 0, "alice": 30, "bob": -30, "carol": 0}


@pytest.mark.parametrize(("action", "status"), [("reject", "rejected"), ("cancel", "cancelled")])
def test_proposal_of_a_suspended_member_can_still_be_rejected_or_cancelled(
    api: Api, keys: dict[str, str], action: str, status: str
) -> None:
    app = api.as_(keys["app"])
    proposal = proposed(app, "alice", "bob", 30)

    suspended = set_member(api, "bob", status="suspended")

    assert suspended["status"] == "suspended"
    assert reserved(api, "bob") == (30, 0)  # suspending keeps the reservation
    assert settled(app, proposal["id"], action)["status"] == status
    assert reserved(api, "bob") == (0, 0)
    assert reserved(api, "alice") == (0, 0)


@pytest.mark.parametrize("member", ["alice", "bob"])
def test_member_with_a_pending_exchange_cannot_be_closed_until_it_is_settled(
    api: Api, community: dict, member: str
) -> None:
    proposal = proposed(api, "alice", "bob", 30)

    body = problem(
        api.patch(f"{C}/members/{member}", json={"status": "closed"}), 409, "invalid_state"
    )

    assert body["current_status"] == "active"
    assert api.get(f"{C}/members/{member}").json()["status"] == "active"
    assert get_exchange(api, proposal["id"])["status"] == "pending"
    settled(api, proposal["id"], "cancel")
    assert set_member(api, member, status="closed")["status"] == "closed"


def test_suspended_member_with_a_pending_exchange_cannot_be_closed(
    api: Api, community: dict
) -> None:
    proposed(api, "alice", "bob", 30)
    set_member(api, "bob", status="suspended")

    problem(api.patch(f"{C}/members/bob", json={"status": "closed"}), 409, "invalid_state")

    assert api.get(f"{C}/members/bob").json()["status"] == "suspended"
    assert reserved(api, "bob") == (30, 0)


def test_member_whose_only_proposal_expired_can_be_closed(
    api: Api, db: Database, community: dict
) -> None:
    proposal = proposed(api, "alice", "bob", 30)
    make_overdue(db, proposal["id"])

    assert set_member(api, "bob", status="closed")["status"] == "closed"
    assert get_exchange(api, proposal["id"])["status"] == "expired"
    assert reserved(api, "alice") == (0, 0)


# --- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["accept", "reject", "cancel"])
def test_settlement_retried_with_its_idempotency_key_gives_the_first_answer(
    api: Api, keys: dict[str, str], action: str
) -> None:
    app = api.as_(keys["app"])
    proposal = proposed(app, "alice", "bob", 30)
    key = {"Idempotency-Key": f"settle-{uuid.uuid4()}"}

    first = settle(app, proposal["id"], action, headers=key)
    again = settle(app, proposal["id"], action, headers=key)

    assert first.status_code == 200, first.text
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(all_exchanges(api)) == (1 if action == "accept" else 0)
    # Without the key, a second settlement is the illegal transition it is.
    problem(settle(app, proposal["id"], action), 409, "invalid_state")
    assert len(all_exchanges(api)) == (1 if action == "accept" else 0)


def test_refused_settlement_is_replayed_with_its_key(api: Api, keys: dict[str, str]) -> None:
    app = api.as_(keys["app"])
    proposal = proposed(app, "alice", "bob", 30)
    set_member(api, "bob", status="suspended")
    key = {"Idempotency-Key": "accept-while-suspended"}
    first = settle(app, proposal["id"], "accept", headers=key)
    set_member(api, "bob", status="active")

    again = settle(app, proposal["id"], "accept", headers=key)

    problem(first, 409, "member_inactive")
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert get_exchange(app, proposal["id"])["status"] == "pending"


def test_proposal_retried_with_its_idempotency_key_reserves_once(
    api: Api, keys: dict[str, str]
) -> None:
    app = api.as_(keys["app"])
    key = {"Idempotency-Key": "propose-once"}

    first = propose(app, "alice", "bob", 30, headers=key)
    again = propose(app, "alice", "bob", 30, headers=key)

    assert first.status_code == 201, first.text
    assert (again.status_code, again.content) == (201, first.content)
    assert len(proposals(app)) == 1
    assert reserved(api, "bob") == (30, 0)


def test_external_id_of_a_proposal_guards_against_posting_it_twice(
    api: Api, community: dict
) -> None:
    proposal = proposed(api, "alice", "bob", 30, external_id="order-1")

    duplicate = "duplicate_external_id"
    again = problem(propose(api, "alice", "bob", 30, external_id="order-1"), 409, duplicate)
    direct = problem(post(api, "alice", "bob", 30, external_id="order-1"), 409, duplicate)

    assert again["exchange_id"] == direct["exchange_id"] == proposal["id"]
    assert reserved(api, "bob") == (30, 0)


# --- lists and batches -------------------------------------------------------------------------


def test_proposals_are_listed_in_creation_order_page_by_page_and_by_member(
    api: Api, community: dict
) -> None:
    made = [
        proposed(api, p, r, n + 1)
        for n, (p, r) in enumerate(
            [
                ("alice", "bob"),
                ("bob", "carol"),
                ("carol", "alice"),
                ("alice", "carol"),
                ("bob", "alice"),
            ]
        )
    ]

    pages = walk_pages(api, EXCHANGES, 2, status="pending")

    assert pages == [
        [made[0]["id"], made[1]["id"]],
        [made[2]["id"], made[3]["id"]],
        [made[4]["id"]],
    ]
    carol = [x["id"] for x in proposals(api, member="carol")]
    assert carol == [made[1]["id"], made[2]["id"], made[3]["id"]]
    settled(api, made[1]["id"], "reject")
    assert [x["id"] for x in proposals(api, "rejected", member="carol")] == [made[1]["id"]]
    assert [x["id"] for x in proposals(api, member="carol")] == [made[2]["id"], made[3]["id"]]


def test_batch_of_proposals_is_checked_against_the_reservations_it_makes(
    api: Api, community: dict
) -> None:
    items = [
        exchange("alice", "bob", 60, pending=True),
        exchange("carol", "bob", 30),
        exchange("carol", "bob", 20, pending=True),
    ]

    body = problem(api.post(f"{EXCHANGES}:batch", json={"exchanges": items}), 409, "limit_exceeded")

    assert body["index"] == 2  # 60 reserved + 30 spent + 20 more is past bob's -100
    assert proposals(api) == []
    assert reserved(api, "bob") == (0, 0)
    assert all_exchanges(api) == []

    recorded = api.post(f"{EXCHANGES}:batch", json={"exchanges": items[:2]})
    assert recorded.status_code == 201, recorded.text
    assert [x["status"] for x in recorded.json()["exchanges"]] == ["pending", "completed"]
    assert reserved(api, "bob") == (60, 0)
    assert balance(api, "bob")["available_to_spend"] == 10


def test_limit_change_must_leave_room_for_what_is_reserved(api: Api, community: dict) -> None:
    proposed(api, "alice", "bob", 60)

    body = problem(
        api.patch(f"{C}/members/bob", json={"lower_limit": -59}), 409, "limit_below_balance"
    )

    assert body["member"] == "bob"
    assert "(open proposals reserve -60, +0)" in body["detail"], body
    assert balance(api, "bob")["lower_limit"] == -100
    assert set_member(api, "bob", lower_limit=-60)["lower_limit"] == -60
    assert balance(api, "bob")["available_to_spend"] == 0
    problem(api.patch(f"{C}/members/alice", json={"upper_limit": 59}), 409, "limit_below_balance")
    assert set_member(api, "alice", upper_limit=60)["upper_limit"] == 60


def test_proposal_between_unknown_or_identical_members_is_refused(
    api: Api, keys: dict[str, str]
) -> None:
    app = api.as_(keys["app"])

    problem(propose(app, "alice", "alice", 5), 422, "same_member")
    problem(propose(app, "alice", "nobody", 5), 404, "not_found")
    problem(propose(app, "@commons", "alice", 5), 403, "forbidden")

    assert proposals(api) == []
    assert reserved(api, "alice") == (0, 0)
