"""Helpers shared by the fault, durability and backup tests: a live server on a database the test
made itself (a private PostgreSQL server, a restored backup), a server that restarts in a
fraction of a second (for tests that kill it many times), and checks of a finished load."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database, migrate
from tests.support.api import make_key
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.live_server import (
    _SERVERS,
    READY_TIMEOUT_S,
    ExchangeLoad,
    LiveServer,
    free_port,
    nonzero,
    read_json,
    read_ledger,
    replay,
)


@contextlib.contextmanager
def serving(
    request: pytest.FixtureRequest,
    *,
    backend: str,
    database_url: str,
    workdir: Path,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    admin_token: str | None = None,
) -> Iterator[LiveServer]:
    """`protocoop serve` on an existing, migrated database, started and ready (with a new admin
    key unless one is given); stopped afterwards. Its log is attached to a failing test."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = LiveServer(
        backend=backend,
        database_url=database_url,
        workdir=workdir,
        auto_migrate=False,
        workers=workers,
        extra_env=extra_env,
    )
    request.node.stash.setdefault(_SERVERS, []).append(server)
    if admin_token is None:
        db = Database(server.settings(), pooled=False)
        try:
            admin_token = make_key(db, Role.ADMIN)
        finally:
            db.dispose()
    server.admin_token = admin_token
    try:
        server.start()
        yield server
    finally:
        server.stop()


def check_ledger_matches_load(
    server: LiveServer, community: str, load: ExchangeLoad
) -> list[dict[str, Any]]:
    """After a load whose every request carried an Idempotency-Key and got a final answer: the
    ledger holds exactly the acknowledged exchanges, once each, gap-free, its balances are the
    replay of its exchanges, and the audit is ok. Returns the ledger."""
    admin = server.admin_token
    ledger = read_ledger(server, community, admin)
    ids = [x["id"] for x in ledger]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(load.acknowledged), (
        f"{len(set(ids) - set(load.acknowledged))} recorded but never acknowledged, "
        f"{len(set(load.acknowledged) - set(ids))} acknowledged but missing"
    )
    assert [x["seq"] for x in ledger] == list(range(1, len(ledger) + 1))
    by_id = {x["id"]: x for x in ledger}
    for exchange_id, acknowledged in load.acknowledged.items():
        assert by_id[exchange_id]["hash"] == acknowledged["hash"], exchange_id
    page = read_json(server, f"/v1/communities/{community}/balances?limit=1000", admin)
    balances = {item["account"]: item["balance"] for item in page["items"]}
    assert page["sum"] == 0
    assert page["as_of_seq"] == len(ledger)
    assert nonzero(balances) == nonzero(replay(ledger))
    audit = read_json(server, f"/v1/communities/{community}/audit", admin)
    assert audit["ok"], audit["problems"]
    assert audit["checked_exchanges"] == len(ledger)
    return ledger


_ZYGOTE = """
import os, signal, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed servers are reaped by the kernel
from protocoop.cli import app  # what a start costs; paid once. No database is opened here.
while True:
    line = sys.stdin.readline()
    if not line:
        break
    port, log_path = line.split()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 1
        try:
            app(["serve", "--host", "127.0.0.1", "--port", port, "--workers", "1"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


class ForkedServer:
    """`protocoop serve --workers 1`, forked from a process that has already imported protocoop,
    so that a start costs a fork and the app's startup rather than an interpreter's imports.
    Each start is a new process in a new session, which `kill()` SIGKILLs as a whole: a crash.
    The same interface as `LiveServer` for what the tests use."""

    def __init__(
        self, *, backend: str, database_url: str, workdir: Path, extra_env: dict[str, str]
    ) -> None:
        self.backend = backend
        self.database_url = database_url
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.starts = 0
        self.admin_token = ""
        self.pid: int | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
        env.update(
            PROTOCOOP_DATABASE_URL=database_url,
            PROTOCOOP_AUTO_MIGRATE="false",
            PROTOCOOP_LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
            **extra_env,
        )
        self._zygote = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.pid is not None and _group_alive(self.pid)

    def start(self) -> None:
        assert not self.running, "the server is already running"
        assert self._zygote.stdin is not None
        assert self._zygote.stdout is not None
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} on port {self.port} =====\n".encode())
        self._zygote.stdin.write(f"{self.port} {self.log_path}\n")
        self._zygote.stdin.flush()
        self.pid = int(self._zygote.stdout.readline())
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not _group_alive(self.pid):
                    raise RuntimeError(f"protocoop serve exited; its log:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.base_url}/readyz").status_code == 200:
                        return
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"protocoop serve was not ready; its log:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server's whole process group and wait until it is gone."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self) -> None:
        """Kill the server (if it runs) and end the process it was forked from."""
        self.kill()
        if self._zygote.stdin is not None and not self._zygote.stdin.closed:
            self._zygote.stdin.close()
        try:
            self._zygote.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._zygote.kill()
            self._zygote.wait(timeout=15)

    def log_tail(self, size: int = 20_000) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_bytes()[-size:].decode(errors="replace")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def forked_serving(
    request: pytest.FixtureRequest,
    *,
    backend: str,
    database_url: str,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    admin_token: str | None = None,
) -> Iterator[ForkedServer]:
    """A started `ForkedServer` on an existing, migrated database (with a new admin key unless
    one is given); stopped afterwards. Its log is attached to a failing test."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = ForkedServer(
        backend=backend, database_url=database_url, workdir=workdir, extra_env=extra_env or {}
    )
    request.node.stash.setdefault(_SERVERS, []).append(server)  # type: ignore[arg-type]
    try:
        if admin_token is None:
            settings = Settings(database_url=database_url, auto_migrate=False, _env_file=None)  # type: ignore[call-arg]
            db = Database(settings, pooled=False)
            try:
                admin_token = make_key(db, Role.ADMIN)
            finally:
                db.dispose()
        server.admin_token = admin_token
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A migrated database of the backend: a SQLite file, or a PostgreSQL database on the
    shared test server (created for this test, dropped after it)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'protocoop.db'}"
        migrate.upgrade(url)
        yield url
        return
    server_url: str = request.getfixturevalue("postgres_server_url")
    url = create_postgres_database(server_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_postgres_database(server_url, url)
