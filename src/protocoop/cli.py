"""The `protocoop` command line. Each command opens its own transaction and commits explicitly.

Refusals print one line on stderr and exit 1; a database that cannot be reached, or a bad
invocation, exits 2. Output meant for scripts (a new token, `--json`) goes alone to stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from protocoop.audit import service as audit_service
from protocoop.auth import service as keys_service
from protocoop.auth.roles import Role
from protocoop.communities import service as communities_service
from protocoop.communities.schemas import CommunityCreate
from protocoop.config import Settings, get_settings
from protocoop.db import Database, migrate
from protocoop.errors import ProblemError, Unavailable
from protocoop.ledger import export as export_ledger
from protocoop.members import service as members_service
from protocoop.members.schemas import MemberCreate
from protocoop.mutuality import service as mutuality_service
from protocoop.mutuality.schemas import MutualityPublic
from protocoop.observability import configure_logging
from protocoop.pagination import MAX_LIMIT
from protocoop.schemas import Page

T = TypeVar("T")

app = typer.Typer(
    help="protocoop: a mutual-credit exchange ledger service.",
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
communities_app = typer.Typer(help="Communities.", no_args_is_help=True)
members_app = typer.Typer(help="Members of a community.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(communities_app, name="communities")
app.add_typer(members_app, name="members")


@app.callback()
def _quiet_service_logs() -> None:
    # Commands report failures themselves, in one line; the service's own warnings (which
    # `serve` writes as JSON lines) would only repeat them on stderr.
    logging.getLogger("protocoop").setLevel(logging.ERROR)


EXIT_REFUSED = 1
EXIT_USAGE = 2

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CommunityOption = Annotated[str, typer.Option("--community", "-c", help="Community id.")]


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn any failure into one line and an exit code, never a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Unavailable as error:
        cause = error.__cause__
        if isinstance(cause, DBAPIError):  # say why, not the HTTP advice about Idempotency-Key
            fail(f"database unavailable: {_first_line(cause.orig)}", EXIT_USAGE)
        fail(f"{error.detail}", EXIT_USAGE)
    except ProblemError as error:
        fail(f"{error.code}: {error.detail}")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        fail(f"invalid {where}: {first['msg']}", EXIT_USAGE)
    except DBAPIError as error:
        fail(f"database error: {_first_line(error.orig)}", EXIT_USAGE)
    except SQLAlchemyError as error:  # e.g. a database URL that cannot be parsed or loaded
        fail(f"database error: {_first_line(error)}", EXIT_USAGE)
    except (OSError, RuntimeError) as error:
        fail(str(error), EXIT_USAGE)


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _settings() -> Settings:
    """The settings, or one line and exit 2 when the environment holds an invalid one."""
    with _clear_errors():
        return get_settings()


def _database() -> Database:
    """The configured database, migrated first when auto-migration is on (SQLite's default)."""
    settings = _settings()
    with _clear_errors():
        if settings.auto_migrate:
            migrate.upgrade(settings.database_url)
        return Database(settings, pooled=False)


def _write(work: Callable[[Any], T]) -> T:
    db = _database()
    try:
        with _clear_errors():
            return db.run_write(work)
    finally:
        db.dispose()


def _read(work: Callable[[Any], T]) -> T:
    db = _database()
    try:
        with _clear_errors(), db.read() as session:
            return work(session)
    finally:
        db.dispose()


def _every(fetch: Callable[[str | None], Page[Any]]) -> list[Any]:
    """All items of a paginated listing (services page by the last item's `id`)."""
    items: list[Any] = []
    after: str | None = None
    while True:
        page = fetch(after)
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        after = page.items[-1].id


def _print_rows(rows: list[BaseModel], columns: list[str], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    typer.echo("\t".join(columns))
    for row in rows:
        values = row.model_dump(mode="json")
        typer.echo("\t".join("" if values[c] is None else str(values[c]) for c in columns))


# --- serve -------------------------------------------------------------------------------------

WORKER_HEALTHCHECK_TIMEOUT_S = 60
"""How long uvicorn's supervisor waits for a worker to answer its ping before killing it as hung.
A spawned worker answers only once it has re-imported this module (typer, FastAPI, SQLAlchemy,
Alembic: ~3 s on an idle small machine); with uvicorn's default of 5 s, a busy machine kills and
respawns workers in a loop, and `--workers N` never serves with N workers."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings, 8000).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the HTTP API with uvicorn (migrating an embedded SQLite database first)."""
    import inspect

    import uvicorn

    settings = _settings()
    with _clear_errors():
        if settings.auto_migrate:
            migrate.upgrade(settings.database_url)
    supervisor: dict[str, Any] = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        supervisor["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_TIMEOUT_S
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Every worker writes its metrics here, so /metrics adds them all up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="protocoop-metrics-")
    logging.getLogger("protocoop").setLevel(logging.NOTSET)
    configure_logging(settings.log_level)
    uvicorn.run(
        "protocoop.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        **supervisor,
    )


# --- db ----------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the database up to REVISION (default: the latest)."""
    with _clear_errors():
        migrate.upgrade(_settings().database_url, revision)
    typer.echo(f"database at {revision}", err=True)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="e.g. -1 or base")]) -> None:
    """Migrate the database down to REVISION (`base` empties it)."""
    with _clear_errors():
        migrate.downgrade(_settings().database_url, revision)
    typer.echo(f"database at {revision}", err=True)


