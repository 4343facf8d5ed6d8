"""Database faults under a real `protocoop serve` (`--workers 2` for the load tests; the forked
one-worker server of `tests.support.faults`, which starts faster, for the others).

PostgreSQL (a private server of the test's own, never the shared one): while clients post
exchanges with Idempotency-Keys and retry every `503`, the database is restarted, or crashes and
refuses connections for a few seconds before it comes back, or hangs (SIGSTOP: connections stay
open, nothing answers) for longer than any request may take. Every answer in the meantime is a
prompt `503 unavailable` problem document (never a 500, never a request that hangs past the
configured timeouts), the server recovers by itself, and afterwards the ledger holds exactly the
exchanges clients saw acknowledged, once each, and the audit is ok. Another session holding the
community's ledger lock past the lock timeout gets the same prompt 503s, and so does a request
that finds no free pooled connection (both databases).

SQLite: another process holding the write lock (`BEGIN IMMEDIATE`) makes posts answer `503`
after the busy timeout (reads go on: WAL), and the same requests succeed once it lets go.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from protocoop.app import create_app
from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import migrate
from tests.support.api import make_key
from tests.support.faults import (
    check_ledger_matches_load,
    forked_serving,
    serving,
)
from tests.support.live_server import ExchangeLoad, Timing, create_tight_community
from tests.support.private_postgres import PrivatePostgres

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

COMMUNITY = "fault-coop"
MEMBERS = [f"member-{n}" for n in range(10)]
LOWER, UPPER = -40, 40

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 3000
POSTGRES_ENV = {
    "PROTOCOOP_DB_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
    "PROTOCOOP_DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
}
REQUEST_BOUND_S = 2 * (CONNECT_TIMEOUT_S + STATEMENT_TIMEOUT_MS / 1000) + 1.0
"""The longest a request may take while the database fails. A post waits for the group commit
ahead of it and then for its own, and each gives up after the connect timeout (no free pooled
connection, or no answer to connecting or to the check of a pooled connection) plus a lock or
statement timeout (enforced by the server, or — when the server hangs — by protocoop's
watchdog); plus slack for a busy machine. A request that takes longer is hanging."""
OUTAGE_S = 3.0
HANG_S = REQUEST_BOUND_S + 3.0
ACKNOWLEDGED_BEFORE_FAULT = 50

BLOCKED_POSTS = 16

BUSY_TIMEOUT_MS = 500
LOCKED_POSTS = 6


def test_no_free_connection_answers_503_after_the_pool_timeout(database_url: str) -> None:
    """Every pooled connection busy (slow queries, a lock): a request waits the pool timeout
    (the connect timeout) for one, then answers 503 — not a 500, not an endless wait."""
    settings = Settings(  # type: ignore[call-arg]
        database_url=database_url,
        auto_migrate=False,
        expiry_sweep_s=0,
        db_pool_size=1,
        db_connect_timeout_s=1,
        _env_file=None,
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        db = app.state.db
        token = make_key(db, Role.ADMIN)
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/communities", headers=headers).status_code == 200
        with contextlib.ExitStack() as held:
            pool = db.engine.pool
            for _ in range(pool.size() + pool._max_overflow):
                held.enter_context(db.engine.connect()).exec_driver_sql("SELECT 1")
            began = time.monotonic()
            response = client.get("/v1/communities", headers=headers)
            seconds = time.monotonic() - began
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "unavailable"
        assert 0.9 <= seconds <= settings.db_connect_timeout_s + 2.0
        # and once connections are free again, it serves
        assert client.get("/v1/communities", headers=headers).status_code == 200


def _problem_503s_only(timings: list[Timing]) -> list[str]:
    """Answers that are neither a success or refusal (< 500) nor a `503 unavailable` problem."""
    return [
        f"{t.status} {t.code} {t.content_type!r} after {t.seconds:.2f}s"
        for t in timings
        if t.status == 0
        or (t.status >= 500 and (t.status, t.code) != (503, "unavailable"))
        or (t.status == 503 and not t.content_type.startswith("application/problem+json"))
    ]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["restart", "refuse", "hang"])
def test_postgres_restart_or_outage_answers_503_and_loses_no_acknowledged_exchange(
    fault: str, private_postgres: PrivatePostgres, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    migrate.upgrade(private_postgres.url)
    with serving(
        request,
        backend="postgresql",
        database_url=private_postgres.url,
        workdir=tmp_path / "server",
        extra_env=POSTGRES_ENV,
    ) as server:
        tokens = create_tight_community(server, COMMUNITY, MEMBERS, LOWER, UPPER)
        load = ExchangeLoad(
            base_url=server.base_url,
            community=COMMUNITY,
            members=MEMBERS,
            app_token=tokens["app"],
            auditor_token=tokens["auditor"],
            threads=6,
            exchanges_per_thread=60,
            idempotent_share=1.0,
            seed={"restart": 11, "refuse": 13, "hang": 17}[fault],
        )
        load.start()
        deadline = time.monotonic() + 120
        while len(load.acknowledged) < ACKNOWLEDGED_BEFORE_FAULT and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(load.acknowledged) >= ACKNOWLEDGED_BEFORE_FAULT, load.summary()

        fault_began = time.monotonic()
        if fault == "restart":
            private_postgres.restart()
        elif fault == "refuse":  # a crash, then nobody listening on the port for a few seconds
            private_postgres.stop("immediate")
            time.sleep(OUTAGE_S)
            private_postgres.start()
        else:  # the server hangs for longer than any request may take, then goes on
            private_postgres.freeze()
            time.sleep(HANG_S)
            private_postgres.thaw()
        fault_ended = time.monotonic()
        load.join(timeout_s=300)
        print(
            f"\n[{fault}] fault for {fault_ended - fault_began:.1f}s; {load.summary()}; "
            f"slowest answer {max(t.seconds for t in load.timings):.2f}s"
        )

        assert _problem_503s_only(load.timings) == [], load.summary()
        unavailable = [t for t in load.timings if t.status == 503]
        assert unavailable, f"no request met the fault: it proves nothing; {load.summary()}"
        slow = [t for t in load.timings if t.seconds > REQUEST_BOUND_S]
        assert slow == [], f"requests took longer than {REQUEST_BOUND_S}s: {slow[:5]}"
        # The same server, never restarted, went on acknowledging exchanges after the fault.
        assert server.starts == 1
        assert server.running
        assert any(t.status == 201 and t.sent_at > fault_ended for t in load.timings), (
            load.summary()
        )
        assert not load.idempotency_violations(), load.idempotency_violations()[:3]
        assert all(" 503 " in f" {e}" for e in load.read_errors), load.read_errors[:3]

        check_ledger_matches_load(server, COMMUNITY, load)
        assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200


@pytest.mark.slow
def test_postgres_ledger_locked_by_another_session_answers_503_within_the_timeouts(
    private_postgres: PrivatePostgres, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An admin's session (or a stuck job) holds the community's ledger row lock longer than the
    lock timeout, while more requests arrive than the server has connections: posts give up
    with 503 at the lock timeout, the requests queued for a connection with 503 at the pool
    timeout, reads go on, and once the lock is gone the same requests succeed, once each."""
    migrate.upgrade(private_postgres.url)
    with forked_serving(
        request,
        backend="postgresql",
        database_url=private_postgres.url,
        workdir=tmp_path / "server",
        # two connections (and two more on overflow) for many concurrent requests
        extra_env={**POSTGRES_ENV, "PROTOCOOP_DB_POOL_SIZE": "2"},
    ) as server:
        tokens = create_tight_community(server, COMMUNITY, MEMBERS, LOWER, UPPER)
        exchanges_url = f"{server.base_url}/v1/communities/{COMMUNITY}/exchanges"
        headers = {"Authorization": f"Bearer {tokens['app']}"}
        bodies = {
            f"blocked-{n}": {
                "provider": MEMBERS[n % 10],
                "receiver": MEMBERS[(n + 1) % 10],
                "amount": 1,
                "description": f"posted while the ledger is locked {n}",
            }
            for n in range(BLOCKED_POSTS)
        }

        def post(client: httpx.Client, key: str) -> tuple[httpx.Response, float]:
            began = time.monotonic()
            response = client.post(
                exchanges_url, json=bodies[key], headers={**headers, "Idempotency-Key": key}
            )
            return response, time.monotonic() - began

        blocker = create_engine(private_postgres.url, poolclass=NullPool)
        try:
            with blocker.connect() as connection, connection.begin():
                connection.execute(
                    text("SELECT * FROM ledger_heads WHERE community_id = :c FOR UPDATE"),
                    {"c": COMMUNITY},
                )
                limits = httpx.Limits(max_connections=BLOCKED_POSTS)
                with (
                    httpx.Client(timeout=60, limits=limits) as client,
                    ThreadPoolExecutor(BLOCKED_POSTS) as pool,
                ):
                    answers = list(pool.map(lambda key: post(client, key), bodies))
                connection.rollback()
        finally:
            blocker.dispose()
        print(
            "\n[locked ledger] answers:",
            sorted((r.status_code, r.json().get("code"), round(s, 2)) for r, s in answers),
        )
        for response, seconds in answers:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "unavailable"
            assert seconds <= REQUEST_BOUND_S, seconds

        with httpx.Client(timeout=60) as client:
            acknowledged = {}
            for key in bodies:
                response, _ = post(client, key)
                assert response.status_code == 201, response.text
                acknowledged[response.json()["id"]] = response.json()
        ledger = client_ledger(server.base_url, server.admin_token)
        assert sorted(x["id"] for x in ledger) == sorted(acknowledged)


