"""`make bench`: protocoop against the limits of this machine, measured in the same run.

1. Ceilings: a bare FastAPI app validating the same body, served with the same uvicorn settings
   (the framework ceiling), and pgbench's simple-update (-N) and tpcb-like TPS on the same
   PostgreSQL (the database ceiling).
2. Single posts over HTTP (`protocoop serve --workers 2`, wrk): 32 and 128 connections, unique
   Idempotency-Keys, random pairs among 1,000 members, and a hot community of 10 members.
3. Batches of 1,000 exchanges over HTTP.
4. Reads under write load: balance and statement p50/p99 (4 connections each) during a
   second 32-connection posting run (not the one measured in 2: flat-out readers take CPU).
5. Reports: the mutuality report and the exports on 10,000 members and 1,000,000 exchanges on
   PostgreSQL (100,000 on SQLite), seconds and peak RSS; and an as-of balance at 10k entries and
   at the end, to show it stays flat.

Prints one table with each target as a ratio measured in this run, and writes
`bench/results/<date>.json`. Needs `wrk` and `pgbench` on PATH (Debian: `apt-get install wrk
postgresql-client`). Never part of CI's pass/fail.

    .venv/bin/python -m bench.suite                  # everything (about 9 minutes)
    .venv/bin/python -m bench.suite --quick          # shorter runs, 100k exchanges on PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import mutuality_report
from bench.common import (
    COMMUNITY,
    MEMBER_PREFIX,
    POSTGRES_URL,
    analyze,
    fresh_database,
    group_cpu_seconds,
    prepare,
    running_server,
)
from bench.post_exchanges import measure

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOT = "hot"


# --- tools -------------------------------------------------------------------------------------


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"bench: {', '.join(missing)} not found on PATH "
            "(Debian: apt-get install wrk postgresql-client)"
        )


def wrk(script: str, url: str, args: list[str], connections: int, seconds: int) -> dict[str, Any]:
    """Run wrk with one of bench/wrk/*.lua; returns its RESULT line plus wrk's own CPU seconds."""
    threads = max(1, min(2, connections))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "wrk" / script),
        url,
        "--",
        *args,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read() if process.stdout else ""
    errors = process.stderr.read() if process.stderr else ""
    match = re.search(r"^RESULT (\{.*\})$", output, re.M)
    if status != 0 or match is None:
        raise RuntimeError(f"wrk failed ({status}):\n{output}\n{errors}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["ok_per_s"] = (
        sum(n for code, n in result["statuses"].items() if code.startswith("2")) / result["seconds"]
    )
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- 1. ceilings -------------------------------------------------------------------------------


def framework_ceiling(seconds: int) -> dict[str, Any]:
    """req/s of a bare FastAPI app answering the same POST, uvicorn with 2 workers."""
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
            "2",
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


def database_ceiling(seconds: int) -> dict[str, float]:
    """pgbench TPS (simple-update and tpcb-like, 8 clients) on the same server."""
    url = make_url(POSTGRES_URL)
    name = f"protocoop_pgbench_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
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
                ["pgbench", *base, *extra, "-c", "8", "-j", "2", "-T", str(seconds), name],
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


# --- 2-4. HTTP ---------------------------------------------------------------------------------


@contextmanager
def readers_during(url: str, token: str, seconds: int) -> Any:
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


def http_figures(kind: str, seconds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"protocoop-suite-{kind}-"))
    try:
        with fresh_database(kind, workdir, POSTGRES_URL) as database_url:
            token, members = prepare(database_url, 1000)
            hot_token, _ = prepare(database_url, 10, community=HOT)
            with running_server(database_url, workdir, 2, kind == "sqlite") as (url, group):
                path = f"/v1/communities/{COMMUNITY}/exchanges"
                hot_path = f"/v1/communities/{HOT}/exchanges"
                wrk("post.lua", url, [path, token, MEMBER_PREFIX, "1000", "warm"], 32, 3)
                analyze(database_url)
                figures: dict[str, Any] = {}
                cpu = group_cpu_seconds(group)
                figures["posts_32"] = wrk(
                    "post.lua", url, [path, token, MEMBER_PREFIX, "1000", "p32"], 32, seconds
                )
                figures["posts_32"]["server_cpu_s"] = group_cpu_seconds(group) - cpu
                # The readers get their own run: flat-out readers take CPU from the posts.
                with readers_during(url, token, seconds) as reads:
                    figures["posts_under_reads"] = wrk(
                        "post.lua", url, [path, token, MEMBER_PREFIX, "1000", "pr"], 32, seconds
                    )
                figures["reads_under_load"] = reads
                figures["posts_128"] = wrk(
                    "post.lua", url, [path, token, MEMBER_PREFIX, "1000", "p128"], 128, seconds
                )
                figures["hot_128"] = wrk(
                    "post.lua", url, [hot_path, hot_token, MEMBER_PREFIX, "10", "hot"], 128, seconds
                )
                batches = asyncio.run(
                    measure(
                        "batch of 1000", database_url, url, token, members, group, 2, seconds, 1000
                    )
                )
                figures["batches"] = {
                    "exchanges_per_s": batches.rate,
                    "p50_ms": batches.percentile(0.5),
                    "p99_ms": batches.percentile(0.99),
                    "refused": dict(batches.refused),
                }
                return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- the table ---------------------------------------------------------------------------------


def verdict(ratio: float, target: float, *, below: bool = False) -> str:
    met = ratio <= target if below else ratio >= target
    return "met" if met else "MISSED"


def summarize(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    ceiling = results["ceilings"]["framework"]["ok_per_s"]
    tpcb = results["ceilings"]["database"]["tpcb_like_tps"]
    pg, lite = results["http"]["postgresql"], results["http"]["sqlite"]
    rows = [
        ("bare FastAPI POST (framework ceiling)", f"{ceiling:,.0f} req/s", "", ""),
        (
            "pgbench simple-update (-N), 8 clients",
            f"{results['ceilings']['database']['simple_update_tps']:,.0f} TPS",
            "",
            "",
        ),
        ("pgbench tpcb-like, 8 clients", f"{tpcb:,.0f} TPS", "", ""),
    ]
    for kind, figures in (("PostgreSQL", pg), ("SQLite", lite)):
        for label, key in (
            ("32 clients", "posts_32"),
            ("128 clients", "posts_128"),
            ("hot, 10 members, 128 clients", "hot_128"),
        ):
            run = figures[key]
            ratio = run["ok_per_s"] / ceiling
            target = {"posts_32": 0.5, "hot_128": 0.3}.get(key)
            other = {c: n for c, n in run["statuses"].items() if c != "201"}
            rows.append(
                (
                    f"{kind} single posts, {label}",
                    f"{run['ok_per_s']:,.0f}/s p50 {run['p50_ms']:.1f} ms "
                    f"p99 {run['p99_ms']:.1f} ms" + (f" other: {other}" if other else ""),
                    f"{ratio:.0%} of ceiling",
                    f"target >= {target:.0%}: {verdict(ratio, target)}"
                    if target and kind == "PostgreSQL"
                    else "",
                )
            )
        batch = figures["batches"]["exchanges_per_s"]
        rows.append(
            (
                f"{kind} batches of 1000",
                f"{batch:,.0f} exchanges/s",
                f"{batch / tpcb:.1f}x tpcb-like",
                f"target >= 2x: {verdict(batch / tpcb, 2)}" if kind == "PostgreSQL" else "",
            )
        )
        reads = figures["reads_under_load"]
        for read in ("balance", "statement"):
            rows.append(
                (
                    f"{kind} {read} read under write load",
                    f"p50 {reads[read]['p50_ms']:.1f} ms p99 {reads[read]['p99_ms']:.1f} ms"
                    f" ({reads[read]['ok_per_s']:,.0f}/s)",
                    f"posts meanwhile {figures['posts_under_reads']['ok_per_s']:,.0f}/s"
                    if read == "balance"
                    else "",
                    f"target p99 < 10 ms: {verdict(reads[read]['p99_ms'], 10, below=True)}"
                    if read == "balance"
                    else "",
                )
            )
    sqlite_batch = lite["batches"]["exchanges_per_s"] / pg["batches"]["exchanges_per_s"]
    rows.append(
        (
            "SQLite batches / PostgreSQL batches",
            f"{sqlite_batch:.1f}x",
            "",
            f"target >= 2x: {verdict(sqlite_batch, 2)}",
        )
    )
    for report in results["reports"]:
        kind = report["database"]
        rows.append(
            (
                f"{kind} mutuality report, {report['exchanges']:,} exchanges",
                f"{report['report_s']:.3f} s",
                "",
                f"target < 2 s: {verdict(report['report_s'], 2, below=True)}"
                if kind == "postgresql"
                else "",
            )
        )
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


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per HTTP measurement")
    parser.add_argument("--quick", action="store_true", help="5 s runs, 100k exchanges on PG")
    args = parser.parse_args()
    require_tools()
    seconds = 5 if args.quick else args.seconds
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
    }
    print("ceilings...", flush=True)
    results["ceilings"] = {
        "framework": framework_ceiling(seconds),
        "database": database_ceiling(seconds),
    }
    results["http"] = {}
    for kind in ("postgresql", "sqlite"):
        print(f"HTTP on {kind}...", flush=True)
        results["http"][kind] = http_figures(kind, seconds)
    results["reports"] = []
    for kind, exchanges in (
        ("postgresql", 100_000 if args.quick else 1_000_000),
        ("sqlite", 100_000),
    ):
        print(f"reports on {kind} ({exchanges:,} exchanges)...", flush=True)
        results["reports"].append(mutuality_report.run(kind, 10_000, exchanges))
    results["minutes"] = (time.monotonic() - started) / 60
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}.json"
    out.write_text(json.dumps(results, indent=2))
    print()
    print_table(summarize(results))
    print(f"\n{results['minutes']:.1f} minutes; figures in {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
