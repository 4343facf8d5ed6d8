"""What the benchmarks share: fresh databases, a prepared community, a running server."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from protocoop.auth.roles import Role
from protocoop.communities import service as communities_service
from protocoop.communities.schemas import CommunityCreate
from protocoop.config import Settings
from protocoop.db import Database, migrate
from protocoop.keys import service as keys_service
from protocoop.links import service as links_service
from protocoop.links.schemas import LinkCreate
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


def link(database_url: str, a: str, b: str) -> None:
    """Link communities `a` and `b` at par, with caps no bench reaches."""
    db = Database(Settings(database_url=database_url, auto_migrate=False, _env_file=None))  # type: ignore[call-arg]
    spec = LinkCreate.model_validate(
        {"a": a, "b": b, "rate": {"a": 1, "b": 1}, "a_cap": 10**15, "b_cap": 10**15}
    )
    try:
        db.run_write(lambda session: links_service.create_link(session, spec, by=None))
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


def group_rss_mb(group: int) -> float:
    """Resident memory of every live process in the process group, in MB."""
    total_kb = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != group:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def create_key(database_url: str, role: Role, community: str = COMMUNITY) -> str:
    """A new key of `role` for `community` (e.g. an auditor key to run the audit)."""
    db = Database(Settings(database_url=database_url, auto_migrate=False, _env_file=None))  # type: ignore[call-arg]
    try:
        return db.run_write(
            lambda session: str(
                keys_service.create_key(
                    session, role=role, community_id=community, label="bench", created_by=None
                ).token
            )
        )
    finally:
        db.dispose()


# --- wrk -----------------------------------------------------------------------------------------

WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"


def wrk(
    script: str,
    url: str,
    args: list[str],
    connections: int,
    seconds: float,
    *,
    histogram: bool = False,
) -> dict[str, Any]:
    """Run wrk with one of bench/wrk/*.lua; returns its RESULT line plus wrk's own CPU seconds,
    `ok_per_s` (2xx answers per second) and, with `histogram`, the latency histogram as
    [[microseconds, count], ...] (to merge runs: see `percentile_ms`)."""
    threads = max(1, min(2, connections))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPTS / script),
        url,
        "--",
        *args,
    ]
    # Output to files, not pipes: a histogram outgrows a pipe's buffer before wrk exits.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    match = re.search(r"^RESULT (\{.*\})$", output, re.M)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}\n{errors}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["ok_per_s"] = (
        sum(n for code, n in result["statuses"].items() if code.startswith("2")) / result["seconds"]
    )
    if histogram:
        found = re.search(r"^HISTOGRAM (\[.*\])$", output, re.M)
        result["histogram"] = json.loads(found.group(1)) if found else []
    return result


def percentile_ms(histogram: list[list[int]], fraction: float) -> float:
    """The `fraction` percentile, in ms, of a merged [[microseconds, count], ...] histogram."""
    counts: dict[int, int] = {}
    for value, count in histogram:
        counts[value] = counts.get(value, 0) + count
    total = sum(counts.values())
    if not total:
        return float("nan")
    rank = fraction * total
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value / 1000
    return max(counts) / 1000


def autovacuum(server_url: str) -> str:
    """`SHOW autovacuum` on a PostgreSQL server."""
    engine = create_engine(server_url)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW autovacuum")).scalar_one())
    finally:
        engine.dispose()
