"""The client's exactly-once promise across a server crash, on SQLite and PostgreSQL: app
threads post through `protocoop.client.Client` while the server is killed (`kill -9`) and
started again. Every call ends with its exchange recorded, and the ledger holds each of them
exactly once: none lost, none doubled, each under the id its call returned.

Not `exclusive`: nothing here depends on timing (the kill may land anywhere, and each call has
90 s to ride it out), so it shares the machine with the parallel pass.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from protocoop.client import Client, RetryPolicy
from protocoop.ledger.schemas import ExchangePublic
from tests.support.live_server import LiveServer, create_tight_community, read_ledger

MEMBERS = [f"member-{n}" for n in range(8)]
THREADS = 4
POSTS_PER_THREAD = 60
KILL_AFTER = 60
"""The server is killed once this many posts have come back."""


def test_posts_through_the_client_survive_a_server_restart_exactly_once(
    live_server: LiveServer,
) -> None:
    server = live_server
    tokens = create_tight_community(server, "crash-coop", MEMBERS, -(10**9), 10**9)
    results: list[ExchangePublic] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def post_all(thread: int) -> None:
        # Long enough to ride out the restart; the client keeps each call's key meanwhile.
        with Client(server.base_url, tokens["app"], retry=RetryPolicy(total_s=90.0)) as app:
            for n in range(POSTS_PER_THREAD):
                provider, receiver = MEMBERS[(thread + n) % 8], MEMBERS[(thread + n + 1) % 8]
                try:
                    exchange = app.exchanges.post(
                        "crash-coop",
                        provider=provider,
                        receiver=receiver,
                        amount=1 + n,
                        description=f"thread {thread} post {n}",
                    )
                except BaseException as error:
                    failures.append(error)
                    return
                with lock:
                    results.append(exchange)

    threads = [threading.Thread(target=post_all, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(results) < KILL_AFTER and time.monotonic() < deadline and not failures:
        time.sleep(0.01)
    acknowledged_before_kill = len(results)
    server.kill()
    time.sleep(1.0)  # the clients meet refused connections for a while
    server.start()
    for thread in threads:
        thread.join(timeout=180)

    assert not failures, failures
    assert acknowledged_before_kill < THREADS * POSTS_PER_THREAD, "the kill came after the load"
    assert len(results) == THREADS * POSTS_PER_THREAD
    ledger = read_ledger(server, "crash-coop", tokens["auditor"])
    descriptions = Counter(exchange["description"] for exchange in ledger)
    assert [d for d, times in descriptions.items() if times > 1] == []
    assert {exchange["id"] for exchange in ledger} == {result.id for result in results}
    by_id = {exchange["id"]: exchange for exchange in ledger}
    for result in results:
        assert by_id[result.id]["description"] == result.description
        assert by_id[result.id]["amount"] == result.amount
