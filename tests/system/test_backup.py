"""`protocoop backup` while a live server takes a write load, then `protocoop restore` into a
fresh database, on SQLite (online backup API) and PostgreSQL (`pg_dump` / `pg_restore`).

The backup is one consistent snapshot: the restored ledger is exactly the first `seq` exchanges
of the live one (same ids, same hashes), its balances are the replay of those exchanges, its
audit is ok, and a server on it serves — with the same API keys — and extends the same chain.
A restore over a database that is not empty is refused unless forced.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.faults import forked_serving
from tests.support.live_server import (
    ExchangeLoad,
    create_tight_community,
    nonzero,
    read_json,
    read_ledger,
    replay,
)

COMMUNITY = "backup-coop"
MEMBERS = [f"member-{n}" for n in range(8)]
ACKNOWLEDGED_BEFORE_BACKUP = 40
PROTOCOOP = [str(Path(sys.executable).with_name("protocoop"))]


def protocoop(database_url: str, *args: str, path: str | None = None) -> tuple[int, str]:
    """Run the command line on `database_url`; returns its exit status and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env["PROTOCOOP_DATABASE_URL"] = database_url
    if path is not None:
        env["PATH"] = path
    result = subprocess.run(
        [*PROTOCOOP, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return result.returncode, result.stderr


def reported_seq(stderr: str) -> int:
    found = re.search(rf"{COMMUNITY} at seq (\d+)", stderr)
    assert found, stderr
    return int(found.group(1))


@pytest.fixture
def restore_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database to restore into: a SQLite file that does not exist yet, or a new
    PostgreSQL database (as `createdb` makes) on the shared test server."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored' / 'protocoop.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_server_url")
    url = create_postgres_database(server_url)
    try:
        yield url
    finally:
        drop_postgres_database(server_url, url)


@pytest.mark.slow
def test_backup_during_writes_restores_a_consistent_serving_ledger(
    backend: str,
    fresh_database_url: str,
    restore_url: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    backup_file = tmp_path / ("backup.db" if backend == "sqlite" else "backup.dump")
    (tmp_path / "restored").mkdir()
    with forked_serving(
        request, backend=backend, database_url=fresh_database_url, workdir=tmp_path / "live"
    ) as live:
        tokens = create_tight_community(live, COMMUNITY, MEMBERS, -30, 30)
        load = ExchangeLoad(
            base_url=live.base_url,
            community=COMMUNITY,
            members=MEMBERS,
            app_token=tokens["app"],
            auditor_token=tokens["auditor"],
            threads=4,
            exchanges_per_thread=80,
            seed=5,
        )
        load.start()
        deadline = time.monotonic() + 120
        while len(load.acknowledged) < ACKNOWLEDGED_BEFORE_BACKUP and time.monotonic() < deadline:
            time.sleep(0.01)
        acknowledged_before = len(load.acknowledged)
        status, stderr = protocoop(fresh_database_url, "backup", "--output", str(backup_file))
        acknowledged_after = len(load.acknowledged)
        load.join()
        assert status == 0, stderr
        assert not load.server_errors, load.server_errors[:3]
        # The load was writing the whole time the backup ran.
        assert acknowledged_before >= ACKNOWLEDGED_BEFORE_BACKUP, load.summary()
        assert acknowledged_after > acknowledged_before, load.summary()
        seq = reported_seq(stderr)
        ledger = read_ledger(live, COMMUNITY, live.admin_token)
        admin_token = live.admin_token
    assert acknowledged_before <= seq < len(ledger), (acknowledged_before, seq, len(ledger))

    status, stderr = protocoop(restore_url, "restore", "--input", str(backup_file))
    assert status == 0, stderr
    assert reported_seq(stderr) == seq

    # Restoring again over it is refused in one line, and changes nothing.
    status, stderr = protocoop(restore_url, "restore", "--input", str(backup_file))
    assert status == 1
    assert stderr.startswith("error: ")
    assert "not empty" in stderr
    assert "--force" in stderr
    assert len(stderr.strip().splitlines()) == 1

    with forked_serving(
        request,
        backend=backend,
        database_url=restore_url,
        workdir=tmp_path / "restored-server",
        admin_token=admin_token,  # the keys came back with the rest
    ) as restored:
        restored_ledger = read_ledger(restored, COMMUNITY, admin_token)
        assert [_chained(x) for x in restored_ledger] == [_chained(x) for x in ledger[:seq]]
        audit = read_json(restored, f"/v1/communities/{COMMUNITY}/audit", admin_token)
        assert audit["ok"], audit["problems"]
        assert audit["checked_exchanges"] == seq
        page = read_json(restored, f"/v1/communities/{COMMUNITY}/balances?limit=1000", admin_token)
        balances = {item["account"]: item["balance"] for item in page["items"]}
        assert page["as_of_seq"] == seq
        assert page["sum"] == 0
        assert nonzero(balances) == nonzero(replay(ledger[:seq]))

        # It serves: the restored ledger takes the next exchange on the same chain.
        provider = min(MEMBERS, key=lambda m: balances.get(m, 0))
        receiver = max(MEMBERS, key=lambda m: balances.get(m, 0))
        response = httpx.post(
            f"{restored.base_url}/v1/communities/{COMMUNITY}/exchanges",
            json={"provider": provider, "receiver": receiver, "amount": 1, "description": "after"},
            headers={"Authorization": f"Bearer {tokens['app']}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        assert response.json()["seq"] == seq + 1
        assert response.json()["prev_hash"] == (ledger[seq - 1]["hash"] if seq else "0" * 64)


def test_restore_refuses_what_is_not_a_backup_in_one_line(
    backend: str, restore_url: str, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a backup\n" * 10)
    status, stderr = protocoop(restore_url, "restore", "--input", str(junk))
    assert status == 2
    assert stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) == 1
    status, stderr = protocoop(restore_url, "restore", "--input", str(tmp_path / "missing"))
    assert status == 2
    assert "does not exist" in stderr


def test_backup_refuses_to_overwrite_a_file_unless_forced(
    backend: str, fresh_database_url: str, tmp_path: Path
) -> None:
    existing = tmp_path / "precious.txt"
    existing.write_bytes(b"last week's backup\n")
    status, stderr = protocoop(fresh_database_url, "backup", "--output", str(existing))
    assert status == 1
    assert stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) == 1
    assert str(existing) in stderr
    assert "--force" in stderr
    assert existing.read_bytes() == b"last week's backup\n"

    status, stderr = protocoop(fresh_database_url, "backup", "--output", str(existing), "--force")
    assert status == 0, stderr
    magic = b"SQLite format 3\x00" if backend == "sqlite" else b"PGDMP"
    assert existing.read_bytes().startswith(magic)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_backup_without_pg_dump_on_path_says_so_in_one_line(
    fresh_database_url: str, tmp_path: Path
) -> None:
    status, stderr = protocoop(
        fresh_database_url, "backup", "--output", str(tmp_path / "x.dump"), path="/nonexistent"
    )
    assert status == 2
    assert stderr.strip() == (
        "error: pg_dump is not on PATH: install the PostgreSQL client tools (e.g. "
        "`apt install postgresql-client`), at least the server's version"
    )
    assert not (tmp_path / "x.dump").exists()


def _chained(exchange: dict[str, Any]) -> tuple[Any, ...]:
    return (exchange["id"], exchange["seq"], exchange["amount"], exchange["hash"])
