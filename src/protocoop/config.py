"""Settings, read from `PROTOCOOP_*` environment variables and an optional `.env` file."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SqliteSynchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
METRICS_TOKEN_MIN_LENGTH = 16
UI_SECRET_MIN_LENGTH = 32


class Settings(BaseSettings):
    """How one protocoop process is configured."""

    model_config = SettingsConfigDict(
        env_prefix="PROTOCOOP_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # a database URL holds a password
    )

    database_url: str = "sqlite:///./protocoop.db"
    """SQLAlchemy URL: `sqlite:///path` (embedded) or `postgresql+psycopg://user@host/db`."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access_log: bool = False
    """Log every request (method, route, status, duration, request id) as a JSON line; off by
    default because it costs a fifth to a third of the throughput."""
    auto_migrate: bool | None = None
    """Migrate to head when serving; defaults to true for SQLite and false otherwise."""
    sqlite_synchronous: SqliteSynchronous = "FULL"
    """SQLite `PRAGMA synchronous`; FULL makes every acknowledged write survive a power cut."""
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)
    """How long a SQLite writer waits for the write lock before answering 503."""
    sqlite_cache_mib: int = Field(default=32, ge=1)
    """SQLite page cache per connection (`PRAGMA cache_size`), in MiB. SQLite's own default, 2 MiB,
    made every batch slower as the ledger grew (docs/performance.md); each pooled connection may
    fill its cache, so memory grows to at most this times the open connections."""
    db_pool_size: int = Field(default=10, ge=1)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    """PostgreSQL statement timeout; 0 disables it. A request never hangs past this."""
    db_connect_timeout_s: int = Field(default=5, ge=1)
    """How long a request waits to connect to PostgreSQL, and for a free pooled connection (both
    databases), before answering 503."""
    db_pool_recycle_s: int = Field(default=300, ge=1)
    """PostgreSQL connections are replaced after this many seconds."""
    db_statistics_check_s: float = Field(default=1, ge=0)
    """On PostgreSQL, how often (at most, after a commit) a process checks whether a table the
    ledger grows has doubled since it was last analyzed, and ANALYZEs it if so, so that plans stay
    good with autovacuum off (0: never; leave it to autovacuum)."""
    db_retry_attempts: int = Field(default=5, ge=1)
    """Deadlocks and serialization failures are retried this many times before 503."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line and header fields) `serve` reads; a larger one is
    answered 431 and its connection closed, before the rest is read."""
    max_headers: int = Field(default=100, ge=10)
    """Most header fields a request may have (431 beyond)."""
    header_timeout_s: float = Field(default=10, gt=0)
    """How long `serve` waits for a request head to arrive, from its first byte (or from the
    connection's opening) to its end, before answering 408 and closing the connection."""
    body_timeout_s: float = Field(default=30, gt=0)
    """How long a request body may take to arrive, in all, before 408 and closing."""
    group_commit_max: int = Field(default=256, ge=1)
    """Most posting requests one group-commit transaction records."""
    writer_lanes: int = Field(default=4, ge=1)
    """Group-commit writer threads per process on PostgreSQL (a community always uses the same
    one); SQLite always uses one."""
    auth_cache_s: float = Field(default=2, ge=0)
    """How long a process remembers whose a token is, so reads and posts skip a lookup (0: never).
    A revoked key is refused on its next request however long this is."""
    expiry_sweep_s: float = Field(default=30, ge=0)
    """How often the server releases expired pending exchanges (0: only lazily, on access)."""
    idempotency_retention_hours: int = Field(default=48, ge=24)
    """Idempotency keys are remembered at least this long (the spec asks for >= 24 h)."""
    cors_origins: str = ""
    """Comma-separated origins browsers may call the API from (e.g. `https://app.example.org`);
    empty: no CORS headers, so browsers refuse cross-origin calls."""
    rate_limit_per_minute: int = Field(default=0, ge=0)
    """Requests each API key may make per minute in this process (bursts up to that many);
    0: no limit."""
    metrics_token: SecretStr | None = None
    """A bearer token (16 characters or more) that may read `/metrics`, for a Prometheus
    scraper; admin keys may read it too. Unset or empty: admin keys only."""
    metrics_public: bool = False
    """Serve `/metrics` to anyone without a key (it shows every community's activity)."""
    ui_secret: SecretStr | None = None
    """Signs the dashboard's session and CSRF cookies (32 characters or more). Unset: `protocoop
    serve` makes a random one at each start, shared by its workers, so a restart signs everyone
    out."""
    ui_session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)
    """A dashboard sign-in lasts this long."""

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or not token.get_secret_value():
            return None
        if len(token.get_secret_value()) < METRICS_TOKEN_MIN_LENGTH:
            raise ValueError(
                f"the metrics token must be at least {METRICS_TOKEN_MIN_LENGTH} characters "
                "(e.g. the output of `openssl rand -hex 32`)"
            )
        return token

    @field_validator("ui_secret")
    @classmethod
    def _long_ui_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None or not secret.get_secret_value():
            return None
        if len(secret.get_secret_value()) < UI_SECRET_MIN_LENGTH:
            raise ValueError(
                f"the dashboard secret must be at least {UI_SECRET_MIN_LENGTH} characters "
                "(e.g. the output of `openssl rand -hex 32`)"
            )
        return secret

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        return supported_database_url(url)

    @model_validator(mode="after")
    def _default_auto_migrate(self) -> Settings:
        if self.auto_migrate is None:
            self.auto_migrate = self.is_sqlite
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        """`cors_origins` as a list (empty when CORS is off)."""
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


_SUPPORTED_DRIVERS = {
    ("sqlite", ""),
    ("sqlite", "pysqlite"),
    ("postgresql", ""),
    ("postgresql", "psycopg"),
}
"""(backend, driver) pairs protocoop runs on; an empty driver is SQLAlchemy's default."""


def supported_database_url(url: str) -> str:
    """`url` when protocoop can use it (SQLite, or PostgreSQL through psycopg), else a
    `ValueError` that shows the URL without its password."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(
            "unsupported database URL: it is not a URL (sqlite or postgresql, e.g. "
            "sqlite:///./protocoop.db or postgresql+psycopg://user@host/db)"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if (backend, driver) not in _SUPPORTED_DRIVERS:
        shown = parsed.render_as_string(hide_password=True)
        raise ValueError(f"unsupported database URL {shown} (sqlite or postgresql)")
    return url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
