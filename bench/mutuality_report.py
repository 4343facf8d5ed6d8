"""How long does the mutuality report take on a big community, and what does an export cost?

Builds a community of 10,000 members and 1,000,000 exchanges on PostgreSQL (100,000 on SQLite)
through the batch posting path (1,000 exchanges per transaction), analyzes the tables after
loading, then times:
- the mutuality report (the same call the HTTP route makes, in a read transaction);
- `protocoop export --format ledger` and `--format csv` to /dev/null, in a child process whose
  peak RSS is read from the kernel.

    .venv/bin/python bench/mutuality_report.py                      # both databases
    .venv/bin/python bench/mutuality_report.py --database postgresql --exchanges 200000

PostgreSQL comes from PROTOCOOP_BENCH_POSTGRES_URL (default: the local server); a database
`protocoop_bench_<random>` is created and dropped. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from protocoop.clock import utc_now
from protocoop.communities.schemas import CommunityCreate
from protocoop.communities.service import create_community
from protocoop.config import Settings
from protocoop.db import Database, migrate
from protocoop.db.models import Account, Member
from protocoop.ledger.service import Draft, post_exchanges
from protocoop.mutuality.service import community_mutuality

SERVER_URL = os.environ.get(
    "PROTOCOOP_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
COMMUNITY = "bench"
BATCH = 1000
RECONNECT_AT = {BATCH * n for n in (1, 5, 20, 100)}


def fresh_database(kind: str) -> tuple[str, Any]:
    """(url, cleanup) of an empty, migrated database."""
    if kind == "sqlite":
        directory = tempfile.TemporaryDirectory(prefix="protocoop-bench-")
        url = f"sqlite:///{directory.name}/bench.db"
        migrate.upgrade(url)
        return url, directory.cleanup
    name = f"protocoop_bench_{secrets.token_hex(4)}"
    admin = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def load(db: Database, members: int, exchanges: int, seed: int = 7) -> float:
    """Create the community and its members, then post `exchanges` in batches; returns seconds."""
    ids = [f"m{i:05d}" for i in range(members)]

    def setup(session: Any) -> None:
        create_community(
            session,
            CommunityCreate.model_validate(
                {
                    "id": COMMUNITY,
                    "name": "Benchmark community",
                    "unit": {"code": "HOUR", "name": "hour", "scale": 2},
                    "default_lower_limit": -(10**12),
                }
            ),
        )
        now = utc_now()
        session.execute(
            insert(Account),
            [
                {
                    "community_id": COMMUNITY,
                    "id": m,
                    "kind": "member",
                    "balance": 0,
                    "lower_limit": -(10**12),
                    "upper_limit": None,
                    "reserved_debit": 0,
                    "reserved_credit": 0,
                    "created_at": now,
                }
                for m in ids
            ],
        )
        session.execute(
            insert(Member),
            [
                {
                    "community_id": COMMUNITY,
                    "id": m,
                    "name": m,
                    "kind": "person",
                    "status": "active",
                    "created_at": now,
                    "updated_at": now,
                }
                for m in ids
            ],
        )

    db.run_write(setup)
    rng = random.Random(seed)
    started = time.perf_counter()
    for start in range(0, exchanges, BATCH):
        drafts = []
        for _ in range(min(BATCH, exchanges - start)):
            provider, receiver = rng.sample(ids, 2)
            drafts.append(Draft(provider, receiver, rng.randint(1, 10_000), "bench exchange"))
        db.run_write(
            lambda session, drafts=drafts: post_exchanges(
                session, COMMUNITY, drafts, created_by=None, batch=True
            )
        )
        if start in RECONNECT_AT:
            # PostgreSQL keeps a connection's foreign-key check plans from when the tables were
            # empty; fresh connections plan them for the tables' real size (see README).
            db.engine.dispose()
    return time.perf_counter() - started


def analyze(db: Database) -> None:
    with db.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("ANALYZE")


def time_report(db: Database, repeats: int = 3) -> tuple[float, Any]:
    best = float("inf")
    report = None
    for _ in range(repeats):
        started = time.perf_counter()
        with db.read() as session:
            report = community_mutuality(session, COMMUNITY, None, None)
        best = min(best, time.perf_counter() - started)
    return best, report


def time_export(url: str, fmt: str) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, bytes written) of `protocoop export` in a child process."""
    protocoop = Path(sys.executable).with_name("protocoop")
    env = {**os.environ, "PROTOCOOP_DATABASE_URL": url, "PROTOCOOP_AUTO_MIGRATE": "false"}
    with tempfile.NamedTemporaryFile(suffix=f".{fmt}") as output:
        started = time.perf_counter()
        child = subprocess.Popen(
            [
                str(protocoop),
                "export",
                "--community",
                COMMUNITY,
                "--format",
                fmt,
                "--output",
                output.name,
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"export {fmt} failed with status {status}")
        size = Path(output.name).stat().st_size
    return elapsed, usage.ru_maxrss / 1024, size


def run(kind: str, members: int, exchanges: int) -> dict[str, Any]:
    url, cleanup = fresh_database(kind)
    db = Database(Settings(database_url=url, auto_migrate=False, _env_file=None))  # type: ignore[call-arg]
    try:
        load_seconds = load(db, members, exchanges)
        analyze(db)
        report_seconds, report = time_report(db)
        journal = time_export(url, "ledger")
        csv_export = time_export(url, "csv")
        return {
            "database": kind,
            "members": members,
            "exchanges": exchanges,
            "load_per_s": exchanges / load_seconds,
            "report_s": report_seconds,
            "holds": report.holds if report else None,
            "journal_s": journal[0],
            "journal_rss_mb": journal[1],
            "csv_s": csv_export[0],
            "csv_rss_mb": csv_export[1],
        }
    finally:
        db.dispose()
        cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--exchanges", type=int, help="default: 1,000,000 (PG), 100,000 (SQLite)")
    args = parser.parse_args()
    kinds = ["postgresql", "sqlite"] if args.database == "both" else [args.database]
    rows = []
    for kind in kinds:
        exchanges = args.exchanges or (1_000_000 if kind == "postgresql" else 100_000)
        print(f"building {kind}: {args.members} members, {exchanges} exchanges...", flush=True)
        rows.append(run(kind, args.members, exchanges))
    print()
    print(
        f"{'database':<11}{'exchanges':>10}{'load/s':>9}{'report s':>10}{'holds':>7}"
        f"{'journal s':>11}{'RSS MB':>8}{'csv s':>8}{'RSS MB':>8}"
    )
    for r in rows:
        print(
            f"{r['database']:<11}{r['exchanges']:>10}{r['load_per_s']:>9.0f}{r['report_s']:>10.2f}"
            f"{r['holds']!s:>7}{r['journal_s']:>11.1f}{r['journal_rss_mb']:>8.0f}"
            f"{r['csv_s']:>8.1f}{r['csv_rss_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
