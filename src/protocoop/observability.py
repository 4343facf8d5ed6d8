"""What operators see: Prometheus metrics and structured JSON logs carrying the request id.

Metrics (at `/metrics`): request latency by route template, method and status; exchanges
recorded and refused (by problem code); batch sizes; group-commit sizes; database connections in
use. With several worker processes, `protocoop serve` points `PROMETHEUS_MULTIPROC_DIR` at a
shared directory so `/metrics` adds up every worker.

Logs are one JSON object per line with `request_id` (also sent back as `X-Request-Id`), so a
client's report can be matched with the server's lines. Tokens never appear in them.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("protocoop_request_id", default=None)

REQUEST_SECONDS = Histogram(
    "protocoop_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EXCHANGES_RECORDED = Counter(
    "protocoop_exchanges_recorded_total", "Exchanges recorded (or proposed) by posting requests."
)
POSTS_REFUSED = Counter(
    "protocoop_posts_refused_total", "Posting requests refused, by problem code.", ["code"]
)
BATCH_SIZE = Histogram(
    "protocoop_batch_size",
    "Exchanges per posting request.",
    buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000),
)
GROUP_COMMIT_SIZE = Histogram(
    "protocoop_group_commit_requests",
    "Posting requests recorded per group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
DB_CONNECTIONS_IN_USE = Gauge(
    "protocoop_db_connections_in_use",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)


def metrics_document() -> tuple[bytes, str]:
    """The Prometheus text exposition (every worker's, in multiprocess mode)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    """JSON lines on stderr, each with the current request's id (idempotent)."""
    root = logging.getLogger()
    if any(getattr(handler, "_protocoop", False) for handler in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}{request_id}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_RequestIdFilter())
    handler._protocoop = True  # type: ignore[attr-defined]
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # protocoop writes its own access log (PROTOCOOP_ACCESS_LOG), with the request id.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers = []
    uvicorn_access.propagate = False


def count_posting_answer(status: int, code: str | None, exchanges: int) -> None:
    """Count one posting request's outcome (after its transaction committed): `code` is its
    refusal's problem code, as the writer decided it (None for a success)."""
    BATCH_SIZE.observe(exchanges)
    if status < 300:
        EXCHANGES_RECORDED.inc(exchanges)
        return
    POSTS_REFUSED.labels(code or str(status)).inc()
