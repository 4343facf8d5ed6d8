"""`make bench`: protocoop against the limits of this machine, measured in the same run.

Every figure comes from a fresh database and a server started for it; nothing is ANALYZEd by
hand (the posting path must stay good without it). PostgreSQL is measured on the machine's server
(`shared`; here CI-like, autovacuum off) and on a throwaway cluster with production settings
(`private`, autovacuum on); the table says which, from `SHOW autovacuum`.

1. Ceilings: a bare FastAPI app validating the same body, served by uvicorn with the same
   workers (the framework ceiling), and pgbench's simple-update (-N) and tpcb-like TPS (8
   clients) on each PostgreSQL server measured (the database ceiling).
2. Idle server, one client (wrk, 1 connection): one post, and one balance read; p50 latency and
   the server's CPU per request (every process of its group, from /proc, before and after).
3. Single posts over HTTP (`protocoop serve --workers 2`, wrk): 32 and 128 connections, unique
   Idempotency-Keys, random pairs among 1,000 members, and a hot community of 10 members (128
   connections), as a share of the framework ceiling.
4. Batches of 1,000 exchanges over HTTP, 2 clients, against pgbench tpcb-like.
5. Reads under write load: balance and statement p50/p99 (4 connections each) during a second
   32-connection posting run.
6. Flat growth (`bench.flat_growth`): the cost of a 1000-exchange batch at 10k, 100k and 1M
   exchanges, one server never restarted.
7. The soak (`bench.soak`, also `make soak`): 32 connections posting for 5 minutes; throughput
   and p99 per minute, errors, memory, the audit.
8. Reports: the mutuality report and the exports on 10,000 members and 1,000,000 exchanges on
   PostgreSQL (100,000 on SQLite), seconds and peak RSS; and an as-of balance at 10k entries and
   at the end, to show it stays flat.

Prints one table with each target of issue 12 (and the earlier reports' targets) as a ratio
measured in this run, and writes `bench/results/<date>.json`. Needs `wrk` and `pgbench` on PATH
(Debian: `apt-get install wrk postgresql-client`) and, for `private`, PostgreSQL's server
binaries (`initdb`). Never part of CI's pass/fail.

    .venv/bin/python -m bench.suite                  # everything (an hour or more)
    .venv/bin/python -m bench.suite --quick          # 5 s runs, 100k growth, 1-minute soaks
    .venv/bin/python -m bench.suite --smoke --postgres shared   # a minute or two: checks wiring
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import flat_growth, mutuality_report, soak
from bench.common import (
    COMMUNITY,
    MEMBER_PREFIX,
    POSTGRES_URL,
    free_port,
    fresh_database,
    group_cpu_seconds,
    link,
    prepare,
    running_server,
    wrk,
)
from bench.post_exchanges import measure

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOT = "hot"
PARTNER = "partner"
"""A community linked with the bench's, whose members give in intertrades."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long each part runs (`--quick` and `--smoke` shorten them)."""

    seconds: float = 10
    idle_seconds: float = 10
    warm_seconds: float = 3
    growth_exchanges: int = 1_000_000
    soak_seconds: float = 300
    soak_interval: float = 30
    report_members: int = 10_000
    report_exchanges: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"postgresql": 1_000_000, "sqlite": 100_000}
    )
    workers: int = 2


QUICK = Plan(
    seconds=5,
    idle_seconds=5,
    growth_exchanges=100_000,
    soak_seconds=60,
    soak_interval=15,
    report_exchanges={"postgresql": 100_000, "sqlite": 100_000},
)
SMOKE = Plan(
    seconds=2,
    idle_seconds=2,
    warm_seconds=1,
    growth_exchanges=10_000,
    soak_seconds=8,
    soak_interval=2,
    report_members=1_000,
    report_exchanges={"postgresql": 5_000, "sqlite": 5_000},
)
PARTS = ("http", "growth", "soak", "reports")


# --- tools -------------------------------------------------------------------------------------


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"bench: {', '.join(missing)} not found on PATH "
            "(Debian: apt-get install wrk postgresql-client)"
        )


