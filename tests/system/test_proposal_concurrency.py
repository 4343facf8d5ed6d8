"""Exchange workflows under concurrency, against a real `protocoop serve --workers 2` on SQLite
and PostgreSQL:

- many clients propose, accept, reject, cancel (sometimes racing on the same proposal) and post
  directly among a few members with tight limits and a levy: no balance is ever outside its
  limits, no reservation goes negative, every account's reservations are exactly what its
  still-pending proposals hold, each proposal is settled at most once, and the audit and the
  mutuality check hold;
- an app follows the event feed (`next_after`, long-polling) while clients write, and the server
  is killed and restarted in the middle: the app sees every event exactly once, in id order, and
  the completed exchanges it saw are exactly the ledger's.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from tests.support.api import every_item
from tests.support.databases import BACKENDS
from tests.support.live_server import (
    _SERVERS,
    LiveServer,
    Snapshot,
    admin_call,
    create_tight_community,
    read_json,
    read_ledger,
    serving,
    snapshot_violations,
)
from tests.support.workflows import expected_reservations

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

MEMBERS = ["ana", "ben", "cai", "dee"]
LOWER, UPPER = -20, 20
RETRY_PAUSE_S = 0.05


@pytest.fixture(scope="module", params=BACKENDS)
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Like `live_server`, but one server per backend for this module's tests (each uses its
    own community), to start fewer servers."""
    backend = str(request.param)
    workdir = tmp_path_factory.mktemp(f"workflow-server-{backend}")
    with serving(backend, workdir, request) as server:
        yield server


@pytest.fixture
def live(shared_server: LiveServer, request: pytest.FixtureRequest) -> LiveServer:
    """The module's server, running, with its log attached to the report of a failing test."""
    request.node.stash.setdefault(_SERVERS, []).append(shared_server)
    if not shared_server.running:
        shared_server.start()
    return shared_server


class Client:
    """One client thread's connection: retries a keyed request across 503s, `request_in_progress`
    and (when `survive_restarts`) a server that is down, until it gets a final answer."""

    def __init__(self, server: LiveServer, token: str, *, survive_restarts: bool = False) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.base_url, timeout=60.0, headers={"Authorization": f"Bearer {token}"}
        )
        self.survive_restarts = survive_restarts

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, f"{method} {path}: no answer for 120 s"
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if not self.survive_restarts:
                    raise
                time.sleep(RETRY_PAUSE_S)
                continue
            retry = response.status_code == 503 or (
                response.status_code == 409 and response.json().get("code") == "request_in_progress"
            )
            if retry and (method == "GET" or "Idempotency-Key" in kwargs.get("headers", {})):
                time.sleep(RETRY_PAUSE_S)
                continue
            return response

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.request(
            "POST", path, json=body or {}, headers={"Idempotency-Key": str(uuid.uuid4())}
        )


def all_pages(client: Client, path: str, **params: Any) -> list[dict[str, Any]]:
    return every_item(partial(client.request, "GET"), path, **params)


