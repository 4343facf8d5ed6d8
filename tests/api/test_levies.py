"""Levies into the community fund: a third entry to @commons on member-to-member exchanges.

Rounding, as the policy states it: the levy is `amount * rate_ppm / 1,000,000` rounded half up to
a whole minor unit, at least `minimum`, at most the amount. A levy of 0 posts no third entry."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Api
from tests.support.checks import validation_problem
from tests.support.ledger import (
    BATCH,
    GENESIS,
    C,
    all_exchanges,
    audit,
    balance,
    balances,
    exchange,
    post,
    posted,
    problem,
    recompute_hash,
    reverse,
    set_member,
)
from tests.support.workflows import (
    all_events,
    proposed,
    reserved,
    set_levy,
    settled,
)

FIVE_PERCENT = 50_000


def levied(api: Api, rate_ppm: int = FIVE_PERCENT, minimum: int = 0, paid_by: str = "provider"):
    response = set_levy(api, {"rate_ppm": rate_ppm, "minimum": minimum, "paid_by": paid_by})
    assert response.status_code == 200, response.text
    return response.json()["policy"]["levy"]


def entries(document: dict[str, Any]) -> dict[str, int]:
    return {e["account"]: e["amount"] for e in document["entries"]}


@pytest.fixture
def roomy(api: Api, community: dict) -> None:
    """alice, bob and carol may each go down to -10,000."""
    for member in ("alice", "bob", "carol"):
        set_member(api, member, lower_limit=-10_000)


# --- the policy --------------------------------------------------------------------------------


def test_treasurer_sets_and_removes_the_levy(api: Api, keys: dict[str, str]) -> None:
    treasurer = api.as_(keys["treasurer"])
    levy = {"rate_ppm": 50_000, "minimum": 2, "paid_by": "receiver"}

    response = set_levy(treasurer, levy)

    assert response.status_code == 200, response.text
    assert response.json()["policy"]["levy"] == levy
    assert api.get(C).json()["policy"]["levy"] == levy
    assert posted(api, "alice", "bob", 10)["levy"] == {"amount": 2, "paid_by": "receiver"}

    removed = set_levy(treasurer, None)

    assert removed.status_code == 200, removed.text
    assert removed.json()["policy"]["levy"] is None
    later = posted(api, "alice", "bob", 10)
    assert later["levy"] is None
    assert entries(later) == {"bob": -10, "alice": 10}
    updates = [
        e["data"]["policy"]["levy"] for e in all_events(api) if e["type"] == "community.updated"
    ]
    assert updates == [levy, None]


def test_levy_defaults_to_no_minimum_paid_by_the_provider(api: Api, community: dict) -> None:
    response = set_levy(api, {"rate_ppm": 10_000})

    assert response.json()["policy"]["levy"] == {
        "rate_ppm": 10_000,
        "minimum": 0,
        "paid_by": "provider",
    }


def test_other_policy_changes_keep_the_levy(api: Api, community: dict) -> None:
    levy = levied(api)

    response = api.patch(C, json={"policy": {"reciprocity_threshold": 0.6}, "name": "River"})

    assert response.status_code == 200, response.text
    assert response.json()["policy"]["levy"] == levy


def test_app_and_auditor_may_not_change_the_levy(api: Api, keys: dict[str, str]) -> None:
    for role in ("app", "auditor"):
        problem(set_levy(api.as_(keys[role]), {"rate_ppm": 50_000}), 403, "forbidden")

    assert api.get(C).json()["policy"]["levy"] is None


def test_invalid_levies_are_refused_and_change_nothing(api: Api, community: dict) -> None:
    levy = levied(api, 20_000, 1, "receiver")

    for invalid in (
        {"rate_ppm": -1},
        {"rate_ppm": 1_000_001},
        {"rate_ppm": "50000"},
        {"rate_ppm": 50_000.0},
        {"rate_ppm": True},
        {"minimum": 0},
        {"rate_ppm": 50_000, "minimum": -1},
        {"rate_ppm": 50_000, "minimum": 1.5},
        {"rate_ppm": 50_000, "paid_by": "commons"},
        {"rate_ppm": 50_000, "paid_by": None},
        {"rate_ppm": 50_000, "surprise": 1},
        [50_000],
        "5%",
    ):
        validation_problem(set_levy(api, invalid))  # type: ignore[arg-type]

    assert api.get(C).json()["policy"]["levy"] == levy


# --- completed exchanges -----------------------------------------------------------------------


def test_levy_paid_by_the_provider_comes_out_of_what_the_provider_gets(
    api: Api, roomy: None
) -> None:
    levied(api, FIVE_PERCENT, paid_by="provider")

    recorded = posted(api, "alice", "bob", 1000)

    assert recorded["amount"] == 1000
    assert recorded["levy"] == {"amount": 50, "paid_by": "provider"}
    assert entries(recorded) == {"bob": -1000, "alice": 950, "@commons": 50}
    assert sum(entries(recorded).values()) == 0
    assert balances(api) == {"@commons": 50, "alice": 950, "bob": -1000, "carol": 0}
    assert audit(api)["ok"] is True


def test_levy_paid_by_the_receiver_is_added_to_what_the_receiver_pays(
    api: Api, roomy: None
) -> None:
    levied(api, FIVE_PERCENT, paid_by="receiver")

    recorded = posted(api, "alice", "bob", 1000)

    assert recorded["levy"] == {"amount": 50, "paid_by": "receiver"}
    assert entries(recorded) == {"bob": -1050, "alice": 1000, "@commons": 50}
    assert balances(api) == {"@commons": 50, "alice": 1000, "bob": -1050, "carol": 0}
    assert audit(api)["ok"] is True


# (amount, rate_ppm, minimum, the levy)
ROUNDING = [
    (10, 50_000, 0, 1),  # 0.5 rounds up to 1
    (9, 50_000, 0, 0),  # 0.45 rounds down to 0: no levy at all
    (30, 50_000, 0, 2),  # 1.5 -> 2
    (29, 50_000, 0, 1),  # 1.45 -> 1
    (1000, 50_000, 0, 50),  # exact
    (1, 500_000, 0, 1),  # 0.5 -> 1
    (3, 500_000, 0, 2),  # 1.5 -> 2 (half up, not half to even)
    (5, 500_000, 0, 3),  # 2.5 -> 3 (half up, not half to even)
    (9, 50_000, 2, 2),  # minimum
    (100, 50_000, 2, 5),  # above the minimum: the rate
    (1, 50_000, 2, 1),  # the minimum is capped at the amount
    (7, 1_000_000, 0, 7),  # 100 %
    (7, 0, 0, 0),  # 0 %: no levy
    (7, 0, 3, 3),  # 0 % with a minimum
]


@pytest.mark.parametrize("paid_by", ["provider", "receiver"])
def test_levy_is_rounded_half_up_at_least_the_minimum_and_at_most_the_amount(
    api: Api, roomy: None, paid_by: str
) -> None:
    for amount, rate_ppm, minimum, levy in ROUNDING:
        levied(api, rate_ppm, minimum, paid_by)
        before = balances(api)

        recorded = posted(api, "alice", "bob", amount)

        case = (amount, rate_ppm, minimum, paid_by)
        if levy == 0:
            assert recorded["levy"] is None, case
            assert entries(recorded) == {"bob": -amount, "alice": amount}, case
            continue
        assert recorded["levy"] == {"amount": levy, "paid_by": paid_by}, case
        expected = (
            {"bob": -amount, "alice": amount - levy, "@commons": levy}
            if paid_by == "provider"
            else {"bob": -(amount + levy), "alice": amount, "@commons": levy}
        )
        # A zero entry (the provider keeping nothing of a 100 % levy) is not posted.
        assert entries(recorded) == {k: v for k, v in expected.items() if v}, case
        after = balances(api)
        assert {k: after[k] - before[k] for k in after} == {
            "alice": expected["alice"],
            "bob": expected["bob"],
            "@commons": levy,
            "carol": 0,
        }, case
    assert audit(api)["ok"] is True


def test_no_levy_when_a_party_is_a_system_account(api: Api, keys: dict[str, str]) -> None:
    treasurer = api.as_(keys["treasurer"])
    levied(api, FIVE_PERCENT, minimum=1)

    # The fund gives alice something (she owes it 20), then pays bob 20 for a service.
    to_alice = posted(treasurer, "@commons", "alice", 20, description="tools lent to alice")
    from_bob = posted(treasurer, "bob", "@commons", 20, description="bob fixed the roof")

    assert to_alice["levy"] is None
    assert from_bob["levy"] is None
    assert entries(to_alice) == {"alice": -20, "@commons": 20}
    assert entries(from_bob) == {"bob": 20, "@commons": -20}
    assert balances(api) == {"@commons": 0, "alice": -20, "bob": 20, "carol": 0}


def test_levy_counts_against_the_payers_limit(api: Api, community: dict) -> None:
    levied(api, FIVE_PERCENT, paid_by="receiver")

    # 96 + a levy of 5 (4.8 rounded) would take bob to -101, below his lower limit of -100.
    body = problem(post(api, "alice", "bob", 96), 409, "limit_exceeded")

    assert body["member"] == "bob"
    assert all_exchanges(api) == []
    recorded = posted(api, "alice", "bob", 95)  # 95 + 5 = 100: exactly at the limit
    assert entries(recorded) == {"bob": -100, "alice": 95, "@commons": 5}


def test_levy_entry_is_covered_by_the_hash_chain(api: Api, roomy: None) -> None:
    posted(api, "carol", "alice", 3)
    levied(api, FIVE_PERCENT, paid_by="provider")
    posted(api, "alice", "bob", 1000)
    levied(api, 20_000, paid_by="receiver")
    api.post(
        BATCH, json={"exchanges": [exchange("bob", "carol", 500), exchange("carol", "alice", 7)]}
    )

    documents = all_exchanges(api)

    prev_hash = GENESIS
    for document in documents:
        assert document["prev_hash"] == prev_hash
        assert recompute_hash(prev_hash, document) == document["hash"], document["seq"]
        prev_hash = document["hash"]
    levied_one = documents[1]
    assert "@commons" in entries(levied_one)
    # Without its levy entry (or with another levy amount) the exchange hashes differently.
    tampered = {
        **levied_one,
        "entries": [e for e in levied_one["entries"] if e["account"] != "@commons"],
    }
    assert recompute_hash(documents[0]["hash"], tampered) != levied_one["hash"]
    assert audit(api)["ok"] is True


def test_batch_levies_every_item_on_the_running_balances(api: Api, roomy: None) -> None:
    levied(api, FIVE_PERCENT)

    response = api.post(
        BATCH, json={"exchanges": [exchange("alice", "bob", 100), exchange("alice", "carol", 40)]}
    )

    assert response.status_code == 201, response.text
    first, second = response.json()["exchanges"]
    assert {e["account"]: e["balance_after"] for e in first["entries"]} == {
        "bob": -100,
        "alice": 95,
        "@commons": 5,
    }
    assert {e["account"]: e["balance_after"] for e in second["entries"]} == {
        "carol": -40,
        "alice": 133,
        "@commons": 7,
    }


# --- reversals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("paid_by", ["provider", "receiver"])
def test_reversal_of_a_levied_exchange_reverses_all_three_entries(
    api: Api, keys: dict[str, str], roomy: None, paid_by: str
) -> None:
    levied(api, FIVE_PERCENT, paid_by=paid_by)
    original = posted(api, "alice", "bob", 1000)

    response = reverse(api.as_(keys["treasurer"]), original["id"])

    assert response.status_code == 201, response.text
    reversal = response.json()
    assert reversal["reverses"] == original["id"]
    assert entries(reversal) == {account: -amount for account, amount in entries(original).items()}
    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}
    assert audit(api)["ok"] is True


def test_reversal_that_would_overdraw_the_fund_is_refused(
    api: Api, keys: dict[str, str], roomy: None
) -> None:
    treasurer = api.as_(keys["treasurer"])
    levied(api, FIVE_PERCENT)
    original = posted(api, "alice", "bob", 1000)
    posted(treasurer, "carol", "@commons", 30, description="the fund pays carol")

    # Taking back the levy of 50 would leave the fund at -30, below its lower limit of 0.
    body = problem(reverse(treasurer, original["id"]), 409, "limit_exceeded")

    assert body["member"] == "@commons"
    assert balances(api) == {"@commons": 20, "alice": 950, "bob": -1000, "carol": 30}


# --- proposals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paid_by", "bob_reserves", "alice_reserves"),
    [("provider", 1000, 950), ("receiver", 1050, 1000)],
)
def test_levied_proposal_reserves_what_its_entries_will_take_and_completes_with_its_levy(
    api: Api, roomy: None, paid_by: str, bob_reserves: int, alice_reserves: int
) -> None:
    levied(api, FIVE_PERCENT, paid_by=paid_by)

    proposal = proposed(api, "alice", "bob", 1000)

    assert proposal["levy"] == {"amount": 50, "paid_by": paid_by}
    assert reserved(api, "bob") == (bob_reserves, 0)
    assert reserved(api, "alice") == (0, alice_reserves)
    assert reserved(api, "@commons") == (0, 50)
    assert balance(api, "bob")["available_to_spend"] == 10_000 - bob_reserves
    # The levy is fixed when proposed: a later policy change does not alter it.
    set_levy(api, None)

    accepted = settled(api, proposal["id"], "accept")

    assert accepted["levy"] == {"amount": 50, "paid_by": paid_by}
    assert entries(accepted) == {"bob": -bob_reserves, "alice": alice_reserves, "@commons": 50}
    for account in ("alice", "bob", "@commons"):
        assert reserved(api, account) == (0, 0)
    assert audit(api)["ok"] is True


@pytest.mark.parametrize("action", ["reject", "cancel"])
def test_releasing_a_levied_proposal_releases_the_funds_reservation_too(
    api: Api, roomy: None, action: str
) -> None:
    levied(api, FIVE_PERCENT, paid_by="receiver")
    proposal = proposed(api, "alice", "bob", 1000)

    settled(api, proposal["id"], action)

    for account in ("alice", "bob", "@commons"):
        assert reserved(api, account) == (0, 0)
    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}


def test_levied_proposal_that_does_not_fit_with_its_levy_is_refused(
    api: Api, community: dict
) -> None:
    levied(api, FIVE_PERCENT, paid_by="receiver")

    body = problem(
        api.post(f"{C}/exchanges", json=exchange("alice", "bob", 96, pending=True)),
        409,
        "limit_exceeded",
    )

    assert body["member"] == "bob"
    assert reserved(api, "bob") == (0, 0)
    assert reserved(api, "@commons") == (0, 0)


@pytest.mark.parametrize(("rate_ppm", "minimum"), [(1_000_000, 0), (50_000, 10)])
def test_proposal_whose_levy_takes_the_whole_amount_is_accepted(
    api: Api, community: dict, rate_ppm: int, minimum: int
) -> None:
    levied(api, rate_ppm, minimum, paid_by="provider")
    proposal = proposed(api, "alice", "bob", 5)
    assert reserved(api, "alice") == (0, 0)  # the provider keeps nothing, so reserves nothing

    accepted = settled(api, proposal["id"], "accept")

    assert accepted["levy"] == {"amount": 5, "paid_by": "provider"}
    assert entries(accepted) == {"bob": -5, "@commons": 5}
    assert balances(api) == {"@commons": 5, "alice": 0, "bob": -5, "carol": 0}
    assert reserved(api, "bob") == (0, 0)
    assert reserved(api, "@commons") == (0, 0)
    assert audit(api)["ok"] is True


def test_proposal_whose_levy_takes_the_whole_amount_waits_for_a_suspended_provider(
    api: Api, community: dict
) -> None:
    levied(api, 1_000_000, paid_by="provider")
    proposal = proposed(api, "alice", "bob", 5)
    set_member(api, "alice", status="suspended")

    problem(api.post(f"{C}/exchanges/{proposal['id']}/accept"), 409, "member_inactive")

    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}
    assert reserved(api, "bob") == (5, 0)


def test_reversal_of_an_exchange_whose_levy_took_the_whole_amount(
    api: Api, keys: dict[str, str]
) -> None:
    levied(api, 1_000_000, paid_by="provider")
    original = posted(api, "alice", "bob", 5)
    assert entries(original) == {"bob": -5, "@commons": 5}

    response = reverse(api.as_(keys["treasurer"]), original["id"])

    assert response.status_code == 201, response.text
    assert entries(response.json()) == {"bob": 5, "@commons": -5}
    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}
    assert audit(api)["ok"] is True
