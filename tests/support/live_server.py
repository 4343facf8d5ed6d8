"""A real `protocoop serve --workers 2` process for end-to-end tests (concurrency, crashes).

`live_server` starts the server on a fresh, migrated database of the test's backend (a SQLite file
in the test's temporary directory, or a PostgreSQL database created for the test and dropped after
it), waits for `/readyz`, and hands the test a `LiveServer` with its base URL and an admin token.
The server runs in its own session (process group), so `kill()` sends SIGKILL to the supervisor
and both workers at once — a crash, not a shutdown — and `start()` brings it back on the same
database and port. Whatever happens, the process group is killed and the database dropped at the
end. The server's output goes to a log file that is attached to the report of a failing test.

`tests/conftest.py` registers this module as a plugin (its fixtures and the report hook) and has
pytest rewrite the asserts of every `tests.support` module, so they explain themselves; a test
asks for a `live_server` argument.

`ExchangeLoad` is the load the concurrency and crash tests share: client threads posting random
exchanges (half with an Idempotency-Key, retried, sometimes concurrently from another thread) and a
thread reading `/balances` in a loop, recording every answer for the checks afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database, migrate
from tests.support.api import every_item, make_key
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.processes import process_table

READY_TIMEOUT_S = 60.0
LOG_TAIL_BYTES = 20_000
IN_PROGRESS_BACKOFF_S = 0.05
"""How long a client waits before asking again after `409 request_in_progress`."""
READ_PAUSE_S = 0.05
"""The balance reader's pause between reads (so that it does not take a core of two)."""
_SERVERS = pytest.StashKey[list["LiveServer"]]()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def protocoop_command() -> list[str]:
    """The `protocoop` console script of the interpreter running the tests."""
    script = Path(sys.executable).with_name("protocoop")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from protocoop.cli import main; main()"]


