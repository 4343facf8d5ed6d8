"""Does mutuality hold? The report through the API, on SQLite and PostgreSQL (Issue 4's "Done
when"): a perfectly reciprocal community, a one-way one, members near each limit, a dormant member
with a balance, reversals left out, windows, one member's partners, policy changes, who may read
the report, and a row tampered with in SQL.

Dormancy: exchanges cannot be backdated through the API, so the test records them as if it were
200 days ago by moving the server's clock (`protocoop.clock.use_clock`)
back while they are posted. The ledger stays whole and consistent (created_at, the hash chain,
`accounts.last_exchange_at`), exactly as if they had been posted then; later exchanges are posted
at the real time. (The clock only moves back for the first exchanges: posting never lets time run
backwards in a ledger.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from protocoop.auth.roles import Role
from protocoop.clock import ManualClock, rfc3339, use_clock
from protocoop.db import Database
from protocoop.mutuality import figures as figures_module
from protocoop.mutuality.service import community_mutuality, community_mutuality_summary
from tests.support.api import Api, create_community, create_member, make_key
from tests.support.databases import tampering
from tests.support.ledger import (
    BATCH,
    C,
    audit,
    balances,
    exchange,
    posted,
    problem,
    reverse,
    set_member,
)

MUTUALITY = f"{C}/mutuality"


def report(api: Api, **params: Any) -> dict[str, Any]:
    response = api.get(MUTUALITY, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def member_report(api: Api, member: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"{C}/members/{member}/mutuality", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def by_member(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["member"]: m for m in document["members"]}


def warnings(document: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(w["code"], w.get("member")) for w in document["warnings"]}


def set_policy(api: Api, **policy: Any) -> dict[str, Any]:
    response = api.patch(C, json={"policy": policy})
    assert response.status_code == 200, response.text
    return dict(response.json()["policy"])


def figures(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["given"], row["received"], row["exchanges"], row["partners"], row["balance"])


# --- Done when: reciprocal and one-way communities ----------------------------------------------


def test_perfectly_reciprocal_community_has_index_one_and_everyone_reciprocal(
    api: Api, community: dict[str, Any]
) -> None:
    # A ring: each member gives 10 and receives 10, from different partners.
    posted(api, "alice", "bob", 10)
    posted(api, "bob", "carol", 10)
    posted(api, "carol", "alice", 10)

    shown = report(api)

    assert shown["holds"] is True
    assert shown["indicators"]["mutuality_index"] == 1.0
    assert shown["indicators"]["volume"] == 30
    assert shown["indicators"]["exchanges"] == 3
    assert shown["indicators"]["active_members"] == 3
    assert shown["indicators"]["members"] == 3
    assert shown["indicators"]["outstanding_credit"] == 0
    assert shown["indicators"]["velocity"] is None
    for name, row in by_member(shown).items():
        assert (row["standing"], row["reciprocity"]) == ("reciprocal", 1.0), name
        assert figures(row) == (10, 10, 2, 2, 0), name
    # Every member is even, but each pair went one way: the pairs say so.
    assert {(p["a"], p["b"], p["a_to_b"], p["b_to_a"], p["net"]) for p in shown["pairs"]} == {
        ("alice", "bob", 10, 0, 10),
        ("bob", "carol", 10, 0, 10),
        ("alice", "carol", 0, 10, -10),
    }
    assert shown["warnings"] == []
    assert shown["zero_sum"] == {"ok": True, "sum": 0}
    assert shown["limits"] == {"outside": [], "near_lower": [], "near_upper": []}


def test_one_way_community_has_index_zero_with_a_net_giver_and_a_net_receiver(
    api: Api, community: dict[str, Any]
) -> None:
    for amount in (10, 5, 20):
        posted(api, "alice", "bob", amount)

    shown = report(api)

    assert shown["indicators"]["mutuality_index"] == 0.0
    assert shown["indicators"]["volume"] == 35
    assert shown["indicators"]["outstanding_credit"] == 35
    assert shown["indicators"]["velocity"] == 1.0
    assert shown["indicators"]["active_members"] == 2
    members = by_member(shown)
    assert (members["alice"]["standing"], members["alice"]["reciprocity"]) == ("net_giver", 0.0)
    assert (members["bob"]["standing"], members["bob"]["reciprocity"]) == ("net_receiver", 0.0)
    assert (members["carol"]["standing"], members["carol"]["reciprocity"]) == ("inactive", None)
    assert figures(members["alice"]) == (35, 0, 3, 1, 35)
    assert figures(members["bob"]) == (0, 35, 3, 1, -35)
    assert shown["pairs"] == [{"a": "alice", "b": "bob", "a_to_b": 35, "b_to_a": 0, "net": 35}]
    # Three exchanges one way: both are named, yet mutuality holds (warnings never fail it).
    assert warnings(shown) == {("one_way_member", "alice"), ("one_way_member", "bob")}
    assert shown["holds"] is True


def test_mixed_community_index_matches_the_hand_computation(
    api: Api, community: dict[str, Any]
) -> None:
    # alice -> bob 30, bob -> carol 10, carol -> alice 10: N = 20 (alice's +20), volume 50.
    posted(api, "alice", "bob", 30)
    posted(api, "bob", "carol", 10)
    posted(api, "carol", "alice", 10)

    shown = report(api)

    assert shown["indicators"]["mutuality_index"] == pytest.approx(0.6)
    assert shown["indicators"]["velocity"] == pytest.approx(50 / 20)
    assert {m: r["reciprocity"] for m, r in by_member(shown).items()} == pytest.approx(
        {"alice": 0.5, "bob": 0.5, "carol": 1.0}
    )


def test_the_fund_giving_one_way_is_not_counted_as_reciprocal(
    api: Api, community: dict[str, Any], keys: dict[str, str]
) -> None:
    treasurer = api.as_(keys["treasurer"])
    posted(treasurer, "@commons", "alice", 10, description="the fund pays alice for the mural")

    handed_out = report(api)

    assert handed_out["indicators"]["volume"] == 10
    assert handed_out["indicators"]["mutuality_index"] == 0.0
    assert by_member(handed_out)["alice"]["standing"] == "net_receiver"

    posted(treasurer, "alice", "@commons", 10, description="alice paints the hall")

    assert report(api)["indicators"]["mutuality_index"] == 1.0


# --- Done when: members near their limits -------------------------------------------------------


def test_members_near_each_limit_are_listed_and_warned_about(
    api: Api, community: dict[str, Any]
) -> None:
    create_member(api, "riverside", "hoarder", upper_limit=100)
    create_member(api, "riverside", "debtor", lower_limit=-100)
    posted(api, "hoarder", "debtor", 95)  # 5 from each limit: within 10 %
    posted(api, "alice", "carol", 89)  # carol is 11 above her floor: not near; alice has no cap

    shown = report(api)

    assert shown["limits"]["near_lower"] == [
        {"member": "debtor", "balance": -95, "lower_limit": -100, "upper_limit": None}
    ]
    assert shown["limits"]["near_upper"] == [
        {"member": "hoarder", "balance": 95, "lower_limit": -100, "upper_limit": 100}
    ]
    assert shown["limits"]["outside"] == []
    assert {w for w in warnings(shown) if w[0].startswith("near")} == {
        ("near_lower_limit", "debtor"),
        ("near_upper_limit", "hoarder"),
    }
    assert shown["holds"] is True


def test_a_member_at_its_lower_limit_is_near_it(api: Api, community: dict[str, Any]) -> None:
    posted(api, "alice", "bob", 100)  # bob's floor is -100

    shown = report(api)

    assert [p["member"] for p in shown["limits"]["near_lower"]] == ["bob"]
    assert shown["holds"] is True


def test_patched_near_limit_ratio_widens_who_is_near(api: Api, community: dict[str, Any]) -> None:
    posted(api, "alice", "carol", 85)  # carol 15 above her floor of -100
    assert report(api)["limits"]["near_lower"] == []

    assert set_policy(api, near_limit_ratio=0.2)["near_limit_ratio"] == 0.2

    shown = report(api)
    assert [p["member"] for p in shown["limits"]["near_lower"]] == ["carol"]
    assert ("near_lower_limit", "carol") in warnings(shown)
    assert shown["policy"]["near_limit_ratio"] == 0.2


# --- Done when: a dormant member with a balance -------------------------------------------------


@pytest.fixture
def dormant_history(api: Api, community: dict[str, Any]) -> dict[str, datetime]:
    """alice gave bob 30 two hundred days ago, and neither has exchanged since; carol and dave
    exchanged today (and are square, dave owing carol 5)."""
    create_member(api, "riverside", "dave")
    long_ago = datetime.now(UTC) - timedelta(days=200)
    with use_clock(ManualClock()) as clock:
        assert isinstance(clock, ManualClock)
        clock.set(long_ago)
        old = posted(api, "alice", "bob", 30)
    posted(api, "carol", "dave", 5)
    recorded = datetime.fromisoformat(old["created_at"].replace("Z", "+00:00"))
    assert abs(recorded - long_ago) < timedelta(seconds=1)
    return {"old": long_ago}


def test_a_dormant_member_with_a_balance_is_counted_and_warned_about(
    api: Api, dormant_history: dict[str, datetime]
) -> None:
    shown = report(api)

    assert shown["indicators"]["dormant_with_balance"] == 2
    dormant = {w for w in warnings(shown) if w[0] == "dormant_with_balance"}
    assert dormant == {("dormant_with_balance", "alice"), ("dormant_with_balance", "bob")}
    assert shown["holds"] is True
    # Dormancy is about when, not how much: alice is still counted as having given.
    assert by_member(shown)["alice"]["given"] == 30


def test_dormant_after_days_is_the_communitys_policy(
    api: Api, dormant_history: dict[str, datetime]
) -> None:
    set_policy(api, dormant_after_days=365)
    assert report(api)["indicators"]["dormant_with_balance"] == 0

    set_policy(api, dormant_after_days=1)
    shown = report(api)
    assert shown["indicators"]["dormant_with_balance"] == 2  # carol and dave exchanged today


def test_dormancy_is_judged_at_the_end_of_the_window(
    api: Api, dormant_history: dict[str, datetime]
) -> None:
    old = dormant_history["old"]
    # Seen from 150 days ago, alice's exchange was 50 days old: not dormant yet.
    then = report(api, until=rfc3339(old + timedelta(days=50)))
    assert then["as_of_seq"] == 1
    assert then["indicators"]["dormant_with_balance"] == 0
    # Seen from 50 days ago, it was 150 days old.
    later = report(api, until=rfc3339(old + timedelta(days=150)))
    assert later["as_of_seq"] == 1
    assert {w for w in warnings(later) if w[0] == "dormant_with_balance"} == {
        ("dormant_with_balance", "alice"),
        ("dormant_with_balance", "bob"),
    }
    # A window ending a year from now finds carol and dave dormant too.
    future = report(api, until=rfc3339(datetime.now(UTC) + timedelta(days=365)))
    assert future["indicators"]["dormant_with_balance"] == 4


# --- reversals are not gifts --------------------------------------------------------------------


def test_reversed_exchanges_and_their_reversals_are_left_out(
    api: Api, community: dict[str, Any], keys: dict[str, str]
) -> None:
    posted(api, "alice", "bob", 10)
    posted(api, "bob", "alice", 10)
    mistake = posted(api, "alice", "carol", 50)
    reversal = reverse(api.as_(keys["treasurer"]), mistake["id"]).json()

    shown = report(api)

    assert shown["as_of_seq"] == 4  # the mistake and its reversal are in the ledger ...
    assert shown["indicators"]["volume"] == 20  # ... but not in the figures
    assert shown["indicators"]["exchanges"] == 2
    assert shown["indicators"]["mutuality_index"] == 1.0
    members = by_member(shown)
    assert figures(members["alice"]) == (10, 10, 2, 1, 0)
    assert (members["carol"]["standing"], members["carol"]["exchanges"]) == ("inactive", 0)
    assert [(p["a"], p["b"]) for p in shown["pairs"]] == [("alice", "bob")]
    carol = member_report(api, "carol")
    assert (carol["standing"], carol["with_partners"]) == ("inactive", [])
    # A window holding only the reversal counts nothing either.
    only_reversal = report(api, since=reversal["created_at"])
    assert only_reversal["indicators"]["volume"] == 0
    assert only_reversal["indicators"]["mutuality_index"] is None
    assert all(m["standing"] == "inactive" for m in only_reversal["members"])
    assert only_reversal["pairs"] == []


# --- windows ------------------------------------------------------------------------------------


def test_window_counts_the_exchanges_recorded_in_since_until(
    api: Api, community: dict[str, Any]
) -> None:
    first = posted(api, "alice", "bob", 10)
    second = posted(api, "bob", "carol", 20)
    third = posted(api, "carol", "alice", 5)

    middle = report(api, since=second["created_at"], until=third["created_at"])

    assert middle["window"]["since"] is not None
    assert middle["as_of_seq"] == 2
    assert middle["indicators"]["volume"] == 20
    assert middle["indicators"]["exchanges"] == 1
    members = by_member(middle)
    assert members["alice"]["standing"] == "inactive"
    # Flows inside the window; balances as they stood at its end (seq 2), not now.
    assert figures(members["bob"]) == (20, 0, 1, 1, 10)
    assert figures(members["carol"]) == (0, 20, 1, 1, -20)
    assert members["alice"]["balance"] == 10
    assert middle["indicators"]["outstanding_credit"] == 20
    assert middle["pairs"] == [{"a": "bob", "b": "carol", "a_to_b": 20, "b_to_a": 0, "net": 20}]

    last = report(api, since=third["created_at"])
    assert (last["indicators"]["volume"], last["as_of_seq"]) == (5, 3)
    assert by_member(last)["alice"]["balance"] == 5

    before = report(api, until=first["created_at"])
    assert before["as_of_seq"] == 0
    assert before["indicators"]["volume"] == 0
    assert before["indicators"]["mutuality_index"] is None
    assert {m["balance"] for m in before["members"]} == {0}

    whole = report(api)
    assert whole["indicators"]["volume"] == 35
    assert whole["window"] == {"since": None, "until": None}


def test_a_window_that_is_not_a_time_is_refused(api: Api, community: dict[str, Any]) -> None:
    problem(api.get(MUTUALITY, params={"since": "last tuesday"}), 422, "validation_error")


def test_a_window_that_ends_before_it_starts_is_refused(
    api: Api, community: dict[str, Any]
) -> None:
    posted(api, "alice", "bob", 5)
    backwards = {"since": "2026-06-02T00:00:00Z", "until": "2026-06-01T23:59:59+00:00"}
    for path in (MUTUALITY, f"{C}/members/alice/mutuality"):
        body = problem(api.get(path, params=backwards), 422, "validation_error")
        assert ["query", "since"] in [error["loc"] for error in body["errors"]]
    empty = {"since": "2026-06-01T00:00:00Z", "until": "2026-06-01T00:00:00Z"}
    assert report(api, **empty)["indicators"]["volume"] == 0
    assert member_report(api, "alice", **empty)["given"] == 0


def test_report_shows_the_twenty_most_imbalanced_pairs_of_many(
    api: Api, community: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    people = ["alice", "bob", "carol", "dave", "erin", "frank", "gina"]
    for person in people[3:]:
        create_member(api, "riverside", person, lower_limit=-1000)
    for person in people[:3]:
        set_member(api, person, lower_limit=-1000)
    pairs = [(a, b) for i, a in enumerate(people) for b in people[i + 1 :]]  # 21 pairs
    items = []
    for amount, (a, b) in enumerate(pairs, start=1):
        provider, receiver = (a, b) if amount % 2 else (b, a)  # even amounts go b -> a
        items.append(exchange(provider, receiver, amount))
    response = api.post(BATCH, json={"exchanges": items})
    assert response.status_code == 201, response.text

    kept = report(api)
    monkeypatch.setattr(figures_module.Window, "whole", property(lambda self: False))
    aggregated = report(api)

    for shown in (kept, aggregated):
        assert len(shown["pairs"]) == 20
        assert [abs(p["net"]) for p in shown["pairs"]] == list(range(21, 1, -1))
        first, second = shown["pairs"][:2]
        assert first == {"a": "frank", "b": "gina", "a_to_b": 21, "b_to_a": 0, "net": 21}
        assert second == {"a": "erin", "b": "gina", "a_to_b": 0, "b_to_a": 20, "net": -20}
        assert ("alice", "bob") not in {(p["a"], p["b"]) for p in shown["pairs"]}  # amount 1


# --- one member ---------------------------------------------------------------------------------


def test_member_mutuality_gives_a_row_per_partner(
    api: Api, community: dict[str, Any], keys: dict[str, str]
) -> None:
    posted(api, "alice", "bob", 10)
    posted(api, "bob", "alice", 4)
    posted(api, "alice", "carol", 3)
    last = posted(api, "carol", "alice", 3)

    alice = member_report(api.as_(keys["app"]), "alice")

    assert figures(alice) == (13, 7, 4, 2, 6)
    assert alice["reciprocity"] == pytest.approx(0.7)  # 1 - 6/20
    assert alice["standing"] == "reciprocal"
    assert alice["as_of_seq"] == 4
    assert alice["with_partners"] == [
        {
            "partner": "bob",
            "given": 10,
            "received": 4,
            "exchanges": 2,
            "net": 6,
            "reciprocity": pytest.approx(1 - 6 / 14),
        },
        {"partner": "carol", "given": 3, "received": 3, "exchanges": 2, "net": 0, "reciprocity": 1},
    ]
    bob = member_report(api, "bob")
    assert [(p["partner"], p["net"]) for p in bob["with_partners"]] == [("alice", -6)]

    windowed = member_report(api, "alice", until=last["created_at"])
    assert figures(windowed) == (13, 4, 3, 2, 9)
    assert [(p["partner"], p["net"]) for p in windowed["with_partners"]] == [
        ("bob", 6),
        ("carol", 3),
    ]


def test_member_mutuality_of_an_unknown_member_is_not_found(
    api: Api, community: dict[str, Any]
) -> None:
    problem(api.get(f"{C}/members/nobody/mutuality"), 404, "not_found")


# --- policy -------------------------------------------------------------------------------------


def test_patched_reciprocity_threshold_changes_the_standings(
    api: Api, community: dict[str, Any], keys: dict[str, str]
) -> None:
    posted(api, "alice", "bob", 30)
    posted(api, "bob", "alice", 10)  # reciprocity 0.5 for both
    assert {m: r["standing"] for m, r in by_member(report(api)).items()} == {
        "alice": "reciprocal",
        "bob": "reciprocal",
        "carol": "inactive",
    }

    policy = set_policy(api.as_(keys["treasurer"]), reciprocity_threshold=0.6)
    assert policy["reciprocity_threshold"] == 0.6

    shown = report(api)
    assert {m: r["standing"] for m, r in by_member(shown).items()} == {
        "alice": "net_giver",
        "bob": "net_receiver",
        "carol": "inactive",
    }
    assert shown["policy"]["reciprocity_threshold"] == 0.6
    assert member_report(api, "alice")["standing"] == "net_giver"
    assert ("one_way_member", "alice") not in warnings(shown)  # only 2 exchanges


def test_policy_cannot_be_patched_by_an_auditor_or_out_of_range(
    api: Api, community: dict[str, Any], keys: dict[str, str]
) -> None:
    auditor = api.as_(keys["auditor"])
    problem(auditor.patch(C, json={"policy": {"near_limit_ratio": 0.3}}), 403, "forbidden")
    problem(api.patch(C, json={"policy": {"reciprocity_threshold": 1.5}}), 422, "validation_error")
    assert report(api)["policy"]["near_limit_ratio"] == 0.1
    assert report(api)["policy"]["reciprocity_threshold"] == 0.5


# --- who may read the report --------------------------------------------------------------------


def test_report_roles_app_reads_members_only_and_other_communities_see_nothing(
    api: Api, db: Database, community: dict[str, Any], keys: dict[str, str]
) -> None:
    posted(api, "alice", "bob", 10)
    create_community(api, "hillside")
    create_member(api, "hillside", "alice")
    outsider = make_key(db, Role.TREASURER, "hillside")

    for role in ("treasurer", "auditor", "admin"):
        assert api.as_(keys[role]).get(MUTUALITY).status_code == 200, role
    problem(api.as_(keys["app"]).get(MUTUALITY), 403, "forbidden")
    assert member_report(api.as_(keys["app"]), "alice")["given"] == 10
    for path in (MUTUALITY, f"{C}/members/alice/mutuality"):
        problem(api.as_(outsider).get(path), 404, "not_found")
    assert api.as_(None).get(MUTUALITY).status_code == 401


# --- Done when: a tampered row ------------------------------------------------------------------


def test_a_tampered_entry_amount_makes_mutuality_not_hold(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    first = posted(api, "alice", "bob", 10)
    posted(api, "bob", "carol", 4)
    assert report(api)["holds"] is True

    with tampering(db) as connection:
        connection.execute(
            text(
                "UPDATE entries SET amount = amount + 1 "
                "WHERE exchange_id = :x AND account_id = 'bob'"
            ),
            {"x": first["id"]},
        )

    shown = report(api)

    assert shown["holds"] is False
    assert shown["integrity"]["ok"] is False
    codes = {p["code"] for p in shown["integrity"]["problems"]}
    assert {"unbalanced_exchange", "balance_mismatch"} <= codes
    unbalanced = next(
        p for p in shown["integrity"]["problems"] if p["code"] == "unbalanced_exchange"
    )
    assert (unbalanced["exchange_id"], unbalanced["seq"]) == (first["id"], 1)


def test_tampering_before_the_last_audit_checkpoint_is_still_found(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    first = posted(api, "alice", "bob", 10)
    posted(api, "bob", "carol", 4)
    assert audit(api)["ok"] is True  # a clean full audit: the report re-hashes only after it
    posted(api, "carol", "alice", 2)
    assert report(api)["integrity"]["verified_from_seq"] == 2

    with tampering(db) as connection:
        connection.execute(
            text(
                "UPDATE entries SET amount = amount - 3 "
                "WHERE exchange_id = :x AND account_id = 'alice'"
            ),
            {"x": first["id"]},
        )

    shown = report(api)

    assert shown["holds"] is False
    assert "balance_mismatch" in {p["code"] for p in shown["integrity"]["problems"]}


def test_a_tampered_balance_breaks_the_zero_sum(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    posted(api, "alice", "bob", 10)
    with db.engine.begin() as connection:  # accounts are not append-only: no trigger to lift
        connection.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 'alice'"))

    shown = report(api)

    assert shown["holds"] is False
    assert shown["zero_sum"] == {"ok": False, "sum": 1}
    assert balances(api)["alice"] == 11


# --- the dashboard's summary of the report ------------------------------------------------------


def summary_and_report(
    db: Database, since: datetime | None = None, until: datetime | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary the dashboard's overview shows, and the report's own figures for it."""
    with db.read() as session:
        summary = community_mutuality_summary(session, "riverside", since, until)
        full = community_mutuality(session, "riverside", since, until)
    shown = full.model_dump(mode="json", exclude={"members", "pairs", "policy"})
    return summary.model_dump(mode="json"), shown