def server_settings(server_url: str) -> dict[str, str]:
    """What the table says about a PostgreSQL server: its address, version and autovacuum."""
    engine = create_engine(server_url)
    try:
        with engine.connect() as connection:
            autovacuum = connection.execute(text("SHOW autovacuum")).scalar_one()
            version = connection.execute(text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    url = make_url(server_url)
    return {
        "address": f"{url.host}:{url.port or 5432}",
        "server_version": str(version),
        "autovacuum": str(autovacuum),
    }


@contextmanager
def postgres_servers(which: str) -> Iterator[list[tuple[str, str]]]:
    """[(name, server URL)]: the machine's server and/or a private production-like cluster."""
    with soak.postgres_servers(which, POSTGRES_URL) as servers:
        yield [(label.split(" ")[1], url) for label, url in servers]


# --- 1. ceilings -------------------------------------------------------------------------------


def framework_ceiling(seconds: float, workers: int) -> dict[str, Any]:
    """req/s of a bare FastAPI app answering the same POST, uvicorn with the same workers."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.bare_app:app",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=HERE.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        args = [f"/v1/communities/{COMMUNITY}/exchanges", "none", MEMBER_PREFIX, "1000", "bare"]
        wrk("post.lua", url, args, 32, 2)  # warm-up
        return wrk("post.lua", url, args, 32, seconds)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=20)


def database_ceiling(server_url: str, seconds: float) -> dict[str, float]:
    """pgbench TPS (simple-update and tpcb-like, 8 clients) on a PostgreSQL server."""
    url = make_url(server_url)
    name = f"protocoop_pgbench_{secrets.token_hex(4)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    base = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or ""]
    try:
        subprocess.run(
            ["pgbench", *base, "-i", "-s", "10", "-q", name], check=True, capture_output=True
        )
        figures = {}
        for label, extra in (("simple_update_tps", ["-N"]), ("tpcb_like_tps", [])):
            done = subprocess.run(
                ["pgbench", *base, *extra, "-c", "8", "-j", "2", "-T", str(round(seconds)), name],
                check=True,
                capture_output=True,
                text=True,
            )
            match = re.search(r"tps = ([0-9.]+)", done.stdout)
            figures[label] = float(match.group(1)) if match else float("nan")
        return figures
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- 2-5. HTTP ---------------------------------------------------------------------------------


@contextmanager
def readers_during(url: str, token: str, seconds: float) -> Iterator[dict[str, Any]]:
    """Balance and statement readers (4 connections each) running alongside a write load."""
    results: dict[str, Any] = {}
    base = f"/v1/communities/{COMMUNITY}/members/%s"

    def read(name: str, template: str) -> None:
        results[name] = wrk("get.lua", url, [template, token, MEMBER_PREFIX, "1000"], 4, seconds)

    threads = [
        threading.Thread(target=read, args=("balance", base + "/balance")),
        threading.Thread(target=read, args=("statement", base + "/statement?limit=20")),
    ]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        for thread in threads:
            thread.join()


def with_cpu(group: int, run: Any) -> dict[str, Any]:
    """`run()` (a wrk result) plus the server's CPU during it, in total and per 2xx answer."""
    before = group_cpu_seconds(group)
    result: dict[str, Any] = run()
    spent = group_cpu_seconds(group) - before
    ok = sum(n for code, n in result["statuses"].items() if code.startswith("2"))
    result["server_cpu_s"] = spent
    result["server_cpu_ms_per_request"] = spent * 1000 / ok if ok else float("nan")
    return result


def http_figures(kind: str, plan: Plan, postgres_url: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"protocoop-suite-{kind}-"))
    seconds = plan.seconds
    try:
        with fresh_database(kind, workdir, postgres_url) as database_url:
            token, members = prepare(database_url, 1000)
            hot_token, _ = prepare(database_url, 10, community=HOT)
            prepare(database_url, 1000, community=PARTNER)
            link(database_url, COMMUNITY, PARTNER)
            with running_server(database_url, workdir, plan.workers, kind == "sqlite") as (
                url,
                group,
            ):
                path = f"/v1/communities/{COMMUNITY}/exchanges"
                hot_path = f"/v1/communities/{HOT}/exchanges"
                balance = f"/v1/communities/{COMMUNITY}/members/%s/balance"

                def posts(connections: int, run: str, duration: float = seconds) -> Any:
                    args = [path, token, MEMBER_PREFIX, "1000", run]
                    return lambda: wrk("post.lua", url, args, connections, duration)

                posts(32, "warm", plan.warm_seconds)()  # every worker and connection; no ANALYZE
                figures: dict[str, Any] = {}
                figures["idle_post"] = with_cpu(group, posts(1, "idle", plan.idle_seconds))
                figures["idle_balance"] = with_cpu(
                    group,
                    lambda: wrk(
                        "get.lua",
                        url,
                        [balance, token, MEMBER_PREFIX, "1000"],
                        1,
                        plan.idle_seconds,
                    ),
                )
                figures["posts_32"] = with_cpu(group, posts(32, "p32"))
                intertrade_args = [
                    f"/v1/communities/{COMMUNITY}/intertrades",
                    token,
                    MEMBER_PREFIX,
                    "1000",
                    "it32",
                    f"{PARTNER}/{MEMBER_PREFIX}",
                ]
                figures["intertrades_32"] = with_cpu(
                    group, lambda: wrk("post.lua", url, intertrade_args, 32, seconds)
                )
                # The readers get their own run: flat-out readers take CPU from the posts.
                with readers_during(url, token, seconds) as reads:
                    figures["posts_under_reads"] = posts(32, "pr")()
                figures["reads_under_load"] = reads
                figures["posts_128"] = posts(128, "p128")()
                figures["hot_128"] = wrk(
                    "post.lua", url, [hot_path, hot_token, MEMBER_PREFIX, "10", "hot"], 128, seconds
                )
                batches = asyncio.run(
                    measure(
                        "batch of 1000",
                        database_url,
                        url,
                        token,
                        members,
                        group,
                        2,
                        seconds,
                        1000,
                        analyze_after_warm_up=False,
                    )
                )
                figures["batches"] = {
                    "exchanges_per_s": batches.rate,
                    "p50_ms": batches.percentile(0.5),
                    "p99_ms": batches.percentile(0.99),
                    "refused": dict(batches.refused),
                    "server_cpu_s": batches.server_cpu,
                }
                return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- 6. flat growth ----------------------------------------------------------------------------