@db_app.command("current")
def db_current() -> None:
    """Print the database's current revision (nothing when never migrated)."""
    settings = _settings()
    with _clear_errors():
        db = Database(settings, pooled=False)
    try:
        with _clear_errors():
            current = migrate.current_revisions(db.engine)
    finally:
        db.dispose()
    heads = migrate.head_revisions()
    for revision in sorted(current):
        typer.echo(f"{revision}{' (head)' if revision in heads else ''}")


@db_app.command("check")
def db_check() -> None:
    """Exit non-zero when the models and the migrations disagree."""
    from alembic.util.exc import AutogenerateDiffsDetected, CommandError

    try:
        with _clear_errors():
            migrate.check(_settings().database_url)
    except (AutogenerateDiffsDetected, CommandError) as error:
        fail(str(error).splitlines()[0])
    typer.echo("models and migrations agree", err=True)


# --- keys --------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="admin, treasurer, app or auditor.")],
    community: Annotated[
        str | None, typer.Option(help="Required for every role but admin.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Who or what holds the key.")] = None,
) -> None:
    """Create a key and print its token alone on stdout (it is shown this once)."""
    created = _write(
        lambda session: keys_service.create_key(
            session, role=role, community_id=community, label=label, created_by=None
        )
    )
    typer.echo(f"created {created.role.value} key {created.id}", err=True)
    typer.echo(created.token)


@keys_app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """List keys (never their tokens)."""
    keys = _read(
        lambda session: _every(
            lambda after: keys_service.list_keys(
                session, visible_to=None, after=after, limit=MAX_LIMIT
            )
        )
    )
    _print_rows(keys, ["id", "role", "community", "label", "prefix", "revoked_at"], as_json)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key; it stops working from the next request."""
    _write(lambda session: keys_service.revoke_key(session, key_id, by=None))
    typer.echo(f"revoked {key_id}", err=True)


# --- communities -------------------------------------------------------------------------------


@communities_app.command("create")
def communities_create(
    community_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str, typer.Option(help="Display name.")],
    unit_code: Annotated[str, typer.Option(help="Unit code, e.g. HOUR.")] = "HOUR",
    unit_name: Annotated[str, typer.Option(help="Unit name, e.g. hour.")] = "hour",
    scale: Annotated[int, typer.Option(help="Amounts are in 10^-scale units.")] = 0,
    default_lower_limit: Annotated[int, typer.Option(help="<= 0, minor units.")] = 0,
    default_upper_limit: Annotated[
        int | None, typer.Option(help=">= 0, minor units; omit for no cap.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a community (with its @commons fund)."""
    with _clear_errors():
        spec = CommunityCreate.model_validate(
            {
                "id": community_id,
                "name": name,
                "unit": {"code": unit_code, "name": unit_name, "scale": scale},
                "default_lower_limit": default_lower_limit,
                "default_upper_limit": default_upper_limit,
            }
        )
    created = _write(lambda session: communities_service.create_community(session, spec))
    _print_rows([created], ["id", "name", "default_lower_limit", "default_upper_limit"], as_json)


@communities_app.command("list")
def communities_list(as_json: JsonOption = False) -> None:
    """List every community."""
    communities = _read(
        lambda session: _every(
            lambda after: communities_service.list_communities(
                session, visible_to=None, after=after, limit=MAX_LIMIT
            )
        )
    )
    _print_rows(communities, ["id", "name", "status", "created_at"], as_json)


# --- members -----------------------------------------------------------------------------------