@pytest.mark.slow
def test_concurrent_proposals_and_settlements_keep_reservations_exact_and_limits_held(
    live: LiveServer,
) -> None:
    live_server = live
    community = "tight-coop"
    tokens = create_tight_community(live_server, community, MEMBERS, LOWER, UPPER)
    admin_call(
        live_server,
        "PATCH",
        f"/v1/communities/{community}",
        json={"policy": {"levy": {"rate_ppm": 100_000, "minimum": 1, "paid_by": "receiver"}}},
    )
    exchanges = f"/v1/communities/{community}/exchanges"
    open_proposals: list[str] = []
    lock = threading.Lock()
    settle_answers: dict[str, list[tuple[str, int, str | None]]] = defaultdict(list)
    answers: Counter[tuple[str, int, str | None]] = Counter()
    failures: list[str] = []
    snapshots: list[Snapshot] = []
    reservation_reads: list[dict[str, Any]] = []
    writers_done = threading.Event()

    def note(kind: str, response: httpx.Response) -> str | None:
        code = response.json().get("code") if response.status_code >= 400 else None
        with lock:
            answers[(kind, response.status_code, code)] += 1
        if response.status_code >= 500 or response.status_code in (400, 422):
            failures.append(f"{kind}: {response.status_code} {response.text[:300]}")
        return code

    def write(number: int) -> None:
        rng = random.Random(1000 + number)
        client = Client(live_server, tokens["app"])
        try:
            for step in range(30):
                provider, receiver = rng.sample(MEMBERS, 2)
                body = {
                    "provider": provider,
                    "receiver": receiver,
                    "amount": rng.randint(1, 8),
                    "description": f"thread {number}",
                }
                choice = rng.random() if step < 27 else 0.5  # the last ones stay pending
                if choice < 0.3:
                    note("post", client.post(exchanges, body))
                elif choice < 0.65:
                    response = client.post(exchanges, {**body, "pending": True})
                    note("propose", response)
                    if response.status_code == 201 and step < 27:
                        with lock:
                            open_proposals.append(response.json()["id"])
                            if rng.random() < 0.3:  # two clients will race to settle it
                                open_proposals.append(response.json()["id"])
                else:
                    with lock:
                        if not open_proposals:
                            continue
                        proposal = open_proposals.pop(rng.randrange(len(open_proposals)))
                    action = rng.choice(["accept", "accept", "accept", "reject", "cancel"])
                    response = client.post(f"{exchanges}/{proposal}/{action}")
                    code = note(action, response)
                    with lock:
                        settle_answers[proposal].append((action, response.status_code, code))
        except Exception as error:
            failures.append(f"thread {number}: {error!r}")
        finally:
            client.close()

    def read() -> None:
        client = Client(live_server, tokens["auditor"])
        try:
            while not writers_done.is_set():
                page = client.request(
                    "GET", f"/v1/communities/{community}/balances", params={"limit": 1000}
                ).json()
                snapshots.append(
                    Snapshot(
                        as_of_seq=page["as_of_seq"],
                        sum=page["sum"],
                        balances={i["account"]: i["balance"] for i in page["items"]},
                        limits={
                            i["account"]: (i["lower_limit"], i["upper_limit"])
                            for i in page["items"]
                        },
                    )
                )
                member = random.choice(MEMBERS)
                reservation_reads.append(
                    client.request(
                        "GET", f"/v1/communities/{community}/members/{member}/balance"
                    ).json()
                )
                time.sleep(0.02)
        finally:
            client.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    writers_done.set()
    reader.join(timeout=60)
    print(f"\n[{live_server.backend}] {sorted(answers.items(), key=str)}")

    assert not failures, failures[:5]
    assert answers[("post", 201, None)] > 0
    assert answers[("accept", 200, None)] > 0
    assert answers[("propose", 409, "limit_exceeded")] > 0, "the limits were never tight"
    # Accepting never fails on limits: the proposal reserved them.
    assert {code for (kind, _, code) in answers if kind == "accept"} <= {None, "invalid_state"}
    # Each proposal was settled at most once, however many clients raced for it.
    for proposal, tries in settle_answers.items():
        assert sum(status == 200 for _, status, _ in tries) <= 1, (proposal, tries)
        assert all(status in (200, 409) for _, status, _ in tries), (proposal, tries)

    auditor = Client(live_server, tokens["auditor"])
    try:
        # No read ever saw a balance outside its limits, or a reservation below 0 or beyond
        # the limits.
        assert snapshots
        assert reservation_reads
        assert snapshot_violations(snapshots, None) == []
        for shown in reservation_reads:
            assert shown["reserved_debit"] >= 0, shown
            assert shown["reserved_credit"] >= 0, shown
            assert shown["balance"] - shown["reserved_debit"] >= shown["lower_limit"], shown
            assert shown["balance"] + shown["reserved_credit"] <= shown["upper_limit"], shown

        # Every account's reservations are exactly what its still-pending proposals hold.
        pending = all_pages(auditor, f"{exchanges}", status="pending")
        assert pending, "some proposals should still be pending"
        expected = expected_reservations(pending)
        for account in [*MEMBERS, "@commons"]:
            shown = auditor.request(
                "GET", f"/v1/communities/{community}/members/{account}/balance"
            ).json()
            assert (shown["reserved_debit"], shown["reserved_credit"]) == expected.get(
                account, (0, 0)
            ), (account, shown)
            if account != "@commons":
                assert LOWER <= shown["balance"] <= UPPER

        # Every 200 from accept is a completed exchange in the ledger, under the proposal's id.
        ledger = read_ledger(live_server, community, live_server.admin_token)
        accepted = {
            proposal for proposal, tries in settle_answers.items() if ("accept", 200, None) in tries
        }
        assert accepted <= {x["id"] for x in ledger}
        assert [x["seq"] for x in ledger] == list(range(1, len(ledger) + 1))
        for x in ledger:
            assert sum(e["amount"] for e in x["entries"]) == 0

        admin = live_server.admin_token
        audit = read_json(live_server, f"/v1/communities/{community}/audit", admin)
        assert audit["ok"], audit["problems"]
        mutuality = read_json(live_server, f"/v1/communities/{community}/mutuality", admin)
        assert mutuality["holds"] is True, mutuality
        assert mutuality["zero_sum"]["sum"] == 0
        assert mutuality["limits"]["outside"] == []
    finally:
        auditor.close()


