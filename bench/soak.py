"""`make soak`: does posting hold up over minutes? 32 connections post single exchanges for 5
minutes against a fresh database and one `protocoop serve --workers 2` that is never restarted.

For each database (and each PostgreSQL configuration, `--postgres`: the machine's server, and a
throwaway cluster with production settings, autovacuum on, `bench.flat_growth.private_cluster`;
both by default) it creates a fresh database with 1,000 members, starts the
server and runs wrk (`bench/wrk/post.lua`, unique Idempotency-Keys, random pairs) in back-to-back
runs of `--interval` seconds (30 by default). It prints throughput and p50/p99 latency per interval
and per window of two intervals (a minute by default; a window's p99 comes from the merged latency
histograms, not from averaging), errors (any answer that is not 201, and wrk's socket errors), the
server's resident memory (every process of its group) at the start and at the end, and the audit
(`GET .../audit` with an auditor key) at the end. No warm-up and no ANALYZE: the first interval
is a fresh server on a fresh database, as in production.

Verdicts: the last window's throughput >= 90 % of the first's; every window's p99 < 4x the first
window's; 0 errors; the audit ok.

    .venv/bin/python -m bench.soak                            # both databases, 5 minutes each
    .venv/bin/python -m bench.soak --database sqlite --seconds 20 --interval 5   # a smoke run

Nothing here is asserted: the figures go into notes, not into tests.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    COMMUNITY,
    MEMBER_PREFIX,
    POSTGRES_URL,
    autovacuum,
    create_key,
    fresh_database,
    group_cpu_seconds,
    group_rss_mb,
    percentile_ms,
    prepare,
    running_server,
    wrk,
)
from protocoop.auth.roles import Role

FIRST_SHARE = 0.9
"""The last window's throughput must be at least this share of the first's."""
P99_GROWTH = 4.0
"""No window's p99 may reach this multiple of the first window's."""


def _window(chunks: list[dict[str, Any]], label: str) -> dict[str, Any]:
    seconds = sum(c["seconds"] for c in chunks)
    ok = sum(c["ok"] for c in chunks)
    merged = [bucket for c in chunks for bucket in c["histogram"]]
    return {
        "label": label,
        "seconds": seconds,
        "ok": ok,
        "ok_per_s": ok / seconds if seconds else 0.0,
        "p50_ms": percentile_ms(merged, 0.5),
        "p99_ms": percentile_ms(merged, 0.99),
        "errors": sum(c["errors"] for c in chunks),
    }


def run(
    kind: str,
    *,
    seconds: float = 300,
    interval: float = 30,
    connections: int = 32,
    members: int = 1000,
    workers: int = 2,
    postgres_url: str = POSTGRES_URL,
    label: str | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Soak one database; returns the figures (see the module docstring)."""
    label = label or kind
    workdir = Path(tempfile.mkdtemp(prefix=f"protocoop-soak-{kind}-"))
    try:
        with fresh_database(kind, workdir, postgres_url) as database_url:
            token, _ = prepare(database_url, members)
            auditor = create_key(database_url, Role.AUDITOR)
            with running_server(database_url, workdir, workers, kind == "sqlite") as (
                url,
                group,
            ):
                path = f"/v1/communities/{COMMUNITY}/exchanges"
                rss_start = group_rss_mb(group)
                cpu_start = group_cpu_seconds(group)
                chunks: list[dict[str, Any]] = []
                for number in range(max(1, math.ceil(seconds / interval))):
                    result = wrk(
                        "post.lua",
                        url,
                        [path, token, MEMBER_PREFIX, str(members), f"soak{number}"],
                        connections,
                        interval,
                        histogram=True,
                    )
                    other = {c: n for c, n in result["statuses"].items() if c != "201"}
                    chunk = {
                        "seconds": result["seconds"],
                        "ok": result["statuses"].get("201", 0),
                        "histogram": result["histogram"],
                        "errors": sum(other.values()) + result["errors"],
                        "statuses": result["statuses"],
                        "socket_errors": result["errors"],
                    }
                    chunks.append(chunk)
                    if echo:
                        one = _window([chunk], "")
                        print(
                            f"  {label} soak {number * interval:>5.0f}-"
                            f"{(number + 1) * interval:<5.0f}s {one['ok_per_s']:8,.0f}/s "
                            f"p99 {one['p99_ms']:7.1f} ms errors {one['errors']}"
                            + (f" {other}" if other else ""),
                            flush=True,
                        )
                server_cpu = group_cpu_seconds(group) - cpu_start
                rss_end = group_rss_mb(group)
                audit = httpx.get(
                    f"{url}/v1/communities/{COMMUNITY}/audit",
                    headers={"Authorization": f"Bearer {auditor}"},
                    timeout=1800,
                ).json()
        per_interval = [
            _window([c], f"{n * interval:.0f}-{(n + 1) * interval:.0f} s")
            for n, c in enumerate(chunks)
        ]
        windows = [
            _window(chunks[n : n + 2], f"{n * interval:.0f}-{(n + 2) * interval:.0f} s")
            for n in range(0, len(chunks), 2)
        ]
        first, last = windows[0], windows[-1]
        errors = sum(c["errors"] for c in chunks)
        statuses: dict[str, int] = {}
        for c in chunks:
            for code, n in c["statuses"].items():
                statuses[code] = statuses.get(code, 0) + n
        worst_p99 = max(w["p99_ms"] for w in windows)
        return {
            "database": label,
            "seconds": sum(c["seconds"] for c in chunks),
            "interval_s": interval,
            "window_s": 2 * interval,
            "connections": connections,
            "exchanges": sum(c["ok"] for c in chunks),
            "intervals": per_interval,
            "windows": windows,
            "errors": errors,
            "statuses": statuses,
            "rss_mb_start": rss_start,
            "rss_mb_end": rss_end,
            "server_cpu_s": server_cpu,
            "audit_ok": bool(audit.get("ok")),
            "audit_checked_exchanges": audit.get("checked_exchanges"),
            "audit_problems": audit.get("problems", [])[:10],
            "last_vs_first": last["ok_per_s"] / first["ok_per_s"] if first["ok_per_s"] else 0.0,
            "worst_p99_vs_first": worst_p99 / first["p99_ms"] if first["p99_ms"] else math.inf,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """The soak's three targets (and the audit), each met or not."""
    return {
        "last >= 90 % of first": result["last_vs_first"] >= FIRST_SHARE,
        "p99 < 4x first": result["worst_p99_vs_first"] < P99_GROWTH,
        "0 errors": result["errors"] == 0,
        "audit ok": result["audit_ok"],
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['database']}: {result['connections']} connections for "
        f"{result['seconds']:.0f} s, {result['exchanges']:,} exchanges, "
        f"server RSS {result['rss_mb_start']:.0f} -> {result['rss_mb_end']:.0f} MB, "
        f"audit {'ok' if result['audit_ok'] else 'FAILED'} "
        f"({result['audit_checked_exchanges']} exchanges checked)"
    ]
    intervals = result["intervals"]
    shown = [("first", intervals[0])] + ([("last", intervals[-1])] if len(intervals) > 1 else [])
    for which, one in shown:
        lines.append(
            f"  {which} {result['interval_s']:.0f} s ({one['label']}): {one['ok_per_s']:,.0f}/s "
            f"p50 {one['p50_ms']:.1f} ms p99 {one['p99_ms']:.1f} ms"
        )
    for window in result["windows"]:
        lines.append(
            f"  {window['label']:>12}: {window['ok_per_s']:8,.0f}/s p50 {window['p50_ms']:7.1f} ms "
            f"p99 {window['p99_ms']:7.1f} ms errors {window['errors']}"
        )
    lines.append(
        f"  last window {result['last_vs_first']:.0%} of the first (target >= 90 %); worst p99 "
        f"{result['worst_p99_vs_first']:.1f}x the first's (target < 4x); errors "
        f"{result['errors']} (target 0)"
        + ("" if result["errors"] == 0 else f" {result['statuses']}")
    )
    lines.append(
        "  verdict: "
        + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in verdicts(result).items())
    )
    return "\n".join(lines)


