"""A throwaway PostgreSQL server of the test's own, for tests that stop, crash or restart it.

The shared server (`PROTOCOOP_TEST_POSTGRES_URL`) must never be stopped: other tests and other
people use it. `PrivatePostgres` runs `initdb` into a fresh directory and `pg_ctl start`s it on a
free port (TCP on 127.0.0.1, its socket in the same directory, trust authentication), so a test
may `restart()` it, `stop()` it (fast or `immediate`, i.e. a crash) and `start()` it again, or
`freeze()` and `thaw()` it (SIGSTOP/SIGCONT: a server that hangs without closing anything).
When the tests run as root (CI), every server command runs as the `postgres` OS user, which
owns the directory. `close()` stops it and removes everything; use the `private_postgres`
fixture, which does so whatever happens.

The binaries come from `PROTOCOOP_TEST_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`; when
neither has `initdb`, the fixture fails under `CI=true` and skips otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.databases import IN_CI
from tests.support.live_server import free_port
from tests.support.processes import process_table

PG_BIN_ENV = "PROTOCOOP_TEST_PG_BIN"
START_TIMEOUT_S = 60
DATABASE = "protocoop"


def find_pg_bin() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`, or None."""
    given = os.environ.get(PG_BIN_ENV)
    if given:
        return Path(given)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").is_file():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivatePostgres:
    """One PostgreSQL cluster in a temporary directory, on its own port."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="protocoop-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user: str | None = None
        self._frozen: list[int] = []
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--locale=C")  # fmt: skip

    @property
    def server_url(self) -> str:
        """A SQLAlchemy URL of the maintenance database (`postgres`)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        """A SQLAlchemy URL of the `protocoop` database (see `create_database`)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n{self.log_tail()}"
            )
        return result

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", action, "-D", str(self.data), "-o", options, "-l", str(self.log),
            "-w", "-t", str(START_TIMEOUT_S), *extra,
        )  # fmt: skip

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: disconnect every session and shut down cleanly; `immediate`: a crash (the
        next start recovers from the WAL)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-m", mode)

    def freeze(self) -> None:
        """SIGSTOP the server and every process of it: connections stay open and the kernel
        still accepts new ones, but nothing answers (a hung host, or a silent network)."""
        postmaster = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(postmaster, signal.SIGSTOP)
        self._frozen = [postmaster, *_children(postmaster)]
        for pid in self._frozen[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def create_database(self) -> str:
        """Create the `protocoop` database; returns its URL."""
        engine = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
        finally:
            engine.dispose()
        return self.url

    def log_tail(self, size: int = 8000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-size:].decode(errors="replace")
        return "(no log)"

    def close(self) -> None:
        """Stop the server (if it runs) and remove its directory."""
        self.thaw()
        with contextlib.suppress(Exception):
            if self.data.exists() and self.running:
                self.stop("immediate")
        # A server that would not stop must not outlive the test.
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().splitlines()[0]), 9)
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc)."""
    return [pid for pid, _, ppid, _ in process_table() if ppid == parent]


@pytest.fixture
def private_postgres(postgres_server_url: str) -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL server with an empty `protocoop` database. Its tests are
    PostgreSQL tests: like the others, they skip unless PostgreSQL is configured (CI requires it),
    though they run a server of their own."""
    del postgres_server_url
    bin_dir = find_pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").is_file():
        message = f"no PostgreSQL server binaries (initdb); set {PG_BIN_ENV}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = PrivatePostgres(bin_dir)
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.close()