@pytest.mark.slow
def test_event_reader_sees_every_event_once_in_order_across_a_server_restart(
    live: LiveServer,
) -> None:
    live_server = live
    community = "feed-coop"
    tokens = create_tight_community(live_server, community, MEMBERS, -50, 50)
    exchanges = f"/v1/communities/{community}/exchanges"
    events_path = f"/v1/communities/{community}/events"
    seen: list[dict[str, Any]] = []
    failures: list[str] = []
    writers_done = threading.Event()
    restarted = threading.Event()
    seen_before_restart: list[int] = []

    def write(number: int) -> None:
        rng = random.Random(number)
        client = Client(live_server, tokens["app"], survive_restarts=True)
        after_restart = 0
        try:
            # Write until the server was restarted (it is killed while we write), then a few
            # more.
            for _ in range(500):
                if restarted.is_set():
                    after_restart += 1
                    if after_restart > 6:
                        return
                provider, receiver = rng.sample(MEMBERS, 2)
                body = {
                    "provider": provider,
                    "receiver": receiver,
                    "amount": rng.randint(1, 10),
                    "description": f"thread {number}",
                }
                if rng.random() < 0.5:
                    response = client.post(exchanges, body)
                else:
                    response = client.post(exchanges, {**body, "pending": True})
                    if response.status_code == 201:
                        action = rng.choice(["accept", "accept", "reject", "cancel"])
                        response = client.post(f"{exchanges}/{response.json()['id']}/{action}")
                if response.status_code not in (200, 201, 409):
                    failures.append(f"{response.status_code} {response.text[:300]}")
        except Exception as error:
            failures.append(f"writer {number}: {error!r}")
        finally:
            client.close()

    def read() -> None:
        client = Client(live_server, tokens["auditor"], survive_restarts=True)
        after = 0
        try:
            while True:
                finished = writers_done.is_set()
                response = client.request(
                    "GET", events_path, params={"after": after, "limit": 25, "wait": 1}
                )
                assert response.status_code == 200, response.text
                page = response.json()
                seen.extend(page["items"])
                after = page["next_after"]
                if finished and not page["items"]:
                    return
        except Exception as error:
            failures.append(f"reader: {error!r}")
        finally:
            client.close()

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    reader.start()
    for thread in writers:
        thread.start()
    deadline = time.monotonic() + 60
    while len(seen) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    live_server.kill()
    seen_before_restart.extend(e["id"] for e in seen)
    live_server.start()
    restarted.set()
    for thread in writers:
        thread.join(timeout=180)
    writers_done.set()
    reader.join(timeout=60)

    assert not failures, failures[:5]
    assert len(seen_before_restart) >= 40, "the restart did not come in the middle of the feed"
    ids = [e["id"] for e in seen]
    assert len(ids) > len(seen_before_restart), "nothing was read after the restart"
    assert ids == list(range(1, len(ids) + 1)), "an event was missed, repeated or out of order"
    with httpx.Client(base_url=live_server.base_url, timeout=60.0) as http:
        everything = []
        after = 0
        while True:
            page = http.get(
                events_path,
                params={"after": after, "limit": 1000},
                headers={"Authorization": f"Bearer {live_server.admin_token}"},
            ).json()
            if not page["items"]:
                break
            everything.extend(page["items"])
            after = page["next_after"]
    assert seen == everything
    ledger = read_ledger(live_server, community, live_server.admin_token)
    completed = [e["data"]["id"] for e in seen if e["type"] == "exchange.completed"]
    assert sorted(completed) == sorted(x["id"] for x in ledger)
    # ...and in the ledger's order: completed events follow seq.
    assert [e["data"]["seq"] for e in seen if e["type"] == "exchange.completed"] == [
        x["seq"] for x in ledger
    ]
