"""What the benchmarks share: fresh databases, a prepared community, a running server."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from protocoop.auth import service as keys_service
from protocoop.auth.roles import Role
from protocoop.communities import service as communities_service
from protocoop.communities.schemas import CommunityCreate
from protocoop.config import Settings
from protocoop.db import Database, migrate
from protocoop.members import service as members_service
from protocoop.members.schemas import MemberCreate

COMMUNITY = "bench"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
POSTGRES_URL = os.environ.get(
    "PROTOCOOP_BENCH_POSTGRES_URL",
    os.environ.get("PROTOCOOP_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def fresh_database(kind: str, workdir: Path, postgres_url: str) -> Iterator[str]:
    """The URL of an empty database of `kind`; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"protocoop_bench_{secrets.token_hex(6)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


MEMBER_PREFIX = "member-"


def prepare(database_url: str, members: int, community: str = COMMUNITY) -> tuple[str, list[str]]:
    """Migrate, create the community and its members (`member-0000`...); returns an app token
    of the community and the member ids."""
    migrate.upgrade(database_url)
    db = Database(Settings(database_url=database_url, auto_migrate=False, _env_file=None))  # type: ignore[call-arg]
    member_ids = [f"{MEMBER_PREFIX}{n:04d}" for n in range(members)]

    def arrange(session: Any) -> str:
        communities_service.create_community(
            session,
            CommunityCreate.model_validate(
                {
                    "id": community,
                    "name": "Bench",
                    "unit": {"code": "HOUR", "name": "hour", "scale": 0},
                    "default_lower_limit": -(10**12),
                    "default_upper_limit": None,
                }
            ),
        )
        for member_id in member_ids:
            members_service.create_member(
                session,
                community,
                MemberCreate.model_validate({"id": member_id, "name": member_id}),
            )
        created = keys_service.create_key(
            session, role=Role.APP, community_id=community, label="bench", created_by=None
        )
        return str(created.token)

    try:
        return db.run_write(arrange), member_ids
    finally:
        db.dispose()


# --- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(
    database_url: str, workdir: Path, workers: int, sqlite: bool
) -> Iterator[tuple[str, int]]:
    """`protocoop serve` in its own process group; yields (base URL, group id)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env.update(
        PROTOCOOP_DATABASE_URL=database_url,
        PROTOCOOP_AUTO_MIGRATE="true" if sqlite else "false",
        PROTOCOOP_SQLITE_SYNCHRONOUS="FULL",
        PROTOCOOP_LOG_LEVEL="info",
    )
    script = Path(sys.executable).with_name("protocoop")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "protocoop.cli"]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *command,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base_url, process.pid
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue


def group_cpu_seconds(group: int) -> float:
    """User + system CPU of every live process in the process group (workers included)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def analyze(database_url: str) -> None:
    """`ANALYZE` a PostgreSQL database (what autovacuum does on its own within a minute)."""
    if not database_url.startswith("postgresql"):
        return
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("ANALYZE"))
    finally:
        engine.dispose()