def test_the_summary_is_the_reports_verdict_indicators_and_warnings(
    api: Api, db: Database, keys: dict[str, str], dormant_history: dict[str, datetime]
) -> None:
    # Beside dormant alice and bob: a hoarder and a debtor near their limits, a one-way member,
    # and a reversed mistake (left out of the figures).
    create_member(api, "riverside", "hoarder", upper_limit=100)
    create_member(api, "riverside", "debtor", lower_limit=-100)
    posted(api, "hoarder", "debtor", 95)
    for _ in range(3):
        posted(api, "carol", "dave", 7)
    mistake = posted(api, "dave", "carol", 20)
    assert reverse(api.as_(keys["treasurer"]), mistake["id"]).status_code == 201
    recent = datetime.now(UTC) - timedelta(days=1)

    for since, until in ((None, None), (recent, None), (None, recent)):
        summary, report_figures = summary_and_report(db, since, until)
        assert summary == report_figures
    summary, _ = summary_and_report(db)
    assert {w["code"] for w in summary["warnings"]} == {
        "near_lower_limit",
        "near_upper_limit",
        "one_way_member",
        "dormant_with_balance",
    }

    # A broken ledger too: the same problems, the same verdict.
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 'alice'"))
    summary, report_figures = summary_and_report(db)
    assert summary == report_figures
    assert (summary["holds"], summary["integrity"]["ok"], summary["zero_sum"]["ok"]) == (
        False,
        False,
        False,
    )