class LiveServer:
    """One `protocoop serve` process group on one database; restartable after a kill."""

    def __init__(
        self,
        *,
        backend: str,
        database_url: str,
        workdir: Path,
        auto_migrate: bool,
        workers: int = 2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.database_url = database_url
        self.workdir = workdir
        self.auto_migrate = auto_migrate
        self.workers = workers
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.admin_token = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> Settings:
        """Settings for direct database access beside the server (arranging, inspecting)."""
        return Settings(database_url=self.database_url, auto_migrate=False, _env_file=None)  # type: ignore[call-arg]

    def _environment(self) -> dict[str, str]:
        # Nothing PROTOCOOP_* leaks in from the test run; the working directory has no `.env`.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
        env.update(
            PROTOCOOP_DATABASE_URL=self.database_url,
            PROTOCOOP_AUTO_MIGRATE="true" if self.auto_migrate else "false",
            PROTOCOOP_SQLITE_SYNCHRONOUS="FULL",
            PROTOCOOP_LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the server (again, after `kill`, on the same database) and wait until ready."""
        assert not self.running, "the server is already running"
        for attempt in range(3):
            self.starts += 1
            with self.log_path.open("ab") as log:
                log.write(f"\n===== start #{self.starts} on port {self.port} =====\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    [
                        *protocoop_command(),
                        "serve",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--workers",
                        str(self.workers),
                    ],
                    cwd=self.workdir,
                    env=self._environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                self._wait_ready()
                return
            except _PortTaken:
                self._kill_group(signal.SIGKILL)
                if attempt == 2:
                    raise
                self.port = free_port()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    log = self.log_tail()
                    if "address already in use" in log.lower().rsplit("===== start", 1)[-1]:
                        raise _PortTaken(log)
                    raise RuntimeError(
                        f"protocoop serve exited with {self.process.returncode} before it was "
                        f"ready; its log:\n{log}"
                    )
                try:
                    response = client.get(f"{self.base_url}/readyz")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.TransportError as error:
                    last = repr(error)
                time.sleep(0.1)
        self._kill_group(signal.SIGKILL)
        raise RuntimeError(
            f"protocoop serve was not ready within {READY_TIMEOUT_S}s (last: {last}); its log:\n"
            f"{self.log_tail()}"
        )

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """`kill -9` the whole process group (supervisor and workers) and reap it: a crash."""
        assert self.process is not None
        self._kill_group(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._wait_group_gone()

    def stop(self) -> None:
        """A graceful stop (SIGTERM), then SIGKILL for anything left; safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._kill_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        self._kill_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        self._wait_group_gone()

    def _wait_group_gone(self, timeout_s: float = 10.0) -> None:
        """Wait until no process of the group is left alive. Orphans (the workers, and
        multiprocessing's resource tracker) are reaped by init, which on some machines takes
        seconds; a zombie holds no port, file or lock, so it counts as gone."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            time.sleep(0.05)

    def log_tail(self) -> str:
        """The end of the server's log (stdout and stderr of every start)."""
        if not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()
        prefix = "...\n" if len(data) > LOG_TAIL_BYTES else ""
        return prefix + data[-LOG_TAIL_BYTES:].decode(errors="replace")


def _group_alive(group: int) -> bool:
    """Whether a process of process group `group` is alive (running, sleeping or stopped, not
    a zombie). Reads /proc where there is one; elsewhere any process of the group counts."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    return any(pgrp == group and state != "Z" for _, state, _, pgrp in process_table())


class _PortTaken(RuntimeError):
    """Another process bound the port between `free_port()` and the server's bind."""


@contextlib.contextmanager
def serving(
    backend: str,
    workdir: Path,
    request: pytest.FixtureRequest,
    extra_env: dict[str, str] | None = None,
) -> Iterator[LiveServer]:
    """`protocoop serve --workers 2` on a fresh, migrated database of `backend` in `workdir`,
    ready, with `admin_token`, and `extra_env` in its environment; stopped (and its PostgreSQL
    database dropped) afterwards. A failing test's report shows its log."""
    server_url: str | None = None
    if backend == "sqlite":
        database_url = f"sqlite:///{workdir / 'protocoop.db'}"
    else:
        server_url = str(request.getfixturevalue("postgres_server_url"))
        database_url = create_postgres_database(server_url)
    server = LiveServer(
        backend=backend,
        database_url=database_url,
        workdir=workdir,
        # SQLite's default (serve migrates an embedded file); PostgreSQL admins migrate.
        auto_migrate=backend == "sqlite",
        extra_env=extra_env,
    )
    request.node.stash.setdefault(_SERVERS, []).append(server)
    try:
        migrate.upgrade(database_url)
        db = Database(server.settings(), pooled=False)
        try:
            server.admin_token = make_key(db, Role.ADMIN)
        finally:
            db.dispose()
        server.start()
        yield server
    finally:
        server.stop()
        if server_url is not None:
            drop_postgres_database(server_url, database_url)


@pytest.fixture
def live_server(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[LiveServer]:
    """A server of the test's backend for this test alone (see `serving`)."""
    workdir = tmp_path / "live-server"
    workdir.mkdir()
    with serving(backend, workdir, request) as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """Attach the server's log to the report of a test (or fixture) that failed."""
    report: pytest.TestReport = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            report.sections.append(
                (f"protocoop serve log ({server.backend}, {server.log_path})", server.log_tail())
            )
    return report


# --- a community and a load of random exchanges against a live server ----------------------------


def admin_call(server: LiveServer, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request as the server's admin; anything but 2xx fails the test."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.request(
            method,
            path,
            headers={"Authorization": f"Bearer {server.admin_token}"},
            **kwargs,  # type: ignore[arg-type]
        )
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return response


def create_tight_community(
    server: LiveServer, community: str, members: list[str], lower: int, upper: int
) -> dict[str, str]:
    """A community whose members all have limits [lower, upper]; returns app and auditor tokens."""
    admin_call(
        server,
        "POST",
        "/v1/communities",
        json={
            "id": community,
            "name": community.title(),
            "unit": {"code": "HOUR", "name": "hour", "scale": 0},
            "default_lower_limit": lower,
            "default_upper_limit": upper,
        },
    )
    for member in members:
        admin_call(
            server,
            "POST",
            f"/v1/communities/{community}/members",
            json={"id": member, "name": member.title()},
        )
    return {
        role: admin_call(
            server, "POST", "/v1/api-keys", json={"role": role, "community": community}
        ).json()["token"]
        for role in ("app", "auditor")
    }


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as the client saw it: status and the exact bytes of the body."""

    status: int
    content: bytes

    @property
    def code(self) -> str | None:
        """The problem `code` of an error answer."""
        if self.status < 400:
            return None
        try:
            return str(json.loads(self.content).get("code"))
        except ValueError:
            return None


@dataclass(frozen=True)
class Snapshot:
    """One read of `GET .../balances`."""

    as_of_seq: int
    sum: int
    balances: dict[str, int]
    limits: dict[str, tuple[int, int | None]]


@dataclass(frozen=True)
class Timing:
    """One POST of a load: when it was sent (monotonic), its duration and its answer."""

    sent_at: float
    seconds: float
    status: int
    content_type: str
    code: str | None


@dataclass
class ExchangeLoad:
    """Client threads posting random exchanges among `members` (half with an Idempotency-Key,
    which they also retry, sometimes concurrently from another thread), and one thread reading
    `/balances` in a loop. Collects every answer; `run()` blocks, `start()`/`join()` do not."""

    base_url: str
    community: str
    members: list[str]
    app_token: str
    auditor_token: str
    threads: int = 8
    exchanges_per_thread: int = 250
    max_amount: int = 10
    idempotent_share: float = 0.5
    seed: int = 20261126

    answers: Counter[tuple[int, str | None]] = field(default_factory=Counter)
    """Every HTTP answer received, by (status, problem code)."""
    sent: int = 0
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Exchange id -> the 201 body, for every distinct exchange acknowledged."""
    key_answers: dict[str, list[Answer]] = field(default_factory=lambda: defaultdict(list))
    """Idempotency-Key -> every final answer (not `request_in_progress`) it got."""
    key_bodies: dict[str, bytes] = field(default_factory=dict)
    lost: list[tuple[str | None, bytes]] = field(default_factory=list)
    """(key, request body) of requests that got no answer (transport error: the server died)."""
    server_errors: list[tuple[str | None, Answer]] = field(default_factory=list)
    """5xx answers (key, answer)."""
    snapshots: list[Snapshot] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    """Every POST: when it was sent, how long it took, and what came back (status 0: none)."""
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._duplicates: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._writers: list[threading.Thread] = []
        self._reader: threading.Thread | None = None
        self._writers_done = threading.Event()
        self._unkeyed = 0

    @property
    def exchanges_url(self) -> str:
        return f"{self.base_url}/v1/communities/{self.community}/exchanges"

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self._writers = [
            threading.Thread(target=self._write_loop, args=(n,), name=f"writer-{n}", daemon=True)
            for n in range(self.threads)
        ]
        self._reader = threading.Thread(target=self._read_loop, name="reader", daemon=True)
        for thread in self._writers:
            thread.start()
        self._reader.start()

    def join(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._writers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._writers_done.set()
        assert self._reader is not None
        self._reader.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in [*self._writers, self._reader] if t.is_alive()]
        assert not alive, f"load threads still running after {timeout_s}s: {alive}"

    def run(self) -> None:
        self.start()
        self.join()

    def final_answers(self) -> int:
        with self._lock:
            return sum(len(answers) for answers in self.key_answers.values()) + self._unkeyed

    # --- writers -------------------------------------------------------------------------------

    def _write_loop(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        with httpx.Client(timeout=60.0) as client:
            for index in range(self.exchanges_per_thread):
                if self.stop.is_set() or not self._send_a_duplicate(client):
                    return
                provider, receiver = rng.sample(self.members, 2)
                body = json.dumps(
                    {
                        "provider": provider,
                        "receiver": receiver,
                        "amount": rng.randint(1, self.max_amount),
                        "description": f"writer {number} exchange {index}",
                    }
                ).encode()
                if rng.random() >= self.idempotent_share:
                    if self._send(client, None, body) is None:
                        return
                    continue
                key = f"w{number}-{index}-{uuid.uuid4()}"
                if rng.random() < 0.5:
                    self._duplicates.put((key, body))  # another thread sends it too, maybe at once
                if self._send(client, key, body) is None:
                    return
                if self._send(client, key, body) is None:  # ...and this thread retries it
                    return
            while self._send_a_duplicate(client, stop_when_empty=True):
                pass

    def _send_a_duplicate(self, client: httpx.Client, *, stop_when_empty: bool = False) -> bool:
        """Send one queued duplicate if there is one; False when the server is gone (or, with
        `stop_when_empty`, when there was none)."""
        try:
            key, body = self._duplicates.get_nowait()
        except queue.Empty:
            return not stop_when_empty
        return self._send(client, key, body) is not None

    def _send(self, client: httpx.Client, key: str | None, body: bytes) -> Answer | None:
        """POST until a final answer: `request_in_progress` is retried, and so is a 503 when the
        request carries a key (the spec says that is safe). None when the server is gone."""
        headers = {
            "Authorization": f"Bearer {self.app_token}",
            "Content-Type": "application/json",
        }
        if key is not None:
            headers["Idempotency-Key"] = key
            with self._lock:
                assert self.key_bodies.setdefault(key, body) == body
        while True:
            try:
                with self._lock:
                    self.sent += 1
                began = time.monotonic()
                response = client.post(self.exchanges_url, content=body, headers=headers)
            except httpx.TransportError:
                with self._lock:
                    self.lost.append((key, body))
                    self.timings.append(Timing(began, time.monotonic() - began, 0, "", None))
                return None
            answer = Answer(response.status_code, response.content)
            with self._lock:
                self.timings.append(
                    Timing(
                        began,
                        time.monotonic() - began,
                        answer.status,
                        response.headers.get("content-type", ""),
                        answer.code,
                    )
                )
                self.answers[(answer.status, answer.code)] += 1
                if answer.status >= 500:
                    self.server_errors.append((key, answer))
            if answer.status == 409 and answer.code == "request_in_progress":
                time.sleep(IN_PROGRESS_BACKOFF_S)
                continue
            if answer.status == 503 and key is not None and not self.stop.is_set():
                time.sleep(0.05)
                continue
            self._record_final(key, answer)
            return answer

    def _record_final(self, key: str | None, answer: Answer) -> None:
        with self._lock:
            if key is None:
                self._unkeyed += 1
            else:
                self.key_answers[key].append(answer)
            if answer.status == 201:
                document = json.loads(answer.content)
                self.acknowledged.setdefault(document["id"], document)

    # --- the reader ----------------------------------------------------------------------------

    def _read_loop(self) -> None:
        headers = {"Authorization": f"Bearer {self.auditor_token}"}
        url = f"{self.base_url}/v1/communities/{self.community}/balances"
        with httpx.Client(timeout=60.0, headers=headers) as client:
            while not self._writers_done.is_set() and not self.stop.is_set():
                try:
                    response = client.get(url, params={"limit": 1000})
                except httpx.TransportError:
                    return
                time.sleep(READ_PAUSE_S)
                if response.status_code != 200:
                    self.read_errors.append(f"{response.status_code} {response.text[:300]}")
                    continue
                page = response.json()
                if page["next_cursor"] is not None:
                    self.read_errors.append("a page of 1000 did not hold every account")
                self.snapshots.append(
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

    # --- what the answers say ------------------------------------------------------------------

    def summary(self) -> str:
        final = Counter(a.status for answers in self.key_answers.values() for a in answers)
        by_status: Counter[int] = Counter()
        for (status, _), count in self.answers.items():
            by_status[status] += count
        others = {
            f"{status} {code}": count
            for (status, code), count in sorted(self.answers.items(), key=str)
            if status not in (201,)
        }
        return (
            f"{self.sent} requests: {by_status[201]} x 201 ({len(self.acknowledged)} distinct "
            f"exchanges), {by_status[409]} x 409, "
            f"{sum(by_status.values()) - by_status[201] - by_status[409]} other; "
            f"by code {others}; {len(self.key_answers)} idempotency keys "
            f"(final answers {dict(final)}); {len(self.lost)} lost; "
            f"{len(self.snapshots)} balance reads"
        )

    def idempotency_violations(self) -> list[str]:
        """Keys whose final answers differ (status or a single byte of the body)."""
        problems = []
        for key, answers in self.key_answers.items():
            first = answers[0]
            for other in answers[1:]:
                if other != first:
                    problems.append(
                        f"{key}: {first.status} {first.content[:120]!r} then "
                        f"{other.status} {other.content[:120]!r}"
                    )
        return problems


def replay(exchanges: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Balances from exchanges: the provider's goes up by `amount`, the receiver's down."""
    balances: dict[str, int] = defaultdict(int)
    for exchange in exchanges:
        balances[exchange["provider"]] += exchange["amount"]
        balances[exchange["receiver"]] -= exchange["amount"]
    return dict(balances)


def nonzero(balances: dict[str, int]) -> dict[str, int]:
    return {account: balance for account, balance in balances.items() if balance}


def snapshot_violations(
    snapshots: list[Snapshot], ledger: list[dict[str, Any]] | None = None
) -> list[str]:
    """Reads that did not sum to 0, held a balance outside its limits, went back in time, or
    (given the whole `ledger` in seq order) differ from a replay of the ledger up to their seq."""
    problems = []
    previous_seq = 0
    for n, snap in enumerate(snapshots):
        if snap.sum != 0 or sum(snap.balances.values()) != 0:
            problems.append(f"read {n} at seq {snap.as_of_seq}: sum {snap.sum}, {snap.balances}")
        for account, balance in snap.balances.items():
            lower, upper = snap.limits[account]
            if balance < lower or (upper is not None and balance > upper):
                problems.append(f"read {n}: {account} {balance} outside [{lower}, {upper}]")
        if snap.as_of_seq < previous_seq:
            problems.append(f"read {n} at seq {snap.as_of_seq} after a read at {previous_seq}")
        previous_seq = max(previous_seq, snap.as_of_seq)
    if ledger is not None:
        by_seq = sorted(snapshots, key=lambda s: s.as_of_seq)
        running: dict[str, int] = defaultdict(int)
        applied = 0
        for snap in by_seq:
            while applied < min(snap.as_of_seq, len(ledger)):
                exchange = ledger[applied]
                running[exchange["provider"]] += exchange["amount"]
                running[exchange["receiver"]] -= exchange["amount"]
                applied += 1
            if snap.as_of_seq > len(ledger):
                problems.append(f"read at seq {snap.as_of_seq} but the ledger has {len(ledger)}")
            elif nonzero(snap.balances) != nonzero(running):
                problems.append(
                    f"read at seq {snap.as_of_seq}: {nonzero(snap.balances)} but the ledger up "
                    f"to that seq gives {nonzero(running)}"
                )
    return problems


def read_ledger(server: LiveServer, community: str, token: str) -> list[dict[str, Any]]:
    """Every exchange of `community`, in seq order, following the cursor."""
    with httpx.Client(
        base_url=server.base_url, timeout=60.0, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        return every_item(client.get, f"/v1/communities/{community}/exchanges")


def read_json(server: LiveServer, path: str, token: str) -> dict[str, Any]:
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return dict(response.json())
