"""How long does the mutuality report take on a big community, and what does an export cost?

Builds a community of 10,000 members and 1,000,000 exchanges on PostgreSQL (100,000 on SQLite)
through the posting transaction (`ledger.service.record`, 1,000 exchanges per batch), analyzes the
tables after loading (never before: see docs/operations.md, *Planner statistics*), then times:
- a full audit (`protocoop check`'s work: every exchange re-hashed), which records the checkpoint
  later reports verify from;
- the mutuality report, whole history (the HTTP route's call, in a read transaction), and over a
  one-day window (aggregated from that window's exchanges);
- `protocoop export --format ledger` and `--format csv`, in a child process whose peak RSS the
  kernel reports;
- an as-of balance (`?as_of_seq=`), once when the ledger holds 10,000 entries and again at the
  end, to show it does not grow with history;
- each page of the dashboard (`/ui`), signed in as a treasurer: the application in this process
  (Starlette's test client, so no network or HTTP parsing is counted), best of three.

    .venv/bin/python -m bench.mutuality_report                       # both databases
    .venv/bin/python -m bench.mutuality_report --database postgresql --exchanges 200000

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.common import COMMUNITY, POSTGRES_URL, analyze, create_key, fresh_database
from protocoop.auth.roles import Role
from protocoop.balances.service import member_balance
from protocoop.clock import utc_now
from protocoop.communities.schemas import CommunityCreate
from protocoop.communities.service import create_community
from protocoop.config import Settings
from protocoop.db import Database, migrate
from protocoop.db.models import Account, Member
from protocoop.ledger.planner import Post
from protocoop.ledger.records import Draft
from protocoop.ledger.service import record
from protocoop.mutuality.audit import audit_community, record_checkpoint
from protocoop.mutuality.service import community_mutuality

BATCH = 1000
RECONNECT_AT = {BATCH * n for n in (1, 5, 20, 100)}
AS_OF_PROBES = 300


def create_members(db: Database, members: int) -> list[str]:
    """The community and its members, inserted in bulk."""
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
    return ids


def post_random(db: Database, ids: list[str], count: int, rng: random.Random, start: int) -> None:
    """Post `count` random exchanges in batches of BATCH."""
    for offset in range(0, count, BATCH):
        drafts = [
            Draft(*rng.sample(ids, 2), rng.randint(1, 10_000), "bench exchange")
            for _ in range(min(BATCH, count - offset))
        ]
        [outcome] = db.run_write(
            lambda session, drafts=drafts: record(
                session, COMMUNITY, [Post(drafts, created_by=None, batch=True)]
            )
        )
        if outcome.refusal is not None:
            raise outcome.refusal
        if start + offset in RECONNECT_AT:
            # PostgreSQL keeps a connection's foreign-key check plans from when the tables were
            # nearly empty; fresh connections plan them for the tables' real size
            # (docs/operations.md).
            db.engine.dispose()


def time_as_of(db: Database, ids: list[str], rng: random.Random) -> float:
    """Median milliseconds of an as-of balance read at a random position."""
    with db.read() as session:
        head = member_balance(session, COMMUNITY, ids[0]).as_of_seq
    timings = []
    for _ in range(AS_OF_PROBES):
        member, seq = rng.choice(ids), rng.randint(1, head)
        started = time.perf_counter()
        with db.read() as session:
            member_balance(session, COMMUNITY, member, as_of_seq=seq)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def best_of(repeats: int, work: Any) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def _peak_rss_mb(pid: int) -> float:
    """The high-water RSS of a running process (VmHWM), 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def time_export(url: str, fmt: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `protocoop export` in a child process.

    The peak is read from the child's own /proc VmHWM while it runs: its rusage `ru_maxrss` would
    start at this (large) process's RSS, which Linux carries over to a forked child at exec."""
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
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, _peak_rss_mb(child.pid))
            time.sleep(0.01)
        if child.returncode != 0:
            raise RuntimeError(f"export {fmt} failed with status {child.returncode}")
        return time.perf_counter() - started, peak


