"""The running totals posting keeps (what each member gave and received, what each pair gave each
other, the community's volume) have no 64-bit ceiling: a community trading at the largest amount
(10^15) for as long as it likes passes 2^63 - 1 and carries on, on SQLite and PostgreSQL, with
every report, balance and audit exact to the unit."""

from __future__ import annotations

from collections import Counter
from typing import Any

from typer.testing import CliRunner

from protocoop import cli
from protocoop.config import get_settings
from protocoop.db import Database
from protocoop.money import MAX_AMOUNT, MAX_LIMIT
from tests.support.api import Api
from tests.support.ledger import BATCH, C, exchange, posted
from tests.support.workflows import proposed, settled

BIGINT_MAX = 2**63 - 1
BATCHES = 19
"""Each batch adds 10^18 to the volume and 5 * 10^17 to each member's given and received: with
balances held within 10^15 of 0, a member's given passes 2^63 - 1 only after 18.4 batches."""


def test_totals_past_64_bits_keep_posting_and_stay_exact(
    api: Api, app: Any, db: Database, community: dict[str, Any]
) -> None:
    for member in ("alice", "bob"):
        changed = api.patch(
            f"{C}/members/{member}", json={"lower_limit": -MAX_LIMIT, "upper_limit": MAX_LIMIT}
        )
        assert changed.status_code == 200, changed.text
    counted: list[tuple[str, str, int]] = []
    # Back and forth at the largest amount: balances stay within the limits, totals only grow.
    round_trip = [("alice", "bob"), ("bob", "alice")] * 500
    for batch in range(BATCHES):
        # Fresh connections, as the pool's recycling gives a server: PostgreSQL plans a
        # connection's foreign-key checks once, and a plan made on a near-empty table scans it.
        app.state.db.dispose()
        response = api.post(
            BATCH,
            json={"exchanges": [exchange(p, r, MAX_AMOUNT) for p, r in round_trip]},
        )
        assert response.status_code == 201, (batch, response.text)
        if batch == 0:  # a window that leaves out the first exchange is summed from the ledger
            since = response.json()["exchanges"][1]["created_at"]
        counted += [(p, r, MAX_AMOUNT) for p, r in round_trip]
    window_start = 1

    # Past 2^63 - 1, every way of recording still works.
    mistake = posted(api, "alice", "bob", MAX_AMOUNT)
    proposal = proposed(api, "bob", "alice", MAX_AMOUNT)
    assert settled(api, proposal["id"], "accept")["status"] == "completed"
    counted.append(("bob", "alice", MAX_AMOUNT))
    reversal = api.post(f"{C}/exchanges/{mistake['id']}/reverse", json={"reason": "twice"})
    assert reversal.status_code == 201, reversal.text  # neither it nor the mistake is counted
    posted(api, "alice", "carol", 7)
    counted.append(("alice", "carol", 7))

    whole = api.get(f"{C}/mutuality").json()
    _assert_report_shows(whole, counted)
    windowed = api.get(f"{C}/mutuality", params={"since": since}).json()
    _assert_report_shows(windowed, counted[window_start:])
    assert windowed["indicators"]["volume"] < whole["indicators"]["volume"]

    alice = api.get(f"{C}/members/alice/mutuality").json()
    given, received = _flows(counted)
    assert (alice["given"], alice["received"]) == (given["alice"], received["alice"])
    assert alice["given"] > BIGINT_MAX
    assert alice["received"] > BIGINT_MAX
    partners = {p["partner"]: (p["given"], p["received"]) for p in alice["with_partners"]}
    pairs = _pair_flows(counted)
    assert partners == {
        "bob": (pairs[("alice", "bob")], pairs[("bob", "alice")]),
        "carol": (7, 0),
    }
    alice_window = api.get(f"{C}/members/alice/mutuality", params={"since": since}).json()
    given, received = _flows(counted[window_start:])
    assert (alice_window["given"], alice_window["received"]) == (given["alice"], received["alice"])

    balances = {
        m: api.get(f"{C}/members/{m}/balance").json()["balance"] for m in ("alice", "bob", "carol")
    }
    assert balances == {"alice": -MAX_AMOUNT + 7, "bob": MAX_AMOUNT, "carol": -7}
    trial = api.get(f"{C}/trial-balance").json()
    assert (trial["total_positive"], trial["total_negative"], trial["sum"]) == (
        MAX_AMOUNT,
        -MAX_AMOUNT,
        0,
    )

    audit = api.get(f"{C}/audit").json()
    assert audit["ok"], audit["problems"]
    get_settings.cache_clear()
    try:
        checked = CliRunner().invoke(
            cli.app,
            ["check", "--community", "riverside"],
            env={
                "PROTOCOOP_DATABASE_URL": db.settings.database_url,
                "PROTOCOOP_AUTO_MIGRATE": "false",
            },
        )
    finally:
        get_settings.cache_clear()
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith("riverside: mutuality holds")


def _flows(counted: list[tuple[str, str, int]]) -> tuple[Counter[str], Counter[str]]:
    given: Counter[str] = Counter()
    received: Counter[str] = Counter()
    for provider, receiver, amount in counted:
        given[provider] += amount
        received[receiver] += amount
    return given, received


def _pair_flows(counted: list[tuple[str, str, int]]) -> Counter[tuple[str, str]]:
    flows: Counter[tuple[str, str]] = Counter()
    for provider, receiver, amount in counted:
        flows[(provider, receiver)] += amount
    return flows


def _assert_report_shows(report: dict[str, Any], counted: list[tuple[str, str, int]]) -> None:
    """The community report's figures are exactly those of the `counted` exchanges."""
    assert report["holds"], report
    given, received = _flows(counted)
    volume = sum(amount for _, _, amount in counted)
    assert volume > BIGINT_MAX
    assert report["indicators"]["volume"] == volume
    assert report["indicators"]["exchanges"] == len(counted)
    members = {m["member"]: (m["given"], m["received"]) for m in report["members"]}
    assert members == {m: (given[m], received[m]) for m in ("alice", "bob", "carol")}
    assert given["alice"] > BIGINT_MAX
    assert received["bob"] > BIGINT_MAX
    flows = _pair_flows(counted)
    assert [(p["a"], p["b"], p["a_to_b"], p["b_to_a"]) for p in report["pairs"]] == sorted(
        (
            (a, b, flows[(a, b)], flows[(b, a)])
            for a, b in {tuple(sorted((p, r))) for p, r, _ in counted}
        ),
        key=lambda pair: (-abs(pair[2] - pair[3]), pair[0], pair[1]),
    )