def growth_figures(kind: str, plan: Plan, which: tuple[str, ...]) -> list[dict[str, Any]]:
    """`bench.flat_growth` on `kind` (on PostgreSQL, on each server in `which`)."""
    runs = flat_growth.run(
        kind,
        plan.growth_exchanges,
        workers=plan.workers,
        postgres_url=POSTGRES_URL,
        postgres=which,
        echo=True,
    )
    return [dataclasses.asdict(run) for run in runs]


# --- the table ---------------------------------------------------------------------------------

Row = tuple[str, str, str, str]


def verdict(ratio: float, target: float, *, below: bool = False) -> str:
    met = ratio <= target if below else ratio >= target
    return "met" if met else "MISSED"


def _others(run: dict[str, Any]) -> str:
    other = {code: n for code, n in run["statuses"].items() if not code.startswith("2")}
    if run.get("errors"):
        other["socket errors"] = run["errors"]
    return f" other: {other}" if other else ""


def http_rows(name: str, figures: dict[str, Any], ceiling: float, tpcb: float) -> list[Row]:
    rows: list[Row] = []
    sqlite = name == "SQLite"
    for key, what, p50_target, cpu_target in (
        ("idle_post", "one post, idle server, 1 client", 3.0, 2.0),
        ("idle_balance", "balance read, idle server, 1 client", 1.5, 1.0),
    ):
        run = figures[key]
        p50, cpu = run["p50_ms"], run["server_cpu_ms_per_request"]
        rows.append(
            (
                f"{name} {what}",
                f"p50 {p50:.2f} ms, server CPU {cpu:.2f} ms/request ({run['ok_per_s']:,.0f}/s)"
                + _others(run),
                f"{p50 / p50_target:.1f}x / {cpu / cpu_target:.1f}x of target",
                f"target <= {p50_target:g} ms / <= {cpu_target:g} ms: "
                f"{verdict(p50, p50_target, below=True)} / {verdict(cpu, cpu_target, below=True)}",
            )
        )
    for key, label, target in (
        ("posts_32", "32 clients", 0.25 if sqlite else 0.20),
        ("posts_128", "128 clients", None),
        ("hot_128", "hot, 10 members, 128 clients", 0.25),
    ):
        run = figures[key]
        ratio = run["ok_per_s"] / ceiling
        cpu = (
            f", server CPU {run['server_cpu_ms_per_request']:.2f} ms/post"
            if "server_cpu_ms_per_request" in run
            else ""
        )
        rows.append(
            (
                f"{name} single posts, {label}",
                f"{run['ok_per_s']:,.0f}/s p50 {run['p50_ms']:.1f} ms p99 {run['p99_ms']:.1f} ms"
                + cpu
                + _others(run),
                f"{ratio:.0%} of ceiling",
                f"target >= {target:.0%}: {verdict(ratio, target)}" if target else "",
            )
        )
    if "intertrades_32" in figures:
        run, posts = figures["intertrades_32"], figures["posts_32"]
        rows.append(
            (
                f"{name} intertrades, 32 clients",
                f"{run['ok_per_s']:,.0f}/s p50 {run['p50_ms']:.1f} ms p99 {run['p99_ms']:.1f} ms"
                f", server CPU {run['server_cpu_ms_per_request']:.2f} ms/intertrade" + _others(run),
                f"{run['ok_per_s'] / posts['ok_per_s']:.2f}x single posts (32 clients)",
                "",
            )
        )
    batch = figures["batches"]
    refused = f" refused: {batch['refused']}" if batch["refused"] else ""
    if math.isfinite(tpcb):  # a SQLite-only run measures no pgbench to compare with
        ratio = batch["exchanges_per_s"] / tpcb
        against, judged = f"{ratio:.2f}x tpcb-like", verdict(ratio, 2)
    else:
        against, judged = "no pgbench in this run", "not measured"
    rows.append(
        (
            f"{name} batches of 1000, 2 clients",
            f"{batch['exchanges_per_s']:,.0f} exchanges/s p50 {batch['p50_ms']:.0f} ms" + refused,
            against,
            f"target >= 2x: {judged}",
        )
    )
    reads = figures["reads_under_load"]
    for read in ("balance", "statement"):
        p99 = reads[read]["p99_ms"]
        rows.append(
            (
                f"{name} {read} read while 32 connections post",
                f"p50 {reads[read]['p50_ms']:.1f} ms p99 {p99:.1f} ms"
                f" ({reads[read]['ok_per_s']:,.0f}/s)" + _others(reads[read]),
                f"posts meanwhile {figures['posts_under_reads']['ok_per_s']:,.0f}/s"
                if read == "balance"
                else "",
                f"target p99 < 15 ms: {verdict(p99, 15, below=True)}" if read == "balance" else "",
            )
        )
    return rows


