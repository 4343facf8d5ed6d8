"""Many clients at once against a real `protocoop serve --workers 2`, on SQLite and PostgreSQL.

8 threads post 250 random exchanges each among 10 members whose limits are [-20, 20] (so many
are refused), half of them with an Idempotency-Key that is retried — by the same thread and,
for half of those, concurrently by another thread — while one more thread reads `/balances` in a
loop. The ledger must come out exactly as the acknowledged exchanges say, and no read may ever
have seen it otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.live_server import (
    ExchangeLoad,
    LiveServer,
    create_tight_community,
    nonzero,
    read_json,
    read_ledger,
    replay,
    snapshot_violations,
)

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

COMMUNITY = "stress-coop"
MEMBERS = [f"member-{n}" for n in range(10)]
LOWER, UPPER = -20, 20


@pytest.mark.slow
def test_concurrent_posting_records_exactly_the_acknowledged_exchanges(
    live_server: LiveServer,
) -> None:
    tokens = create_tight_community(live_server, COMMUNITY, MEMBERS, LOWER, UPPER)
    load = ExchangeLoad(
        base_url=live_server.base_url,
        community=COMMUNITY,
        members=MEMBERS,
        app_token=tokens["app"],
        auditor_token=tokens["auditor"],
        threads=8,
        exchanges_per_thread=250,
    )
    load.run()
    print(f"\n[{live_server.backend}] {load.summary()}")

    # Every request got an answer, none of them a server error.
    assert not load.lost
    assert not load.server_errors, load.server_errors[:5]
    assert not load.read_errors, load.read_errors[:5]
    statuses = {status for status, _ in load.answers}
    assert statuses <= {201, 409}, load.answers
    assert {code for status, code in load.answers if status == 409} <= {
        "limit_exceeded",
        "request_in_progress",
    }, load.answers
    assert load.answers[(201, None)] > 0
    assert load.answers[(409, "limit_exceeded")] > 0

    # A retried key always got the first answer again, byte for byte, and at most one exchange.
    assert not load.idempotency_violations()

    # The ledger holds exactly the acknowledged exchanges, each once, in a gap-free seq.
    admin = live_server.admin_token
    ledger = read_ledger(live_server, COMMUNITY, admin)
    assert len(ledger) == len(load.acknowledged)
    assert {x["id"] for x in ledger} == set(load.acknowledged)
    assert [x["seq"] for x in ledger] == list(range(1, len(ledger) + 1))
    for recorded in ledger:
        assert _chained_fields(recorded) == _chained_fields(load.acknowledged[recorded["id"]])

    # Final balances are a replay of the acknowledged exchanges, within limits, summing to 0.
    final = read_json(live_server, f"/v1/communities/{COMMUNITY}/balances?limit=1000", admin)
    balances = {item["account"]: item["balance"] for item in final["items"]}
    assert final["sum"] == 0
    assert final["as_of_seq"] == len(ledger)
    assert nonzero(balances) == nonzero(replay(load.acknowledged.values()))
    assert all(LOWER <= balances[m] <= UPPER for m in MEMBERS)

    # Every read during the load was a consistent snapshot of some prefix of the ledger.
    assert load.snapshots
    assert snapshot_violations(load.snapshots, ledger) == []

    audit = read_json(live_server, f"/v1/communities/{COMMUNITY}/audit", admin)
    assert audit["ok"], audit["problems"]
    assert audit["checked_exchanges"] == len(ledger)


def _chained_fields(exchange: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "seq", "provider", "receiver", "amount", "entries", "prev_hash", "hash")
    return {key: exchange[key] for key in keys}