def time_pages(url: str, ids: list[str]) -> dict[str, float]:
    """Seconds to answer each dashboard page (best of 3), signed in as a treasurer."""
    from fastapi.testclient import TestClient

    from protocoop.app import create_app

    token = create_key(url, Role.TREASURER)
    app = create_app(Settings(database_url=url, auto_migrate=False, _env_file=None))  # type: ignore[call-arg]
    base = f"/ui/communities/{COMMUNITY}"
    timings: dict[str, float] = {}
    with TestClient(app, follow_redirects=False) as client:
        form = client.get("/ui/sign-in").text
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        signed = client.post("/ui/sign-in", data={"token": token, "csrf": csrf, "next": "/ui"})
        assert signed.status_code == 303, signed.text
        latest = client.get(f"{base}/exchanges").text
        exchange_id = latest.split(f"{base}/exchanges/", 1)[1].split('"', 1)[0]
        pages = {
            "overview": base,
            "members, by balance": f"{base}/members?sort=balance&order=desc",
            "members, searched": f"{base}/members?q=m012",
            "member": f"{base}/members/{ids[len(ids) // 2]}",
            "exchanges": f"{base}/exchanges",
            "exchanges of a member": f"{base}/exchanges?member={ids[7]}",
            "exchange": f"{base}/exchanges/{exchange_id}",
        }
        for name, path in pages.items():

            def get(path: str = path) -> int:
                response = client.get(path)
                assert response.status_code == 200, f"{path}: {response.status_code}"
                return response.status_code

            timings[name], _ = best_of(3, get)
    return timings


def run(kind: str, members: int, exchanges: int) -> dict[str, Any]:
    """Build and measure one database; returns the figures."""
    with (
        tempfile.TemporaryDirectory(prefix="protocoop-bench-") as workdir,
        fresh_database(kind, Path(workdir), POSTGRES_URL) as url,
    ):
        migrate.upgrade(url)
        db = Database(Settings(database_url=url, auto_migrate=False, _env_file=None))  # type: ignore[call-arg]
        try:
            rng = random.Random(7)
            ids = create_members(db, members)
            early = min(5_000, exchanges)
            started = time.perf_counter()
            post_random(db, ids, early, rng, 0)
            analyze(url)
            as_of_early = time_as_of(db, ids, rng)
            post_random(db, ids, exchanges - early, rng, early)
            load_seconds = time.perf_counter() - started
            analyze(url)
            as_of_late = time_as_of(db, ids, rng)

            def full_audit() -> Any:
                with db.read() as session:
                    return audit_community(session, COMMUNITY)

            # What `protocoop check` does from cron: verify everything once and remember how far;
            # the report then re-hashes only what came after.
            audit_seconds, audit = best_of(1, full_audit)
            if audit.ok:
                db.run_write(
                    lambda session: record_checkpoint(session, COMMUNITY, audit.checked_exchanges)
                )

            def report(since: Any = None) -> Any:
                with db.read() as session:
                    return community_mutuality(session, COMMUNITY, since, None)

            report_seconds, whole = best_of(3, report)
            day = utc_now() - timedelta(days=1)
            window_seconds, _ = best_of(1, lambda: report(day))
            journal = time_export(url, "ledger")
            csv_export = time_export(url, "csv")
            pages = time_pages(url, ids)
            return {
                "database": kind,
                "members": members,
                "exchanges": exchanges,
                "load_exchanges_per_s": exchanges / load_seconds,
                "report_s": report_seconds,
                "report_holds": whole.holds,
                "report_one_day_window_s": window_seconds,
                "full_audit_s": audit_seconds,
                "full_audit_ok": audit.ok,
                "export_ledger_s": journal[0],
                "export_ledger_peak_rss_mb": journal[1],
                "export_csv_s": csv_export[0],
                "export_csv_peak_rss_mb": csv_export[1],
                "as_of_balance_ms_at_10k_entries": as_of_early,
                "as_of_balance_ms_at_end": as_of_late,
                "entries_at_end": 2 * exchanges,
                "dashboard_pages_s": pages,
            }
        finally:
            db.dispose()


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(
            f"\n{r['database']}: {r['members']} members, {r['exchanges']} exchanges "
            f"(loaded at {r['load_exchanges_per_s']:.0f}/s through the batch path)"
        )
        print(
            f"  mutuality report, whole history   {r['report_s']:8.3f} s  holds={r['report_holds']}"
        )
        print(f"  mutuality report, one-day window  {r['report_one_day_window_s']:8.3f} s")
        print(
            f"  full audit (re-hash everything)   {r['full_audit_s']:8.1f} s  "
            f"ok={r['full_audit_ok']}"
        )
        print(
            f"  export ledger journal             {r['export_ledger_s']:8.1f} s  "
            f"peak RSS {r['export_ledger_peak_rss_mb']:.0f} MB"
        )
        print(
            f"  export CSV                        {r['export_csv_s']:8.1f} s  "
            f"peak RSS {r['export_csv_peak_rss_mb']:.0f} MB"
        )
        print(
            f"  as-of balance (median)            {r['as_of_balance_ms_at_10k_entries']:8.2f} ms "
            f"at 10k entries, {r['as_of_balance_ms_at_end']:.2f} ms at {r['entries_at_end']}"
        )
        for page, seconds in r.get("dashboard_pages_s", {}).items():
            print(f"  dashboard: {page:<26}{seconds * 1000:8.0f} ms")


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
    print_rows(rows)


if __name__ == "__main__":
    main()
