"""The mutuality figures posting keeps up to date (per account, per pair, per community) agree
with the figures aggregated from the exchanges themselves, after a mix of direct exchanges,
accepted, rejected, cancelled and expired proposals, reversals and levies.

The whole-history report reads the kept figures; a report over a narrower window aggregates the
window's exchanges. Any window that starts before the first exchange and ends after the last is
answered from the kept figures too, so to compare the two over the same (whole) history the test
also asks for the report with the kept figures switched off (`Window.whole` false), and checks
both against a recomputation from the ledger as the API lists it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from protocoop.db import Database
from protocoop.mutuality import figures
from tests.support.api import Api, create_member
from tests.support.ledger import C, all_exchanges, audit, posted, reverse, set_member
from tests.support.workflows import make_overdue, proposed, set_levy, settled

COMPARED = ("members", "pairs", "indicators")


def report(api: Api, **params: Any) -> dict[str, Any]:
    response = api.get(f"{C}/mutuality", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def member_report(api: Api, member: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"{C}/members/{member}/mutuality", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def counted_flows(ledger: list[dict[str, Any]]) -> dict[str, tuple[int, int, int, int]]:
    """member -> (given, received, exchanges, partners) over the exchanges that count: completed,
    neither a reversal nor reversed."""
    given: dict[str, int] = defaultdict(int)
    received: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    partners: dict[str, set[str]] = defaultdict(set)
    for x in ledger:
        if x["reverses"] is not None or x["reversed_by"] is not None:
            continue
        given[x["provider"]] += x["amount"]
        received[x["receiver"]] += x["amount"]
        for me, other in ((x["provider"], x["receiver"]), (x["receiver"], x["provider"])):
            count[me] += 1
            partners[me].add(other)
    return {m: (given[m], received[m], count[m], len(partners[m])) for m in count}


@pytest.fixture
def history(api: Api, db: Database, keys: dict[str, str]) -> list[dict[str, Any]]:
    """A ledger with every kind of change that touches the figures; returns it as listed."""
    treasurer = api.as_(keys["treasurer"])
    create_member(api, "riverside", "dave")
    for member in ("alice", "bob", "carol", "dave"):
        set_member(api, member, lower_limit=-5000)

    posted(api, "alice", "bob", 40)
    posted(api, "bob", "carol", 25)
    posted(api, "carol", "alice", 10)
    mistake = posted(api, "dave", "alice", 70)
    reverse(treasurer, mistake["id"])  # dave and alice: no exchange left between them
    settled(api, proposed(api, "alice", "dave", 30)["id"], "accept")
    settled(api, proposed(api, "bob", "alice", 15)["id"], "reject")
    settled(api, proposed(api, "carol", "bob", 12)["id"], "cancel")
    overdue = proposed(api, "dave", "carol", 9)
    make_overdue(db, overdue["id"])
    assert settled_status(api, overdue["id"]) == "expired"
    proposed(api, "dave", "bob", 8)  # still pending: not counted

    set_levy(treasurer, {"rate_ppm": 50_000, "minimum": 1, "paid_by": "provider"})
    posted(api, "bob", "alice", 100)
    levied_mistake = posted(api, "carol", "dave", 60)
    reverse(treasurer, levied_mistake["id"])
    set_levy(treasurer, {"rate_ppm": 100_000, "minimum": 0, "paid_by": "receiver"})
    settled(api, proposed(api, "dave", "bob", 20)["id"], "accept")
    accepted_mistake = settled(api, proposed(api, "alice", "carol", 5)["id"], "accept")
    reverse(treasurer, accepted_mistake["id"])
    posted(treasurer, "@commons", "carol", 3, description="the fund lends carol a ladder")
    set_levy(treasurer, None)
    posted(api, "carol", "bob", 33)
    return all_exchanges(api)


def settled_status(api: Api, exchange_id: str) -> str:
    return str(api.get(f"{C}/exchanges/{exchange_id}").json()["status"])


def test_kept_figures_agree_with_figures_aggregated_from_the_exchanges(
    api: Api, history: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = report(api)
    since_2000 = report(api, since="2000-01-01T00:00:00Z")
    monkeypatch.setattr(figures.Window, "whole", property(lambda self: False))
    aggregated = report(api)
    aggregated_since_2000 = report(api, since="2000-01-01T00:00:00Z")

    for name in COMPARED:
        assert since_2000[name] == kept[name], name
        assert aggregated[name] == kept[name], name
        assert aggregated_since_2000[name] == kept[name], name
    assert kept["holds"] is True
    for member in ("alice", "bob", "carol", "dave"):
        monkeypatch.undo()
        kept_member = member_report(api, member)
        monkeypatch.setattr(figures.Window, "whole", property(lambda self: False))
        assert member_report(api, member) == kept_member, member


def test_report_counts_exactly_the_completed_unreversed_exchanges(
    api: Api, history: list[dict[str, Any]]
) -> None:
    kept = report(api)

    flows = counted_flows(history)
    shown = {
        m["member"]: (m["given"], m["received"], m["exchanges"], m["partners"])
        for m in kept["members"]
    }
    assert shown == {m: flows.get(m, (0, 0, 0, 0)) for m in ("alice", "bob", "carol", "dave")}
    counted = [x for x in history if x["reverses"] is None and x["reversed_by"] is None]
    assert kept["indicators"]["volume"] == sum(x["amount"] for x in counted)
    assert kept["indicators"]["exchanges"] == len(counted)
    member_pairs = {
        tuple(sorted((x["provider"], x["receiver"])))
        for x in counted
        if not x["provider"].startswith("@") and not x["receiver"].startswith("@")
    }
    shown_pairs = {(p["a"], p["b"]) for p in kept["pairs"] if not p["a"].startswith("@")}
    assert shown_pairs == member_pairs
    assert ("alice", "dave") in shown_pairs  # the accepted proposal, not the reversed one
    assert audit(api)["ok"] is True  # the full audit compares kept and recomputed figures too


def test_narrower_window_counts_only_its_own_exchanges(
    api: Api, history: list[dict[str, Any]]
) -> None:
    middle = history[len(history) // 2]

    windowed = report(api, since=middle["created_at"])

    inside = [x for x in history if x["seq"] >= middle["seq"]]
    counted = [x for x in inside if x["reverses"] is None and x["reversed_by"] is None]
    assert 0 < len(counted) < len(history)
    assert windowed["indicators"]["volume"] == sum(x["amount"] for x in counted)
    assert windowed["indicators"]["exchanges"] == len(counted)
    flows = counted_flows(inside)
    shown = {
        m["member"]: (m["given"], m["received"], m["exchanges"], m["partners"])
        for m in windowed["members"]
    }
    assert shown == {m: flows.get(m, (0, 0, 0, 0)) for m in ("alice", "bob", "carol", "dave")}