@members_app.command("create")
def members_create(
    community: CommunityOption,
    member_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str, typer.Option(help="Display name.")],
    kind: Annotated[str, typer.Option(help="person or organization.")] = "person",
    lower_limit: Annotated[int | None, typer.Option(help="Default: the community's.")] = None,
    upper_limit: Annotated[int | None, typer.Option(help="Default: the community's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a member to a community."""
    document: dict[str, Any] = {"id": member_id, "name": name, "kind": kind}
    if lower_limit is not None:
        document["lower_limit"] = lower_limit
    if upper_limit is not None:
        document["upper_limit"] = upper_limit
    with _clear_errors():
        spec = MemberCreate.model_validate(document)
    created = _write(lambda session: members_service.create_member(session, community, spec))
    _print_rows([created], ["id", "name", "kind", "lower_limit", "upper_limit"], as_json)


@members_app.command("list")
def members_list(community: CommunityOption, as_json: JsonOption = False) -> None:
    """List a community's members with balances and limits."""

    def every_member(session: Any) -> list[Any]:
        communities_service.get_community(session, community)
        return _every(
            lambda after: members_service.list_members(
                session, community, status=None, after=after, limit=MAX_LIMIT
            )
        )

    rows = _read(every_member)
    _print_rows(
        rows, ["id", "name", "kind", "status", "balance", "lower_limit", "upper_limit"], as_json
    )


# --- check and export --------------------------------------------------------------------------


def _verdict(community_id: str, report: MutualityPublic) -> str:
    """One line: does mutuality hold in this community, and if not, why."""
    figures = (
        f"seq {report.as_of_seq}, {report.indicators.exchanges} exchanges, "
        f"mutuality index {_ratio(report.indicators.mutuality_index)}, "
        f"{len(report.warnings)} warnings"
    )
    if report.holds:
        return f"{community_id}: mutuality holds ({figures})"
    reasons = []
    if not report.integrity.ok:
        first = report.integrity.problems[0]
        reasons.append(
            f"integrity: {len(report.integrity.problems)} problems "
            f"(invariant {first.invariant} {first.code}: {first.detail})"
        )
    if not report.zero_sum.ok:
        reasons.append(f"balances sum to {report.zero_sum.sum}")
    if report.limits.outside:
        reasons.append(f"{len(report.limits.outside)} members outside their limits")
    return f"{community_id}: MUTUALITY DOES NOT HOLD: {'; '.join(reasons)} ({figures})"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command()
def check(
    community: Annotated[
        str | None, typer.Option("--community", "-c", help="Only this community.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full reports as JSON.")
    ] = False,
) -> None:
    """Check that mutuality holds in every community (for cron): integrity (invariants 1-5),
    zero sum and limits. Exit 0 when it holds everywhere, 1 when it does not, 2 on a usage or
    connection error."""

    def report_all(session: Any) -> list[tuple[str, MutualityPublic]]:
        if community is not None:
            ids = [communities_service.get_community(session, community).id]
        else:
            ids = [
                c.id
                for c in _every(
                    lambda after: communities_service.list_communities(
                        session, visible_to=None, after=after, limit=MAX_LIMIT
                    )
                )
            ]
        return [
            (cid, mutuality_service.community_mutuality(session, cid, None, None, full_audit=True))
            for cid in ids
        ]

    try:
        reports = _read(report_all)
    except typer.Exit as stop:
        raise typer.Exit(EXIT_USAGE) from stop
    for cid, report in reports:
        if report.integrity.ok and report.window.until is None:
            _write(
                partial(
                    audit_service.record_checkpoint,
                    community_id=cid,
                    verified_seq=report.as_of_seq,
                )
            )
    if as_json:
        typer.echo(
            json.dumps({cid: report.model_dump(mode="json") for cid, report in reports}, indent=2)
        )
    else:
        for cid, report in reports:
            typer.echo(_verdict(cid, report))
    if not all(report.holds for _, report in reports):
        raise typer.Exit(EXIT_REFUSED)


class ExportFormat(StrEnum):
    ledger = "ledger"
    csv = "csv"


@app.command()
def export(
    community: CommunityOption,
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="ledger: an hledger/ledger-cli journal; csv.")
    ] = ExportFormat.ledger,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Export a community's whole ledger, streamed: a journal whose `ledger balance` reproduces
    every balance, or a CSV of every exchange."""
    db = _database()
    try:
        with _clear_errors(), db.read() as session:
            found = communities_service.get_community(session, community)
            chunks = (
                export_ledger.journal(session, found)
                if format_ is ExportFormat.ledger
                else export_ledger.exchanges_csv(session, found)
            )
            if output is None:
                for chunk in chunks:
                    sys.stdout.write(chunk)
                sys.stdout.flush()
            else:
                with output.open("w", encoding="utf-8", newline="") as file:
                    for chunk in chunks:
                        file.write(chunk)
                typer.echo(f"wrote {output}", err=True)
    finally:
        db.dispose()


# --- backup and restore ------------------------------------------------------------------------


@app.command()
def backup(
    output: Annotated[Path, typer.Option("--output", "-o", help="The backup file to write.")],
) -> None:
    """Back up the whole database while it serves: SQLite with its online backup API (the file
    is a SQLite database), PostgreSQL with `pg_dump --format=custom` (must be on PATH)."""
    from protocoop.db import backup as backups

    settings = _settings()
    with _clear_errors():
        report = backups.backup(settings, output)
    typer.echo(f"wrote {report.location}: {report.summary()}", err=True)


@app.command()
def restore(
    input_: Annotated[
        Path, typer.Option("--input", "-i", help="A file written by `protocoop backup`.")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database that is not empty.")
    ] = False,
) -> None:
    """Restore a backup into the configured database, which must be empty (a new SQLite file, or
    a database made with `createdb`) unless --force. Stop the server first."""
    from protocoop.db import backup as backups

    settings = _settings()
    try:
        with _clear_errors():
            report = backups.restore(settings, input_, force=force)
    except backups.RestoreRefused as refused:
        fail(str(refused))
    typer.echo(f"restored {report.location}: {report.summary()}", err=True)


def main() -> None:  # pragma: no cover - `python -m protocoop`
    app(prog_name="protocoop")


if __name__ == "__main__":  # pragma: no cover
    main()