@contextmanager
def postgres_servers(which: str, shared_url: str) -> Iterator[list[tuple[str, str]]]:
    """[(label, server URL)] for `which` ('shared', 'private' or 'both'): the machine's server
    and/or a throwaway cluster with production settings, stopped on exit."""
    with ExitStack() as stack:
        servers: list[tuple[str, str]] = []
        if which in ("shared", "both"):
            servers.append((f"postgresql shared (autovacuum {autovacuum(shared_url)})", shared_url))
        if which in ("private", "both"):
            from bench.flat_growth import private_cluster

            url = stack.enter_context(private_cluster())
            servers.append((f"postgresql private (autovacuum {autovacuum(url)})", url))
        yield servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=300, help="how long each soak posts")
    parser.add_argument("--interval", type=float, default=30, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="protocoop serve --workers")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="the machine's server")
    parser.add_argument(
        "--postgres",
        choices=("shared", "private", "both"),
        default="both",
        help="the machine's server, a private cluster with production settings, or both",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("soak: wrk not found on PATH (Debian: apt-get install wrk)")
    kinds = ("postgresql", "sqlite") if args.database == "both" else (args.database,)
    results = []

    def one(kind: str, server_url: str, label: str) -> None:
        results.append(
            run(
                kind,
                seconds=args.seconds,
                interval=args.interval,
                connections=args.connections,
                members=args.members,
                workers=args.workers,
                postgres_url=server_url,
                label=label,
            )
        )

    for kind in kinds:
        if kind == "sqlite":
            one("sqlite", args.postgres_url, "sqlite")
            continue
        with postgres_servers(args.postgres, args.postgres_url) as servers:
            for label, server_url in servers:
                one(kind, server_url, label)
    print()
    for result in results:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
