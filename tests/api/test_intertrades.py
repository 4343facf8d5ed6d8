"""Networks of communities: links with a rate and balance-of-trade caps, and intertrades that
record one exchange in each community in one transaction (SQLite and PostgreSQL).

Riverside Timebank counts hours at scale 2 (100 = one hour); Hillside food cooperative counts
cents (scale 2 of a currency-like unit). The link says an hour is worth 20.00: `rate {a: 100,
b: 2000}` with a = riverside.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from protocoop.auth.roles import Role
from protocoop.db import Database
from tests.support.api import Api, create_community, create_member, every_item, make_key
from tests.support.checks import problem
from tests.support.databases import tampering

R, H, T = "riverside", "hillside", "thirdtown"
LINKS = "/v1/links"


def intertrades(community: str) -> str:
    return f"/v1/communities/{community}/intertrades"


def balance(api: Api, community: str, account: str) -> int:
    response = api.get(f"/v1/communities/{community}/members/{account}/balance")
    assert response.status_code == 200, response.text
    return int(response.json()["balance"])


def ledger(api: Api, community: str) -> list[dict[str, Any]]:
    return every_item(api.get, f"/v1/communities/{community}/exchanges")


def audit_ok(api: Api, community: str) -> dict[str, Any]:
    report = api.get(f"/v1/communities/{community}/audit").json()
    assert report["ok"], report["problems"]
    return dict(report)


@pytest.fixture
def network(api: Api, db: Database) -> dict[str, Any]:
    """Riverside (hours, scale 2) and Hillside (cents) linked at an hour = 20.00, caps 10 hours
    and 300.00; Thirdtown unlinked. Keys of every role for each."""
    create_community(
        api, R, unit={"code": "HOUR", "name": "hour", "scale": 2}, default_lower_limit=-5_000
    )
    create_community(
        api, H, unit={"code": "HFC", "name": "food credit", "scale": 2}, default_lower_limit=-50_000
    )
    create_community(api, T)
    for community, members in ((R, ("alice", "bob")), (H, ("hana", "hugo")), (T, ("tom",))):
        for member in members:
            create_member(api, community, member)
    response = api.post(
        LINKS, json={"a": R, "b": H, "rate": {"a": 100, "b": 2000}, "a_cap": 1_000, "b_cap": 30_000}
    )
    assert response.status_code == 201, response.text
    keys = {
        (community, role): make_key(db, role, community)
        for community in (R, H, T)
        for role in (Role.APP, Role.TREASURER, Role.AUDITOR)
    }
    return {"link": response.json(), "keys": keys}


def as_(api: Api, network: dict[str, Any], community: str, role: Role) -> Api:
    return api.as_(network["keys"][(community, role)])


def trade(
    api: Api,
    network: dict[str, Any],
    provider: str,
    receiver_community: str,
    receiver: str,
    amount: int,
    amount_in: str = "receiver",
    **extra: Any,
) -> Any:
    app = as_(api, network, receiver_community, Role.APP)
    body = {
        "provider": provider,
        "receiver": receiver,
        "amount": amount,
        "amount_in": amount_in,
        "description": "an hour of bread baking",
    }
    return app.post(intertrades(receiver_community), json=body, **extra)


def test_a_link_gives_each_community_a_clearing_account_capped_at_its_cap(
    api: Api, network: dict[str, Any]
) -> None:
    link = network["link"]
    assert link["rate"] == {"a": 100, "b": 2000}
    assert link["status"] == "active"
    assert link["sides"] == [
        {"community": R, "account": f"@link:{H}", "balance": 0, "cap": 1_000},
        {"community": H, "account": f"@link:{R}", "balance": 0, "cap": 30_000},
    ]
    clearing = api.get(f"/v1/communities/{R}/members/@link:{H}/balance").json()
    assert clearing["balance"] == 0
    assert clearing["lower_limit"] == -1_000


def test_an_intertrade_records_one_exchange_in_each_community_with_the_converted_amount(
    api: Api, network: dict[str, Any]
) -> None:
    # hana (Hillside) receives 1.5 hours from alice (Riverside), stated in Riverside's hours.
    response = trade(api, network, f"{R}/alice", H, "hana", 150, amount_in="provider")
    assert response.status_code == 201, response.text
    done = response.json()
    assert done["provider"]["community"] == R
    assert (done["provider"]["amount"], done["receiver"]["amount"]) == (150, 3_000)
    assert done["rate"] == {"a": 100, "b": 2000}

    assert balance(api, R, "alice") == 150
    assert balance(api, R, f"@link:{H}") == -150
    assert balance(api, H, "hana") == -3_000
    assert balance(api, H, f"@link:{R}") == 3_000
    [riverside_side] = ledger(api, R)
    [hillside_side] = ledger(api, H)
    assert riverside_side["intertrade_id"] == hillside_side["intertrade_id"] == done["id"]
    assert riverside_side["id"] == done["provider"]["exchange_id"]
    assert (riverside_side["seq"], hillside_side["seq"]) == (1, 1)
    for community in (R, H):
        events = api.get(f"/v1/communities/{community}/events").json()["items"]
        completed = [e for e in events if e["type"] == "exchange.completed"]
        assert [e["data"]["intertrade_id"] for e in completed] == [done["id"]]
        assert audit_ok(api, community)["checked_exchanges"] == 1


@pytest.mark.parametrize(
    ("amount", "amount_in", "expected"),
    [
        # riverside -> hillside: x hours * 2000/100 exactly
        (1, "provider", (1, 20)),
        # hillside cents -> riverside hours: 30 cents = 1.5 hundredths -> 2 (half to even)
        (30, "receiver", (2, 30)),
        # 10 cents = 0.5 hundredths -> 0 is refused (below)
        (50, "receiver", (2, 50)),  # 2.5 -> 2 (half to even)
        (70, "receiver", (4, 70)),  # 3.5 -> 4 (half to even)
        (69, "receiver", (3, 69)),  # 3.45 -> 3
    ],
)
def test_the_converted_side_rounds_half_to_even_in_minor_units(
    api: Api, network: dict[str, Any], amount: int, amount_in: str, expected: tuple[int, int]
) -> None:
    response = trade(api, network, f"{R}/alice", H, "hana", amount, amount_in=amount_in)
    assert response.status_code == 201, response.text
    done = response.json()
    assert (done["provider"]["amount"], done["receiver"]["amount"]) == expected


def test_an_amount_that_converts_to_nothing_is_refused_and_records_nothing(
    api: Api, network: dict[str, Any]
) -> None:
    problem(trade(api, network, f"{R}/alice", H, "hana", 10), 422, "validation_error")
    assert ledger(api, R) == []
    assert ledger(api, H) == []


def test_the_other_direction_converts_the_other_way(api: Api, network: dict[str, Any]) -> None:
    response = trade(api, network, f"{H}/hugo", R, "bob", 25, amount_in="receiver")
    assert response.status_code == 201, response.text
    done = response.json()
    assert (done["provider"]["amount"], done["receiver"]["amount"]) == (500, 25)
    assert balance(api, H, "hugo") == 500
    assert balance(api, H, f"@link:{R}") == -500
    assert balance(api, R, "bob") == -25
    assert balance(api, R, f"@link:{H}") == 25


def test_the_providers_cap_stops_the_trade_and_neither_side_records_it(
    api: Api, network: dict[str, Any]
) -> None:
    assert trade(api, network, f"{R}/alice", H, "hana", 900, "provider").status_code == 201
    refused = problem(
        trade(api, network, f"{R}/alice", H, "hugo", 101, "provider"), 409, "limit_exceeded"
    )
    assert (refused["member"], refused["limit"], refused["limit_value"]) == (
        f"@link:{H}",
        "lower",
        -1_000,
    )
    assert len(ledger(api, R)) == len(ledger(api, H)) == 1
    assert balance(api, H, "hugo") == 0
    # The cap is on the balance of trade: trade the other way and room opens up again.
    assert trade(api, network, f"{H}/hugo", R, "bob", 100, "receiver").status_code == 201
    assert trade(api, network, f"{R}/alice", H, "hugo", 101, "provider").status_code == 201


def test_the_receivers_limit_and_the_receiving_sides_cap_apply_too(
    api: Api, network: dict[str, Any]
) -> None:
    # hana's own lower limit is -500.00 (Hillside's default); with room on the link, the
    # refusal names her.
    link_id = network["link"]["id"]
    assert api.patch(f"{LINKS}/{link_id}", json={"a_cap": 1_000_000}).status_code == 200
    refused = problem(trade(api, network, f"{R}/alice", H, "hana", 50_001), 409, "limit_exceeded")
    assert (refused["member"], refused["limit_value"]) == ("hana", -50_000), refused
    # Hillside's clearing account may go down to -300.00: Hillside's exports to Riverside.
    refused = problem(
        trade(api, network, f"{H}/hugo", R, "bob", 30_001, "provider"), 409, "limit_exceeded"
    )
    assert refused["member"] == f"@link:{R}", refused
    assert ledger(api, R) == []
    assert ledger(api, H) == []
    for community in (R, H):
        audit_ok(api, community)


def test_a_retry_with_the_same_key_replays_the_answer_and_records_once(
    api: Api, network: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": "bread-1"}
    first = trade(api, network, f"{R}/alice", H, "hana", 2_000, headers=headers)
    again = trade(api, network, f"{R}/alice", H, "hana", 2_000, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(ledger(api, R)) == len(ledger(api, H)) == 1
    other = trade(api, network, f"{R}/alice", H, "hana", 2_001, headers=headers)
    problem(other, 422, "idempotency_key_reused")


def test_only_the_receivers_community_posts_and_others_see_nothing(
    api: Api, network: dict[str, Any]
) -> None:
    body = {"provider": f"{R}/alice", "receiver": "hana", "amount": 100, "description": "x"}
    # A key of the provider's community, or of a third, gets the 404 of a community it cannot see.
    for community in (R, T):
        problem(
            as_(api, network, community, Role.APP).post(intertrades(H), json=body), 404, "not_found"
        )
    # From its own community, a third one cannot trade over a link it is not part of.
    third = {"provider": f"{R}/alice", "receiver": "tom", "amount": 100, "description": "x"}
    problem(as_(api, network, T, Role.APP).post(intertrades(T), json=third), 404, "not_found")
    link_id = network["link"]["id"]
    for role in (Role.TREASURER, Role.AUDITOR):
        assert as_(api, network, T, role).get(LINKS).json()["items"] == []
        problem(as_(api, network, T, role).get(f"{LINKS}/{link_id}"), 404, "not_found")
        mine = as_(api, network, H, role).get(LINKS).json()["items"]
        assert [link["id"] for link in mine] == [link_id]
    problem(as_(api, network, H, Role.APP).get(LINKS), 403, "forbidden")
    problem(
        as_(api, network, H, Role.TREASURER).patch(f"{LINKS}/{link_id}", json={"a_cap": 1}),
        403,
        "forbidden",
    )


def test_a_clearing_account_moves_only_through_intertrades(
    api: Api, network: dict[str, Any]
) -> None:
    treasurer = as_(api, network, R, Role.TREASURER)
    body = {"provider": "alice", "receiver": f"@link:{H}", "amount": 5, "description": "sneaky"}
    problem(treasurer.post(f"/v1/communities/{R}/exchanges", json=body), 403, "forbidden")
    assert ledger(api, R) == []


def test_a_reversal_undoes_both_sides_together_and_once(api: Api, network: dict[str, Any]) -> None:
    done = trade(api, network, f"{R}/alice", H, "hana", 3_000).json()
    # One side alone cannot be reversed: the mirror would break.
    treasurer = as_(api, network, R, Role.TREASURER)
    side = done["provider"]["exchange_id"]
    alone = treasurer.post(f"/v1/communities/{R}/exchanges/{side}/reverse", json={"reason": "x"})
    problem(alone, 409, "invalid_state")

    path = f"{intertrades(H)}/{done['id']}/reverse"
    reversal = as_(api, network, H, Role.TREASURER).post(path, json={"reason": "never happened"})
    assert reversal.status_code == 201, reversal.text
    assert reversal.json()["reverses"] == done["id"]
    for community, accounts in ((R, ("alice", f"@link:{H}")), (H, ("hana", f"@link:{R}"))):
        assert [balance(api, community, account) for account in accounts] == [0, 0]
        exchanges = ledger(api, community)
        assert len(exchanges) == 2
        assert exchanges[1]["intertrade_id"] == reversal.json()["id"]
        audit_ok(api, community)
    problem(
        as_(api, network, R, Role.TREASURER).post(path, json={"reason": "again"}), 404, "not_found"
    )
    again = f"{intertrades(R)}/{done['id']}/reverse"
    problem(
        as_(api, network, R, Role.TREASURER).post(again, json={"reason": "again"}),
        409,
        "invalid_state",
    )


def test_a_new_rate_applies_to_new_intertrades_only(api: Api, network: dict[str, Any]) -> None:
    first = trade(api, network, f"{R}/alice", H, "hana", 100, "provider").json()
    link_id = network["link"]["id"]
    changed = api.patch(f"{LINKS}/{link_id}", json={"rate": {"a": 100, "b": 2500}})
    assert changed.status_code == 200, changed.text
    second = trade(api, network, f"{R}/alice", H, "hana", 100, "provider").json()
    assert first["receiver"]["amount"] == 2_000
    assert first["rate"] == {"a": 100, "b": 2000}
    assert second["receiver"]["amount"] == 2_500
    assert second["rate"] == {"a": 100, "b": 2500}
    got = api.get(f"{intertrades(R)}/{first['id']}").json()
    assert got["rate"] == {"a": 100, "b": 2000}


def test_caps_cannot_go_below_what_is_already_owed(api: Api, network: dict[str, Any]) -> None:
    trade(api, network, f"{R}/alice", H, "hana", 500, "provider")
    link_id = network["link"]["id"]
    problem(api.patch(f"{LINKS}/{link_id}", json={"a_cap": 499}), 409, "limit_below_balance")
    assert api.patch(f"{LINKS}/{link_id}", json={"a_cap": 500}).status_code == 200
    problem(trade(api, network, f"{R}/alice", H, "hana", 1, "provider"), 409, "limit_exceeded")


def test_a_suspended_link_records_nothing_new_and_keeps_its_history(
    api: Api, network: dict[str, Any]
) -> None:
    trade(api, network, f"{R}/alice", H, "hana", 100, "provider")
    link_id = network["link"]["id"]
    assert api.patch(f"{LINKS}/{link_id}", json={"status": "suspended"}).json()["status"] == (
        "suspended"
    )
    problem(trade(api, network, f"{R}/alice", H, "hana", 100, "provider"), 409, "invalid_state")
    assert len(ledger(api, R)) == 1
    assert api.patch(f"{LINKS}/{link_id}", json={"status": "active"}).status_code == 200
    assert trade(api, network, f"{R}/alice", H, "hana", 100, "provider").status_code == 201


def test_a_link_is_deleted_only_when_both_clearing_accounts_are_at_zero(
    api: Api, network: dict[str, Any]
) -> None:
    link_id = network["link"]["id"]
    done = trade(api, network, f"{R}/alice", H, "hana", 100, "provider").json()
    problem(api.delete(f"{LINKS}/{link_id}"), 409, "balance_not_zero")
    reverse = as_(api, network, R, Role.TREASURER).post(
        f"{intertrades(R)}/{done['id']}/reverse", json={"reason": "undo"}
    )
    assert reverse.status_code == 201, reverse.text
    assert api.delete(f"{LINKS}/{link_id}").status_code == 204
    closed = api.get(f"{LINKS}/{link_id}").json()
    assert closed["status"] == "closed"  # it carried intertrades: its history stays
    problem(trade(api, network, f"{R}/alice", H, "hana", 100, "provider"), 404, "not_found")

    unused = api.post(
        LINKS, json={"a": H, "b": T, "rate": {"a": 1, "b": 1}, "a_cap": 0, "b_cap": 0}
    ).json()
    assert api.delete(f"{LINKS}/{unused['id']}").status_code == 204
    problem(api.get(f"{LINKS}/{unused['id']}"), 404, "not_found")
    problem(api.get(f"/v1/communities/{H}/members/@link:{T}/balance"), 404, "not_found")


def test_a_pair_is_linked_once_whichever_way_it_is_named(api: Api, network: dict[str, Any]) -> None:
    again = {"a": H, "b": R, "rate": {"a": 1, "b": 1}, "a_cap": 0, "b_cap": 0}
    problem(api.post(LINKS, json=again), 409, "already_exists")
    itself = {"a": R, "b": R, "rate": {"a": 1, "b": 1}, "a_cap": 0, "b_cap": 0}
    problem(api.post(LINKS, json=itself), 422, "validation_error")
    nowhere = {"a": R, "b": "nowhere", "rate": {"a": 1, "b": 1}, "a_cap": 0, "b_cap": 0}
    problem(api.post(LINKS, json=nowhere), 404, "not_found")


def test_the_audit_catches_an_intertrade_whose_sides_no_longer_mirror(
    api: Api, network: dict[str, Any], db: Database
) -> None:
    done = trade(api, network, f"{R}/alice", H, "hana", 2_000).json()
    for community in (R, H):
        audit_ok(api, community)
    with tampering(db) as connection:
        connection.execute(
            text("UPDATE intertrades SET receiver_amount = receiver_amount + 1 WHERE id = :id"),
            {"id": done["id"]},
        )
    report = api.get(f"/v1/communities/{H}/audit").json()
    assert not report["ok"]
    codes = {p["code"] for p in report["problems"] if p["invariant"] == 8}
    # (hana's 20.01 still converts to Riverside's 1.00 hour: the rate check holds)
    assert codes == {"clearing_mismatch", "intertrade_side_mismatch"}
    assert api.get(f"/v1/communities/{R}/audit").json()["ok"]  # Riverside's side still holds


def test_the_mutuality_report_shows_each_link_and_warns_near_its_cap(
    api: Api, network: dict[str, Any]
) -> None:
    assert trade(api, network, f"{R}/alice", H, "hana", 950, "provider").status_code == 201
    assert trade(api, network, f"{H}/hugo", R, "bob", 50, "receiver").status_code == 201
    report = api.get(f"/v1/communities/{R}/mutuality").json()
    assert report["holds"], report
    assert report["links"] == [
        {
            "other": H,
            "balance": -900,
            "cap": 1_000,
            "exports": 950,
            "imports": 50,
            "near_cap": True,
        }
    ]
    assert [w["code"] for w in report["warnings"]].count("near_link_cap") == 1
    hillside = api.get(f"/v1/communities/{H}/mutuality").json()
    assert hillside["links"][0]["balance"] == 18_000  # 900 hundredths of an hour at 20.00
    assert not hillside["links"][0]["near_cap"]
    # Members count intertrades like any exchange.
    alice = api.get(f"/v1/communities/{R}/members/alice/mutuality").json()
    assert (alice["given"], alice["exchanges"]) == (950, 1)
