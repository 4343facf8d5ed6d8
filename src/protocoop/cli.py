"""The `protocoop` command line. Each command opens its own transaction and commits explicitly.

Every failure is one line on stderr, `error: ...`. Exit 1: the ledger refused (e.g. the id
exists already, the member's balance is not zero; for `check`, mutuality does not hold). Exit
2: the command could not run as asked: a bad invocation (an unknown option, an invalid value, an
id that names nothing), invalid settings, or a database that cannot be used (unreachable, not
migrated, not there). Output meant for scripts (a new token, `--json`) goes alone to stdout.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum, StrEnum
from functools import partial
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, NoReturn, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from typer.core import TyperGroup

from protocoop import __version__
from protocoop.auth.roles import Role
from protocoop.communities import service as communities_service
from protocoop.communities.schemas import CommunityCreate
from protocoop.config import Settings, get_settings
from protocoop.db import Database, migrate
from protocoop.db.engine import schema_missing
from protocoop.db.errors import DatabaseUnavailable, SchemaMissing
from protocoop.errors import (
    NotFound,
    ProblemError,
    SchemaNotMigrated,
    Unavailable,
    ValidationFailed,
)
from protocoop.keys import service as keys_service
from protocoop.ledger import export as export_ledger
from protocoop.links import service as links_service
from protocoop.links.schemas import LinkCreate
from protocoop.members import service as members_service
from protocoop.members.schemas import MemberCreate
from protocoop.mutuality import audit as audit_service
from protocoop.mutuality import service as mutuality_service
from protocoop.mutuality.schemas import MutualityPublic
from protocoop.observability import configure_logging
from protocoop.pagination import MAX_LIMIT
from protocoop.schemas import Page

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_USAGE = 2

# Typer raises click's exceptions, vendored in recent Typer and click's own in older ones.
_click_errors: Any = importlib.import_module(typer.BadParameter.__module__)


class _CommandLine(TyperGroup):
    """Typer's command group, saying a bad invocation in one line (`error: --role must be one of
    ...`, exit 2) and listing its commands with summaries that are never cut off."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _click_errors.NoArgsIsHelpError as error:  # the group's help, as asked
            error.show()
            sys.exit(error.exit_code)
        except _click_errors.UsageError as error:
            typer.echo(f"error: {_usage_line(error)}", err=True)
            sys.exit(EXIT_USAGE)
        except _click_errors.ClickException as error:
            typer.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(EXIT_REFUSED)
        sys.exit(code if isinstance(code, int) else 0)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=sys.maxsize)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _usage_line(error: Any) -> str:
    """A bad invocation in the command line's words: the option as typed, what it accepts."""
    param = getattr(error, "param", None)
    if param is None or not isinstance(error, _click_errors.BadParameter):
        message = str(error.format_message()).rstrip(".")
        where = f"{error.ctx.command_path} " if error.ctx is not None else ""
        return f"{message[:1].lower()}{message[1:]} (see {where}--help)"
    name = _param_name(param)
    choices = _choices(param)
    if isinstance(error, _click_errors.MissingParameter):
        return f"{name} is required" + (f": one of {', '.join(choices)}" if choices else "")
    if choices:
        return f"{name} must be one of {', '.join(choices)}"
    if _declared_type(param) is int:
        low = getattr(param, "min", None)
        high = getattr(param, "max", None)
        if low is not None and high is not None:
            return f"{name} must be a whole number from {low} to {high}"
        if low is not None:
            return f"{name} must be a whole number of at least {low}"
        if high is not None:
            return f"{name} must be a whole number of at most {high}"
        return f"{name} must be a whole number"
    return f"{name}: {_plain(str(error.message))}"


def _param_name(param: Any) -> str:
    """`--community` for an option (its long name), `ID` for an argument."""
    long_names = [opt for opt in getattr(param, "opts", []) if opt.startswith("--")]
    if getattr(param, "param_type_name", "") == "option" and long_names:
        return str(max(long_names, key=len))
    return str(param.human_readable_name)


def _declared_type(param: Any) -> Any:
    """The parameter's annotated type without `| None` (`None` when Typer does not say)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if get_origin(annotation) in (Union, UnionType):
        annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
    if annotation is None and getattr(getattr(param, "type", None), "name", "") == "integer":
        return int
    return annotation


def _choices(param: Any) -> list[str]:
    declared = _declared_type(param)
    if isinstance(declared, type) and issubclass(declared, Enum):
        return [str(member.value) for member in declared]
    return [str(choice) for choice in getattr(getattr(param, "type", None), "choices", None) or []]


def _plain(message: str) -> str:
    """A validation message without pydantic's prefix."""
    return message.removeprefix("Value error, ")


def _typer(help_text: str) -> typer.Typer:
    return typer.Typer(
        cls=_CommandLine,
        help=help_text,
        rich_markup_mode=None,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )


app = _typer("protocoop: a mutual-credit exchange ledger service.")
db_app = _typer("Database migrations (Alembic).")
keys_app = _typer("API keys.")
communities_app = _typer("Communities.")
members_app = _typer("Members of a community.")
links_app = _typer("Links between communities: intertrading with a rate and caps.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(communities_app, name="communities")
app.add_typer(members_app, name="members")
app.add_typer(links_app, name="links")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"protocoop {__version__}")
        raise typer.Exit()


@app.callback()
def _quiet_service_logs(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Commands report failures themselves, in one line; the service's own warnings (which
    # `serve` writes as JSON lines) would only repeat them on stderr.
    logging.getLogger("protocoop").setLevel(logging.ERROR)


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
    except (SchemaNotMigrated, SchemaMissing):
        fail(SchemaNotMigrated.advice, EXIT_USAGE)
    except (Unavailable, DatabaseUnavailable) as error:
        cause = error.__cause__
        if isinstance(cause, DBAPIError):  # say why, not the HTTP advice about Idempotency-Key
            fail(f"database unavailable: {_first_line(cause.orig)}", EXIT_USAGE)
        fail(f"{error.detail}", EXIT_USAGE)
    except ValidationFailed as error:  # a value the service finds invalid, as the API says it
        problems = error.extra.get("errors") or [{"loc": [], "msg": error.detail}]
        fail(_invalid_value(problems[0]), EXIT_USAGE)
    except ProblemError as error:
        # An id that names nothing is the invocation's fault; anything else, the ledger refused.
        code = EXIT_USAGE if isinstance(error, NotFound) else EXIT_REFUSED
        fail(f"{error.code}: {error.detail}", code)
    except ValidationError as error:
        fail(_invalid_input(error), EXIT_USAGE)
    except DBAPIError as error:
        if schema_missing(error):
            fail(SchemaNotMigrated.advice, EXIT_USAGE)
        fail(f"database error: {_first_line(error.orig)}", EXIT_USAGE)
    except SQLAlchemyError as error:  # e.g. a database URL that cannot be parsed or loaded
        fail(f"database error: {_first_line(error)}", EXIT_USAGE)
    except (OSError, RuntimeError) as error:
        fail(str(error), EXIT_USAGE)


_ARGUMENT_NAMES = {"id": "ID", "unit.scale": "--scale"}
"""Input fields whose command-line name is not `--` + the field (`unit.code` is `--unit-code`)."""


def _invalid_input(error: ValidationError) -> str:
    """The first problem with what was typed, named as it was typed (`--lower-limit`, `ID`)."""
    return _invalid_value(error.errors()[0])


def _invalid_value(problem: Any) -> str:
    """One validation problem (pydantic's, or an API problem's `errors` item), named as typed."""
    parts = [str(part) for part in problem.get("loc", ())]
    if parts and parts[0] in ("body", "query", "path"):  # where the API would have read it
        parts = parts[1:]
    field = ".".join(parts)
    if not field:
        return _plain(str(problem["msg"]))
    name = _ARGUMENT_NAMES.get(field, "--" + field.replace(".", "-").replace("_", "-"))
    return f"invalid {name}: {_in_cli_words(problem)}"


_RULES = {
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "literal_error": "must be {expected}",
    "enum": "must be {expected}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "bool_parsing": "must be true or false",
    "missing": "is required",
}
"""Pydantic's common validation errors, said as a rule about the value (`must be at most 0`)."""


def _in_cli_words(problem: Any) -> str:
    """One validation problem as the rule the value breaks, else pydantic's own message."""
    rule = _RULES.get(problem.get("type", ""))
    try:
        return rule.format(**problem.get("ctx", {})) if rule else _plain(problem["msg"])
    except (KeyError, IndexError):
        return _plain(problem["msg"])


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _settings() -> Settings:
    """The settings, or one line and exit 2 when the environment holds an invalid one."""
    with _clear_errors():
        try:
            return get_settings()
        except ValidationError as error:
            first = error.errors()[0]
            variable = "PROTOCOOP_" + "_".join(str(part) for part in first["loc"]).upper()
            fail(f"invalid {variable}: {_in_cli_words(first)}", EXIT_USAGE)


def _sqlite_file(settings: Settings) -> Path | None:
    """The file of a SQLite database (`None` for PostgreSQL or an in-memory database)."""
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def _existing_database(settings: Settings) -> None:
    """Refuse a SQLite file that does not exist: only `serve`, `db upgrade` and `restore` make
    one, so that a command run from the wrong directory does not start a ledger of its own."""
    path = _sqlite_file(settings)
    if path is not None and not path.exists():
        fail(
            f"no database at {path}: set PROTOCOOP_DATABASE_URL to the server's database, or "
            "create one with protocoop db upgrade",
            EXIT_USAGE,
        )


def _database() -> Database:
    """The configured database, migrated first when auto-migration is on (SQLite's default)."""
    settings = _settings()
    _existing_database(settings)
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


def _warn_unless_migrated(settings: Settings) -> None:
    """Say at start when the schema is missing or behind: requests fail until `protocoop db
    upgrade` (and `/readyz` says not ready). A database that does not answer yet is not an
    error here: requests answer 503 until it does."""
    log = logging.getLogger("protocoop.cli")
    try:
        db = Database(settings, pooled=False)
        try:
            current = migrate.current_revisions(db.engine)
        finally:
            db.dispose()
    except Exception as error:
        log.warning("database unavailable at start: %s", _first_line(error))
        return
    if not current:
        log.warning(SchemaNotMigrated.advice)
    elif not current & migrate.head_revisions():
        log.warning("the database schema is behind the latest migration: run protocoop db upgrade")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: settings).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: settings, 8000).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the HTTP API with uvicorn (migrating an embedded SQLite database first)."""
    import inspect

    import uvicorn

    from protocoop.http_protocol import BoundedHttpProtocol

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
    if settings.ui_secret is None:
        # The workers sign dashboard sessions with one secret; they inherit it from here.
        os.environ["PROTOCOOP_UI_SECRET"] = secrets.token_urlsafe(32)
    logging.getLogger("protocoop").setLevel(logging.NOTSET)
    configure_logging(settings.log_level)
    _warn_unless_migrated(settings)
    uvicorn.run(
        "protocoop.app:create_app",
        factory=True,
        http=BoundedHttpProtocol,  # header size, count and time limits (431, 408)
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


REVISIONS = "head, base, a step such as -1 or +1, or a revision id"
_REVISION_ARGUMENT = {"ignore_unknown_options": True}  # so that `-1` is a revision, not an option


def _migrate(step: Callable[[str, str], None], revision: str, *, may_create: bool) -> None:
    """Run an Alembic migration command; an unknown revision is one line and exit 2."""
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    settings = _settings()
    path = _sqlite_file(settings)
    new_file = path is not None and not path.exists()
    if new_file and not may_create:
        _existing_database(settings)
    try:
        with _clear_errors():
            step(settings.database_url, revision)
    except (CommandError, RevisionError) as error:
        _remove_new_file(path if new_file else None)
        fail(f"cannot migrate to {revision!r}: {_first_line(error)} (use {REVISIONS})", EXIT_USAGE)
    except typer.Exit:
        _remove_new_file(path if new_file else None)
        raise
    typer.echo(f"database at {revision}", err=True)


def _remove_new_file(path: Path | None) -> None:
    """Remove the SQLite file a failed `db upgrade` has just created (and SQLite's side files)."""
    if path is not None:
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


@db_app.command("upgrade", context_settings=_REVISION_ARGUMENT)
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="e.g. head or +1")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: the latest); creates a new SQLite file."""
    _migrate(migrate.upgrade, revision, may_create=True)


@db_app.command("downgrade", context_settings=_REVISION_ARGUMENT)
def db_downgrade(revision: Annotated[str, typer.Argument(help="e.g. -1 or base")]) -> None:
    """Migrate the database down to REVISION (`base` empties it)."""
    _migrate(migrate.downgrade, revision, may_create=False)


@db_app.command("current")
def db_current() -> None:
    """Print the database's current revision, `(head)` when it is the latest."""
    settings = _settings()
    _existing_database(settings)
    with _clear_errors():
        db = Database(settings, pooled=False)
    try:
        with _clear_errors():
            current = migrate.current_revisions(db.engine)
    finally:
        db.dispose()
    if not current:
        typer.echo("(none) — run protocoop db upgrade")
    heads = migrate.head_revisions()
    for revision in sorted(current):
        typer.echo(f"{revision}{' (head)' if revision in heads else ''}")


@db_app.command("check")
def db_check() -> None:
    """Exit non-zero when the models and the migrations disagree."""
    from alembic.util.exc import AutogenerateDiffsDetected, CommandError

    settings = _settings()
    _existing_database(settings)
    try:
        with _clear_errors():
            migrate.check(settings.database_url)
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


# --- links -------------------------------------------------------------------------------------


@links_app.command("create")
def links_create(
    a: Annotated[str, typer.Argument(metavar="A", help="One community.")],
    b: Annotated[str, typer.Argument(metavar="B", help="The other community.")],
    rate_a: Annotated[int, typer.Option(help="Minor units of A's unit ...")],
    rate_b: Annotated[int, typer.Option(help="... worth this many minor units of B's.")],
    a_cap: Annotated[int, typer.Option(help="How far A's clearing account may go below 0.")],
    b_cap: Annotated[int, typer.Option(help="How far B's clearing account may go below 0.")],
    as_json: JsonOption = False,
) -> None:
    """Link two communities so that their members can trade (intertrades)."""
    with _clear_errors():
        spec = LinkCreate.model_validate(
            {"a": a, "b": b, "rate": {"a": rate_a, "b": rate_b}, "a_cap": a_cap, "b_cap": b_cap}
        )
    created = _write(lambda session: links_service.create_link(session, spec, by=None))
    _print_rows([created], ["id", "a", "b", "a_cap", "b_cap", "status"], as_json)


@links_app.command("list")
def links_list(as_json: JsonOption = False) -> None:
    """List every link, with its rate, caps and status."""
    rows = _read(
        lambda session: _every(
            lambda after: links_service.list_links(
                session, visible_to=None, after=after, limit=MAX_LIMIT
            )
        )
    )
    _print_rows(rows, ["id", "a", "b", "a_cap", "b_cap", "status"], as_json)


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
    force: Annotated[bool, typer.Option("--force", help="Replace the file if it exists.")] = False,
) -> None:
    """Back up the whole database while it serves: SQLite with its online backup API (the file
    is a SQLite database), PostgreSQL with `pg_dump --format=custom` (must be on PATH)."""
    from protocoop.db import backup as backups

    settings = _settings()
    _existing_database(settings)
    if output.exists() and not force:
        fail(f"{output.resolve()} exists; choose another file, or pass --force to replace it")
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
