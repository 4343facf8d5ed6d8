"""A concurrent load over several communities at once, against a real `protocoop serve --workers 2`
on SQLite and PostgreSQL, checked against what the clients SENT.

Five communities, chosen so that pairs of them share a group-commit writer lane (a lane is
`crc32(community) % PROTOCOOP_WRITER_LANES`; SQLite has a single lane), two of them with a levy
(one paid by the provider, one by the receiver), all with tight limits so that many requests are
refused. Client threads post single exchanges, all-or-nothing batches and proposals that others
accept, reject or cancel (sometimes two at once), in whichever community each step picks, so a
lane's writer holds back one community's requests while it records another's.

Every request has a unique description. Every 201 (and every settlement's 200) must be the
exchange of ITS OWN request: its community, parties, amount, description, external id, levy and
entries are what that request asked for. At the end, per community, the ledger is exactly the
acknowledged exchanges (no more, no fewer, each once), the balances are a replay of the
acknowledged REQUESTS, the reservations are what the still-pending proposals' requests hold, and
the audit is clean. `/metrics` must show that groups of more than one request formed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.live_server import (
    LiveServer,
    admin_call,
    create_tight_community,
    read_json,
    read_ledger,
    serving,
)
from tests.support.matching import (
    LevyPolicy,
    answer_mismatches,
    expected_reservations_from_bodies,
    group_commit_sizes,
    replay_bodies,
)

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

LANES = 4
MEMBERS = [f"m{n}" for n in range(5)]
LOWER, UPPER = -12, 12
THREADS = 12
STEPS_PER_THREAD = 60
RETRY_PAUSE_S = 0.02


def lane(community: str) -> int:
    """The writer lane the server gives `community` (with `LANES` lanes)."""
    return zlib.crc32(community.encode()) % LANES


def communities_sharing_lanes() -> list[str]:
    """Five community ids: two pairs that each share a lane, and one on a lane of its own."""
    by_lane: dict[int, list[str]] = defaultdict(list)
    for n in range(200):
        by_lane[lane(f"lane-coop-{n}")].append(f"lane-coop-{n}")
    first, second, third = sorted(by_lane)[:3]
    return [*by_lane[first][:2], *by_lane[second][:2], by_lane[third][0]]


COMMUNITIES = communities_sharing_lanes()
POLICIES: dict[str, LevyPolicy | None] = {
    COMMUNITIES[0]: LevyPolicy(rate_ppm=100_000, minimum=1, paid_by="provider"),
    COMMUNITIES[1]: None,
    COMMUNITIES[2]: LevyPolicy(rate_ppm=200_000, minimum=0, paid_by="receiver"),
    COMMUNITIES[3]: None,
    COMMUNITIES[4]: None,
}


@pytest.fixture
def server(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[LiveServer]:
    workdir = tmp_path / "live-server"
    workdir.mkdir()
    with serving(
        backend, workdir, request, extra_env={"PROTOCOOP_WRITER_LANES": str(LANES)}
    ) as live:
        yield live


@dataclass
class Expectations:
    """What the clients were told, per community, with the request behind each answer."""

    completed: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    """community -> exchange id -> the request body of an acknowledged completed exchange."""
    proposals: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    """community -> proposal id -> its request body (every proposal answered 201)."""
    settled: dict[str, str] = field(default_factory=dict)
    """proposal id -> how it was settled (accept, reject or cancel): the one 200 it got."""
    open: list[tuple[str, str]] = field(default_factory=list)
    """(community, proposal id) waiting for a settlement."""
    answers: Counter[tuple[str, int, str | None]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send(client: httpx.Client, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    """POST until a final answer: `request_in_progress` always, a 503 only with a key."""
    headers = {"Idempotency-Key": key} if key else {}
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, f"POST {path}: no final answer in 120 s"
        response = client.post(path, json=body, headers=headers)
        in_progress = response.status_code == 409 and (
            response.json().get("code") == "request_in_progress"
        )
        if in_progress or (response.status_code == 503 and key is not None):
            time.sleep(RETRY_PAUSE_S)
            continue
        return response


def run_client(number: int, server: LiveServer, tokens: dict[str, str], seen: Expectations) -> None:
    rng = random.Random(4242 + number)
    clients = {
        community: httpx.Client(
            base_url=server.base_url,
            timeout=60.0,
            headers={"Authorization": f"Bearer {tokens[community]}"},
        )
        for community in COMMUNITIES
    }

    def note(kind: str, response: httpx.Response) -> str | None:
        code = response.json().get("code") if response.status_code >= 400 else None
        with seen.lock:
            seen.answers[(kind, response.status_code, code)] += 1
            if response.status_code >= 500 or response.status_code in (400, 422):
                seen.problems.append(f"{kind}: {response.status_code} {response.text[:300]}")
        return code

    def mismatch(what: str, body: dict[str, Any], document: dict[str, Any], **kw: Any) -> None:
        problems = answer_mismatches(body, document, **kw)
        if problems:
            with seen.lock:
                seen.problems.append(f"{what} {body['description']!r}: {problems}")

    def exchange_body(step: int, item: int | None = None) -> dict[str, Any]:
        provider, receiver = rng.sample(MEMBERS, 2)
        tag = f"c{number}-s{step}" + (f"-i{item}" if item is not None else "")
        body: dict[str, Any] = {
            "provider": provider,
            "receiver": receiver,
            "amount": rng.randint(1, 7),
            "description": f"{tag} {uuid.uuid4().hex[:8]}",
        }
        if rng.random() < 0.3:
            body["external_id"] = f"ext-{tag}-{uuid.uuid4().hex[:8]}"
        return body

    try:
        for step in range(STEPS_PER_THREAD):
            community = rng.choice(COMMUNITIES)
            client = clients[community]
            policy = POLICIES[community]
            path = f"/v1/communities/{community}/exchanges"
            key = str(uuid.uuid4()) if rng.random() < 0.5 else None
            choice = rng.random()
            if choice < 0.45:
                body = exchange_body(step)
                response = send(client, path, body, key)
                note("post", response)
                if response.status_code == 201:
                    document = response.json()
                    mismatch(
                        "post",
                        body,
                        document,
                        community=community,
                        status="completed",
                        policy=policy,
                    )
                    with seen.lock:
                        seen.completed[community][document["id"]] = body
            elif choice < 0.6:
                items = [exchange_body(step, n) for n in range(rng.randint(2, 4))]
                response = send(client, f"{path}:batch", {"exchanges": items}, key)
                note("batch", response)
                if response.status_code == 201:
                    documents = response.json()["exchanges"]
                    if len(documents) != len(items):
                        with seen.lock:
                            seen.problems.append(f"batch of {len(items)}: {len(documents)} back")
                    for body, document in zip(items, documents, strict=False):
                        mismatch(
                            "batch item",
                            body,
                            document,
                            community=community,
                            status="completed",
                            policy=policy,
                        )
                        with seen.lock:
                            seen.completed[community][document["id"]] = body
            elif choice < 0.85:
                body = exchange_body(step)
                response = send(client, path, {**body, "pending": True}, key)
                note("propose", response)
                if response.status_code == 201:
                    document = response.json()
                    mismatch(
                        "proposal",
                        body,
                        document,
                        community=community,
                        status="pending",
                        policy=policy,
                    )
                    with seen.lock:
                        seen.proposals[community][document["id"]] = body
                        seen.open.append((community, document["id"]))
                        if rng.random() < 0.2:  # two clients will race to settle it
                            seen.open.append((community, document["id"]))
            else:
                with seen.lock:
                    if not seen.open:
                        continue
                    community, proposal = seen.open.pop(rng.randrange(len(seen.open)))
                client = clients[community]
                policy = POLICIES[community]
                path = f"/v1/communities/{community}/exchanges"
                action = rng.choice(["accept", "accept", "accept", "reject", "cancel"])
                response = send(client, f"{path}/{proposal}/{action}", {}, key)
                code = note(action, response)
                if response.status_code == 200:
                    document = response.json()
                    body = seen.proposals[community][proposal]
                    status = {"accept": "completed", "reject": "rejected", "cancel": "cancelled"}
                    if document["id"] != proposal:
                        seen.problems.append(f"{action} {proposal} answered {document['id']}")
                    mismatch(
                        action,
                        body,
                        document,
                        community=community,
                        status=status[action],
                        policy=policy,
                    )
                    with seen.lock:
                        if proposal in seen.settled:
                            seen.problems.append(f"{proposal} settled twice")
                        seen.settled[proposal] = action
                        if action == "accept":
                            seen.completed[community][proposal] = body
                elif code != "invalid_state":
                    with seen.lock:
                        seen.problems.append(f"{action}: {response.status_code} {response.text}")
    except Exception as error:
        with seen.lock:
            seen.problems.append(f"client {number}: {error!r}")
    finally:
        for client in clients.values():
            client.close()


@pytest.mark.slow
def test_every_answer_is_its_own_requests_and_each_ledger_holds_exactly_the_acknowledged(
    server: LiveServer,
) -> None:
    if server.backend == "postgresql":
        lanes = Counter(lane(c) for c in COMMUNITIES)
        assert sorted(lanes.values()) == [1, 2, 2], "two pairs of communities must share a lane"
    tokens: dict[str, str] = {}
    auditors: dict[str, str] = {}
    for community in COMMUNITIES:
        keys = create_tight_community(server, community, MEMBERS, LOWER, UPPER)
        tokens[community], auditors[community] = keys["app"], keys["auditor"]
        policy = POLICIES[community]
        if policy is not None:
            admin_call(
                server,
                "PATCH",
                f"/v1/communities/{community}",
                json={"policy": {"levy": policy.as_json()}},
            )
    metrics_before = group_commit_sizes(metrics(server))

    seen = Expectations()
    threads = [
        threading.Thread(target=run_client, args=(n, server, tokens, seen), name=f"client-{n}")
        for n in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "clients still running after 300 s"
    print(f"\n[{server.backend}] {sorted(seen.answers.items(), key=str)}")

    assert not seen.problems, seen.problems[:10]
    for kind in ("post", "batch", "propose"):
        assert seen.answers[(kind, 201, None)] > 0, kind
    assert seen.answers[("accept", 200, None)] > 0
    assert seen.answers[("reject", 200, None)] + seen.answers[("cancel", 200, None)] > 0
    assert seen.answers[("post", 409, "limit_exceeded")] > 0, "the limits were never tight"
    assert seen.answers[("batch", 409, "limit_exceeded")] > 0, "no batch was refused"
    groups, single = group_commit_sizes(metrics(server))
    assert groups - metrics_before[0] > single - metrics_before[1], "no group of 2+ formed"

    admin = server.admin_token
    for community in COMMUNITIES:
        policy = POLICIES[community]
        acknowledged = seen.completed[community]
        assert acknowledged, f"nothing acknowledged in {community}"
        ledger = read_ledger(server, community, admin)
        # Exactly the acknowledged exchanges, each once, each as its request asked.
        assert [x["seq"] for x in ledger] == list(range(1, len(ledger) + 1)), community
        assert len({x["id"] for x in ledger}) == len(ledger), community
        assert {x["id"] for x in ledger} == set(acknowledged), community
        for recorded in ledger:
            body = acknowledged[recorded["id"]]
            assert (
                answer_mismatches(
                    body, recorded, community=community, status="completed", policy=policy
                )
                == []
            ), (community, recorded)
        descriptions = Counter(x["description"] for x in ledger)
        assert max(descriptions.values()) == 1, descriptions.most_common(3)

        # Balances are a replay of the acknowledged requests; reservations are what the
        # still-pending proposals' requests hold.
        page = read_json(server, f"/v1/communities/{community}/balances?limit=1000", admin)
        assert page["sum"] == 0
        assert page["as_of_seq"] == len(ledger)
        shown = {i["account"]: i["balance"] for i in page["items"] if i["balance"]}
        assert shown == replay_bodies(acknowledged.values(), policy), community
        assert all(
            LOWER <= i["balance"] <= UPPER for i in page["items"] if i["account"] != "@commons"
        )
        still_pending = {
            proposal: body
            for proposal, body in seen.proposals[community].items()
            if proposal not in seen.settled
        }
        listed = read_pending(server, community, admin)
        assert set(listed) == set(still_pending), community
        reserved = expected_reservations_from_bodies(still_pending.values(), policy)
        for account in [*MEMBERS, "@commons"]:
            balance = read_json(
                server, f"/v1/communities/{community}/members/{account}/balance", admin
            )
            assert (balance["reserved_debit"], balance["reserved_credit"]) == reserved.get(
                account, (0, 0)
            ), (community, account, balance)

        audit = read_json(server, f"/v1/communities/{community}/audit", auditors[community])
        assert audit["ok"], (community, audit["problems"])
        assert audit["checked_exchanges"] == len(ledger)


def metrics(server: LiveServer) -> str:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {server.admin_token}"})
    assert response.status_code == 200, response.text
    return response.text


def read_pending(server: LiveServer, community: str, token: str) -> list[str]:
    with httpx.Client(
        base_url=server.base_url, timeout=60.0, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        items: list[str] = []
        params: dict[str, Any] = {"status": "pending", "limit": 1000}
        while True:
            page = client.get(f"/v1/communities/{community}/exchanges", params=params).json()
            items.extend(item["id"] for item in page["items"])
            if page["next_cursor"] is None:
                return items
            params["cursor"] = page["next_cursor"]
