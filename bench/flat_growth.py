"""Does a 1000-exchange batch cost the same at 1M exchanges as at 10k? Flat growth, from a fresh
database, on one `protocoop serve` that is never restarted, with no ANALYZE by hand.

For each configuration it creates a fresh database, migrates it, adds a community of `--members`
members (`bench.common.prepare`), starts ONE `protocoop serve --workers N` (`bench.common.
running_server`) and posts `POST .../exchanges:batch` of `--batch-size` exchanges from one client,
one after the other, until the ledger holds `--exchanges` exchanges. It times every batch and
prints the cost at each milestone (1k, 10k, 100k, 1M when reached): the batch that reaches it,
the median of the batches just before it, and the median CPU time of protocoop's processes per
batch (the machine's other load moves the wall-clock figures; the database server's own CPU is
not in it). The server keeps its connections, its pool and its
cached plans for the whole run; nothing is ANALYZEd (`bench.common.analyze` is not called).

Configurations (`--database`):
- `sqlite`: a file in a temporary directory;
- `postgresql`: two runs. `shared` is the machine's server (`--postgres-url`; here CI-like, with
  autovacuum off: nothing re-analyzes a growing table). `private` is a throwaway cluster that this
  bench `initdb`s and starts (`tests.support.private_postgres.PrivatePostgres`) with production
  settings (autovacuum on, PostgreSQL's defaults otherwise). `--postgres-only shared|private`
  runs one.
On PostgreSQL each milestone line also says how many rows of `exchanges` and `entries` the
whole run has read per exchange posted (`pg_stat_user_tables`, sequential and index reads; the
statistics reach it with up to a few seconds' delay): a posting path whose plans stay good reads
a bounded number per exchange (its foreign-key checks: one `exchanges` row per entry), one whose
cached plans went stale reads more and more.

    .venv/bin/python -m bench.flat_growth --database postgresql --exchanges 100000
    .venv/bin/python -m bench.flat_growth --database sqlite --exchanges 1000000

`run(kind, exchanges, ...)` returns the figures for a caller such as the bench suite. Nothing here
is asserted: the figures go into notes, not into tests.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from bench.common import (
    COMMUNITY,
    POSTGRES_URL,
    autovacuum,
    fresh_database,
    group_cpu_seconds,
    prepare,
    running_server,
)

MILESTONES = (1_000, 10_000, 100_000, 1_000_000)
WINDOW = 10
"""Batches whose median is reported at each milestone (the one reaching it and those before it,
at most half of the batches so far)."""


@dataclass
class Milestone:
    exchanges: int
    batch_ms: float
    median_ms: float
    window: int
    server_cpu_ms: float
    rows_read: dict[str, int] | None


@dataclass
class Run:
    """One configuration's figures."""

    label: str
    batch_ms: list[float] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)
    milestones: list[Milestone] = field(default_factory=list)
    failure: str | None = None
    """Why the run stopped early (a batch that was not recorded), if it did."""

    def at(self, exchanges: int) -> Milestone | None:
        return next((m for m in self.milestones if m.exchanges == exchanges), None)


def _rows_read(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0) "
                    "FROM pg_stat_user_tables WHERE relname IN ('exchanges', 'entries')"
                )
            )
            return {str(name): int(count) for name, count in rows}
    finally:
        engine.dispose()


def _batch(rng: random.Random, members: list[str], size: int, number: int) -> dict[str, Any]:
    exchanges = []
    for _ in range(size):
        provider, receiver = rng.sample(members, 2)
        exchanges.append(
            {
                "provider": provider,
                "receiver": receiver,
                "amount": rng.randint(1, 100),
                "description": f"flat growth batch {number}",
            }
        )
    return {"exchanges": exchanges}


