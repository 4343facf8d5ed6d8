"""How fast does `protocoop serve` record exchanges? Prints exchanges/s for single posts and for
batches of 1000, on SQLite and/or PostgreSQL.

For each database it creates a fresh one (a SQLite file in a temporary directory, or a PostgreSQL
database `protocoop_bench_<random>` on `--postgres-url`), migrates it, adds a community with
`--members` members and no tight limits (lower limit -10^12, no upper cap) and an app key, starts
`protocoop serve --workers N` on a free port, and measures with an async httpx client:

(a) single `POST .../exchanges`, each with its own Idempotency-Key, from `--clients` concurrent
    clients for `--seconds`: exchanges/s, p50 and p99 latency;
(b) `POST .../exchanges:batch` of `--batch-size` exchanges from `--batch-clients` concurrent
    clients for `--seconds`: exchanges/s and p50/p99 latency per batch.

Exchanges are between random distinct members, amounts 1..100. Each phase starts with one
uncounted warm-up request per client; on PostgreSQL the database is then `ANALYZE`d, as autovacuum
would do within its first minute: until the planner has statistics for `exchanges`, the foreign-key
checks of every new entry scan that table, and batches slow down quadratically with its size
(2.5 s, 3.5 s, 5 s for the first three batches of 1000 here; 1.3 s once analyzed), which would
measure a never-analyzed table rather than protocoop. The client's own CPU time (this
process) and the server's (every process of its group) are printed beside each figure: on a small
machine the client competes with the server for the same cores. Afterwards the server is stopped,
the PostgreSQL database dropped and the temporary directory deleted, whatever happened.

    .venv/bin/python -m bench.post_exchanges --database both --seconds 10 --clients 32

Nothing here is asserted: the figures go into notes, not into tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    COMMUNITY,
    POSTGRES_URL,
    analyze,
    fresh_database,
    group_cpu_seconds,
    prepare,
    running_server,
)


@dataclass
class Result:
    """One measured phase."""

    mode: str
    clients: int
    seconds: float
    exchanges: int
    requests: int
    latencies: list[float]
    refused: Counter[str]
    client_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.exchanges / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


# --- the load ----------------------------------------------------------------------------------


def random_exchange(rng: random.Random, members: list[str], label: str) -> dict[str, Any]:
    provider, receiver = rng.sample(members, 2)
    return {
        "provider": provider,
        "receiver": receiver,
        "amount": rng.randint(1, 100),
        "description": label,
    }


async def measure(
    mode: str,
    database_url: str,
    base_url: str,
    token: str,
    members: list[str],
    group: int,
    clients: int,
    seconds: float,
    batch_size: int,
    *,
    analyze_after_warm_up: bool = True,
) -> Result:
    """Post from `clients` concurrent clients for `seconds` (batches when `batch_size` > 1);
    `analyze_after_warm_up=False` measures a fresh database as it is (the suite does)."""
    batch = batch_size > 1
    path = f"/v1/communities/{COMMUNITY}/exchanges" + (":batch" if batch else "")
    latencies: list[float] = []
    refused: Counter[str] = Counter()
    counts = {"exchanges": 0, "requests": 0}
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=120.0
    ) as client:

        async def one(rng: random.Random, n: int, deadline: float | None) -> bool:
            label = f"bench {mode} {n}"
            if batch:
                body: dict[str, Any] = {
                    "exchanges": [random_exchange(rng, members, label) for _ in range(batch_size)]
                }
            else:
                body = random_exchange(rng, members, label)
            started = time.perf_counter()
            try:
                response = await client.post(
                    path, json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
                )
            except httpx.TransportError as error:
                refused[f"transport error ({type(error).__name__})"] += 1
                return True
            elapsed = time.perf_counter() - started
            if deadline is None:
                return True
            if time.monotonic() > deadline:
                return False
            counts["requests"] += 1
            if response.status_code == 201:
                counts["exchanges"] += batch_size
                latencies.append(elapsed)
            else:
                refused[f"{response.status_code} {response.json().get('code')}"] += 1
            return True

        async def worker(number: int, deadline: float) -> None:
            rng = random.Random(number)
            n = 0
            while time.monotonic() < deadline and await one(rng, n, deadline):
                n += 1

        # Warm up every connection and worker process (not counted), then give the planner
        # statistics for the tables the warm-up filled (see the module docstring).
        await asyncio.gather(*(one(random.Random(-n), n, None) for n in range(clients)))
        if analyze_after_warm_up:
            analyze(database_url)
        cpu_client, cpu_server = time.process_time(), group_cpu_seconds(group)
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(worker(n, deadline) for n in range(clients)))
        elapsed = time.monotonic() - started
        return Result(
            mode=mode,
            clients=clients,
            seconds=min(elapsed, seconds),
            exchanges=counts["exchanges"],
            requests=counts["requests"],
            latencies=latencies,
            refused=refused,
            client_cpu=time.process_time() - cpu_client,
            server_cpu=group_cpu_seconds(group) - cpu_server,
        )


def bench_database(kind: str, args: argparse.Namespace) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix=f"protocoop-bench-{kind}-"))
    try:
        with fresh_database(kind, workdir, args.postgres_url) as database_url:
            token, members = prepare(database_url, args.members)
            with running_server(database_url, workdir, args.workers, kind == "sqlite") as (
                base_url,
                group,
            ):
                singles = asyncio.run(
                    measure(
                        "single POST",
                        database_url,
                        base_url,
                        token,
                        members,
                        group,
                        args.clients,
                        args.seconds,
                        1,
                    )
                )
                batches = asyncio.run(
                    measure(
                        f"batch of {args.batch_size}",
                        database_url,
                        base_url,
                        token,
                        members,
                        group,
                        args.batch_clients,
                        args.seconds,
                        args.batch_size,
                    )
                )
                if any(r.refused for r in (singles, batches)):
                    log = (workdir / "server.log").read_text(errors="replace")
                    print(f"--- {kind} server log (last 3000 characters) ---\n{log[-3000:]}")
                return [singles, batches]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(kind: str, args: argparse.Namespace, results: list[Result]) -> None:
    print(
        f"\n{kind}: protocoop serve --workers {args.workers}, {args.members} members, "
        f"{os.cpu_count()} CPUs (client and server share them)"
    )
    header = (
        f"{'mode':<16}{'clients':>8}{'seconds':>9}{'exchanges':>11}{'exch/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'refused':>9}{'client CPU s':>14}{'server CPU s':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.mode:<16}{r.clients:>8}{r.seconds:>9.1f}{r.exchanges:>11}{r.rate:>10.1f}"
            f"{r.percentile(0.50):>9.1f}{r.percentile(0.99):>9.1f}{sum(r.refused.values()):>9}"
            f"{r.client_cpu:>14.1f}{r.server_cpu:>14.1f}"
        )
        if r.refused:
            print(f"  refused: {dict(r.refused)}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--clients", type=int, default=32, help="concurrent single posters")
    parser.add_argument("--batch-clients", type=int, default=2, help="concurrent batch posters")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="protocoop serve --workers")
    parser.add_argument(
        "--postgres-url",
        default=POSTGRES_URL,
        help="a server where this user may create databases",
    )
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    for kind in kinds:
        print_table(kind, args, bench_database(kind, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