def _count(exchanges: int) -> str:
    return f"{exchanges / 1e6:g}M" if exchanges >= 1_000_000 else f"{exchanges // 1000:,}k"


def growth_rows(runs: list[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for run in runs:
        at = {m["exchanges"]: m["median_ms"] for m in run["milestones"]}
        shown = ", ".join(f"{_count(n)} {ms:,.0f} ms" for n, ms in at.items() if n >= 10_000)
        if run.get("failure"):
            shown += f" (stopped: {run['failure']})"
        last = max(at) if at else 0
        if 10_000 in at and last > 10_000:
            ratio = at[last] / at[10_000]
            rows.append(
                (
                    f"{run['label']} flat growth, batch of 1000",
                    shown,
                    f"{_count(last)} / 10k: {ratio:.2f}x",
                    "target <= 1.3x at 1M: "
                    + (
                        "MISSED (stopped)"
                        if run.get("failure")
                        else verdict(ratio, 1.3, below=True)
                    )
                    + ("" if last >= 1_000_000 else f" (measured to {_count(last)} only)"),
                )
            )
        else:
            rows.append(
                (
                    f"{run['label']} flat growth, batch of 1000",
                    shown or "no milestone reached",
                    "",
                    "target <= 1.3x at 1M: not measured (run to more than 10k exchanges)",
                )
            )
    return rows


def soak_rows(result: dict[str, Any]) -> list[Row]:
    first, last = result["windows"][0], result["windows"][-1]
    met = soak.verdicts(result)
    return [
        (
            f"{result['database']} soak, {result['connections']} connections, "
            f"{result['seconds']:.0f} s",
            f"first {result['window_s']:.0f} s {first['ok_per_s']:,.0f}/s p99 "
            f"{first['p99_ms']:.0f} ms -> last {last['ok_per_s']:,.0f}/s p99 "
            f"{last['p99_ms']:.0f} ms; {result['exchanges']:,} exchanges, errors "
            f"{result['errors']}, RSS {result['rss_mb_start']:.0f} -> "
            f"{result['rss_mb_end']:.0f} MB, audit {'ok' if result['audit_ok'] else 'FAILED'}",
            f"last {result['last_vs_first']:.0%} of first, worst p99 "
            f"{result['worst_p99_vs_first']:.1f}x",
            "targets >= 90 % / < 4x / 0 errors: "
            + " / ".join("met" if met[k] else "MISSED" for k in list(met)[:3])
            + ("" if met["audit ok"] else " / audit FAILED"),
        )
    ]


def report_rows(report: dict[str, Any]) -> list[Row]:
    kind = report["database"]
    rows: list[Row] = [
        (
            f"{kind} mutuality report, {report['exchanges']:,} exchanges",
            f"{report['report_s']:.3f} s",
            "",
            f"target < 2 s: {verdict(report['report_s'], 2, below=True)}"
            if kind == "postgresql"
            else "",
        )
    ]
    for fmt in ("ledger", "csv"):
        rss = report[f"export_{fmt}_peak_rss_mb"]
        rows.append(
            (
                f"{kind} export --format {fmt}",
                f"{report[f'export_{fmt}_s']:.1f} s, peak RSS {rss:.0f} MB",
                "",
                f"target RSS < 150 MB: {verdict(rss, 150, below=True)}"
                if kind == "postgresql"
                else "",
            )
        )
    early, late = report["as_of_balance_ms_at_10k_entries"], report["as_of_balance_ms_at_end"]
    rows.append(
        (
            f"{kind} as-of balance, 10k -> {report['entries_at_end']:,} entries",
            f"{early:.2f} ms -> {late:.2f} ms",
            f"{late / early:.2f}x",
            "flat" if late / early < 2 else "GROWS",
        )
    )
    return rows


def summarize(results: dict[str, Any]) -> list[Row]:
    ceiling = results["ceilings"]["framework"]["ok_per_s"]
    rows: list[Row] = [
        (
            f"bare FastAPI POST, {results['workers']} workers (framework ceiling)",
            f"{ceiling:,.0f} req/s",
            "",
            "",
        )
    ]
    for server, settings in results["postgres"].items():
        rows.append(
            (
                f"PostgreSQL {server}: {settings['address']}",
                f"version {settings['server_version']}, autovacuum {settings['autovacuum']}",
                "",
                "",
            )
        )
        for key, label in (("simple_update_tps", "simple-update (-N)"), ("tpcb_like_tps", "tpcb")):
            if key in settings:
                rows.append((f"  pgbench {label}, 8 clients", f"{settings[key]:,.0f} TPS", "", ""))
    first_tpcb = next(
        (s["tpcb_like_tps"] for s in results["postgres"].values() if "tpcb_like_tps" in s),
        float("nan"),
    )
    for name, figures in results["http"].items():
        if name == "sqlite":
            rows += http_rows("SQLite", figures, ceiling, first_tpcb)
        else:
            server = name.split(" ", 1)[1]
            tpcb = results["postgres"][server].get("tpcb_like_tps", first_tpcb)
            rows += http_rows(f"PostgreSQL {server}", figures, ceiling, tpcb)
    rows += growth_rows(results.get("growth", []))
    for result in results.get("soak", []):
        rows += soak_rows(result)
    for report in results.get("reports", []):
        rows += report_rows(report)
    return rows


def print_table(rows: list[Row]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, help="per HTTP measurement (10)")
    parser.add_argument(
        "--quick", action="store_true", help="5 s runs, 100k growth, 1-minute soaks"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny runs that only check the wiring")
    parser.add_argument(
        "--growth-exchanges", type=int, help="flat growth stops here (1M; --quick 100k)"
    )
    parser.add_argument("--soak-seconds", type=float, help="each soak (300; --quick 60)")
    parser.add_argument(
        "--postgres",
        choices=("shared", "private", "both"),
        default="both",
        help="the machine's PostgreSQL, a private cluster with production settings, or both",
    )
    parser.add_argument("--database", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument(
        "--skip", action="append", choices=PARTS, default=[], help="leave out a part (repeat)"
    )
    args = parser.parse_args(argv)
    require_tools()
    plan = SMOKE if args.smoke else QUICK if args.quick else Plan()
    plan = dataclasses.replace(
        plan,
        seconds=args.seconds or plan.seconds,
        growth_exchanges=args.growth_exchanges or plan.growth_exchanges,
        soak_seconds=args.soak_seconds or plan.soak_seconds,
    )
    parts = [part for part in PARTS if part not in args.skip]
    kinds = ("postgresql", "sqlite") if args.database == "both" else (args.database,)
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
        "plan": dataclasses.asdict(plan),
        "workers": plan.workers,
        "postgres": {},
        "http": {},
        "soak": [],
        "growth": [],
        "reports": [],
    }
    print("ceiling: bare FastAPI...", flush=True)
    results["ceilings"] = {"framework": framework_ceiling(plan.seconds, plan.workers)}
    which = ("shared", "private") if args.postgres == "both" else (args.postgres,)
    if "postgresql" in kinds:
        with postgres_servers(args.postgres) as servers:
            for server, url in servers:
                settings: dict[str, Any] = server_settings(url)
                print(f"PostgreSQL {server} ({settings}): pgbench...", flush=True)
                settings.update(database_ceiling(url, plan.seconds))
                results["postgres"][server] = settings
                if "http" in parts:
                    print(f"HTTP on postgresql {server}...", flush=True)
                    results["http"][f"postgresql {server}"] = http_figures("postgresql", plan, url)
                if "soak" in parts:
                    print(f"soak on postgresql {server}...", flush=True)
                    label = f"postgresql {server} (autovacuum {settings['autovacuum']})"
                    results["soak"].append(soak_run("postgresql", plan, url, label))
    if "sqlite" in kinds:
        if "http" in parts:
            print("HTTP on sqlite...", flush=True)
            results["http"]["sqlite"] = http_figures("sqlite", plan, POSTGRES_URL)
        if "soak" in parts:
            print("soak on sqlite...", flush=True)
            results["soak"].append(soak_run("sqlite", plan, POSTGRES_URL, "sqlite"))
    if "growth" in parts:
        for kind in kinds:
            print(f"flat growth on {kind} ({plan.growth_exchanges:,} exchanges)...", flush=True)
            results["growth"] += growth_figures(kind, plan, which)
    if "reports" in parts:
        for kind in kinds:
            exchanges = plan.report_exchanges[kind]
            print(f"reports on {kind} ({exchanges:,} exchanges)...", flush=True)
            results["reports"].append(mutuality_report.run(kind, plan.report_members, exchanges))
    results["minutes"] = (time.monotonic() - started) / 60
    results["mode"] = "smoke" if args.smoke else "quick" if args.quick else "full"
    # A smoke run's figures mean nothing: they stay out of bench/results.
    folder = Path(tempfile.gettempdir()) if args.smoke else RESULTS
    folder.mkdir(exist_ok=True)
    out = folder / f"{datetime.now(UTC):%Y-%m-%d}{'-smoke' if args.smoke else ''}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print()
    print_table(summarize(results))
    print(f"\n{results['minutes']:.1f} minutes; figures in {out}")


def soak_run(kind: str, plan: Plan, postgres_url: str, label: str) -> dict[str, Any]:
    return soak.run(
        kind,
        seconds=plan.soak_seconds,
        interval=plan.soak_interval,
        workers=plan.workers,
        postgres_url=postgres_url,
        label=label,
        echo=False,
    )


if __name__ == "__main__":
    main()