HOLD_WRITE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
connection.close()
"""


@pytest.mark.slow
def test_sqlite_write_lock_held_by_another_process_answers_503_after_the_busy_timeout(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path = tmp_path / "protocoop.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    with forked_serving(
        request,
        backend="sqlite",
        database_url=url,
        workdir=tmp_path / "server",
        extra_env={"PROTOCOOP_SQLITE_BUSY_TIMEOUT_MS": str(BUSY_TIMEOUT_MS)},
    ) as server:
        tokens = create_tight_community(server, COMMUNITY, MEMBERS, LOWER, UPPER)
        exchanges_url = f"{server.base_url}/v1/communities/{COMMUNITY}/exchanges"
        app_headers = {"Authorization": f"Bearer {tokens['app']}"}
        bodies = {
            f"locked-{n}": {
                "provider": MEMBERS[n],
                "receiver": MEMBERS[n + 1],
                "amount": n + 1,
                "description": f"posted while locked {n}",
            }
            for n in range(LOCKED_POSTS)
        }

        def post(client: httpx.Client, key: str) -> tuple[httpx.Response, float]:
            began = time.monotonic()
            response = client.post(
                exchanges_url, json=bodies[key], headers={**app_headers, "Idempotency-Key": key}
            )
            return response, time.monotonic() - began

        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_WRITE_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdin is not None
            assert holder.stdout.readline().strip() == "locked"
            with httpx.Client(timeout=30) as client, ThreadPoolExecutor(LOCKED_POSTS) as pool:
                answers = list(pool.map(lambda key: post(client, key), bodies))
                # Readers are not blocked by a writer (WAL).
                balance = client.get(
                    f"{server.base_url}/v1/communities/{COMMUNITY}/members/member-0/balance",
                    headers=app_headers,
                )
                assert balance.status_code == 200, balance.text
            for response, seconds in answers:
                assert response.status_code == 503, response.text
                assert response.headers["content-type"].startswith("application/problem+json")
                assert response.json()["code"] == "unavailable"
                assert response.headers.get("retry-after")
                # after the busy timeout (one wait for this process's lock, one for SQLite's)
                assert BUSY_TIMEOUT_MS / 1000 * 0.9 <= seconds <= 2 * BUSY_TIMEOUT_MS / 1000 + 2.0
        finally:
            if holder.stdin is not None and not holder.stdin.closed:
                holder.stdin.write("release\n")
                holder.stdin.close()
            holder.wait(timeout=30)

        # Once the lock is released the same requests go through, each exactly once.
        with httpx.Client(timeout=30) as client:
            acknowledged = {}
            for key in bodies:
                response, _ = post(client, key)
                assert response.status_code == 201, response.text
                acknowledged[response.json()["id"]] = response.json()
                again, _ = post(client, key)
                assert (again.status_code, again.content) == (201, response.content)
        ledger = client_ledger(server.base_url, server.admin_token)
        assert sorted(x["id"] for x in ledger) == sorted(acknowledged)
        audit = httpx.get(
            f"{server.base_url}/v1/communities/{COMMUNITY}/audit",
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=30,
        ).json()
        assert audit["ok"], audit["problems"]


def client_ledger(base_url: str, token: str) -> list[dict[str, object]]:
    response = httpx.get(
        f"{base_url}/v1/communities/{COMMUNITY}/exchanges",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return list(json.loads(response.content)["items"])