def measure(
    label: str,
    database_url: str,
    workdir: Path,
    *,
    exchanges: int,
    members: int,
    batch_size: int,
    workers: int,
    echo: bool = True,
) -> Run:
    """Post batches on one server until the ledger holds `exchanges` exchanges."""
    sqlite = database_url.startswith("sqlite")
    token, member_ids = prepare(database_url, members)
    run = Run(label)
    rng = random.Random(12)
    path = f"/v1/communities/{COMMUNITY}/exchanges:batch"
    milestones = [m for m in MILESTONES if m <= exchanges]
    with (
        running_server(database_url, workdir, workers, sqlite) as (base_url, group),
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=600
        ) as client,
    ):
        recorded = 0
        number = 0
        while recorded < exchanges:
            number += 1
            body = _batch(rng, member_ids, batch_size, number)
            cpu = group_cpu_seconds(group)
            started = time.perf_counter()
            response = client.post(path, json=body)
            elapsed = (time.perf_counter() - started) * 1000
            run.server_cpu_ms.append((group_cpu_seconds(group) - cpu) * 1000)
            if response.status_code != 201:
                run.failure = (
                    f"batch {number} (after {recorded:,} exchanges) answered "
                    f"{response.status_code} after {elapsed:.0f} ms: {response.text[:300]}"
                )
                print(f"  {label}: {run.failure}", flush=True)
                break
            recorded += batch_size
            run.batch_ms.append(elapsed)
            if echo and (number <= 10 or number % 10 == 0):
                print(f"  {label}: {recorded:>9,} exchanges, batch {elapsed:8.0f} ms", flush=True)
            if recorded in milestones:
                window = max(1, min(WINDOW, number // 2))
                run.milestones.append(
                    Milestone(
                        recorded,
                        elapsed,
                        statistics.median(run.batch_ms[-window:]),
                        window,
                        statistics.median(run.server_cpu_ms[-window:]),
                        None if sqlite else _rows_read(database_url),
                    )
                )
    return run


@contextmanager
def private_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with production settings (autovacuum on); yields the URL of
    its empty maintenance database."""
    from tests.support.private_postgres import PrivatePostgres, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").is_file():
        raise RuntimeError("no PostgreSQL server binaries (initdb); set PROTOCOOP_TEST_PG_BIN")
    server = PrivatePostgres(bin_dir)
    try:
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# bench.flat_growth: production settings\nautovacuum = on\n")
        server.start()
        yield server.server_url
    finally:
        server.close()


def run(
    kind: str,
    exchanges: int,
    *,
    members: int = 1000,
    batch_size: int = 1000,
    workers: int = 1,
    postgres_url: str = POSTGRES_URL,
    postgres: tuple[str, ...] = ("shared", "private"),
    echo: bool = True,
) -> list[Run]:
    """The flat-growth figures of `kind` ('sqlite' or 'postgresql'): one Run per configuration."""
    runs: list[Run] = []
    options = {
        "exchanges": exchanges,
        "members": members,
        "batch_size": batch_size,
        "workers": workers,
        "echo": echo,
    }
    if kind == "sqlite":
        workdir = Path(tempfile.mkdtemp(prefix="protocoop-flat-"))
        try:
            with fresh_database("sqlite", workdir, postgres_url) as url:
                runs.append(measure("sqlite", url, workdir, **options))  # type: ignore[arg-type]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return runs
    for where in postgres:
        workdir = Path(tempfile.mkdtemp(prefix="protocoop-flat-"))
        try:
            with private_cluster() if where == "private" else _given(postgres_url) as server_url:
                label = f"postgresql {where} (autovacuum {autovacuum(server_url)})"
                with fresh_database("postgresql", workdir, server_url) as url:
                    runs.append(measure(label, url, workdir, **options))  # type: ignore[arg-type]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return runs


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def report(runs: list[Run], batch_size: int) -> str:
    lines = []
    for one in runs:
        lines.append(f"{one.label}: cost of one {batch_size}-exchange batch")
        for m in one.milestones:
            scans = (
                ""
                if m.rows_read is None
                else "   rows read per exchange posted so far: "
                + ", ".join(f"{t} {n / m.exchanges:.1f}" for t, n in sorted(m.rows_read.items()))
            )
            lines.append(
                f"  at {m.exchanges:>9,} exchanges: {m.batch_ms:7.0f} ms "
                f"(median of last {m.window}: {m.median_ms:6.0f} ms, "
                f"protocoop CPU {m.server_cpu_ms:5.0f} ms){scans}"
            )
        if one.failure:
            lines.append(f"  stopped: {one.failure}")
        base = one.at(10_000)
        last = one.milestones[-1] if one.milestones else None
        if base and last and last.exchanges > base.exchanges:
            lines.append(
                f"  {last.exchanges:,} vs 10,000: {last.median_ms / base.median_ms:.2f}x wall, "
                f"{last.server_cpu_ms / base.server_cpu_ms:.2f}x protocoop CPU "
                "(medians; target: within 1.3x)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--exchanges", type=int, default=100_000, help="stop at this many")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="protocoop serve --workers")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="the machine's server")
    parser.add_argument(
        "--postgres-only",
        choices=("shared", "private"),
        help="run only on the machine's server or only on a private production-like cluster",
    )
    args = parser.parse_args(argv)
    kinds = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    where = (args.postgres_only,) if args.postgres_only else ("shared", "private")
    runs: list[Run] = []
    for kind in kinds:
        runs.extend(
            run(
                kind,
                args.exchanges,
                members=args.members,
                batch_size=args.batch_size,
                workers=args.workers,
                postgres_url=args.postgres_url,
                postgres=where,
            )
        )
    print(report(runs, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
