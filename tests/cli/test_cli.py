"""The `protocoop` command line, run as an admin would: the installed console script, in a directory
outside the repository, configured by `PROTOCOOP_DATABASE_URL` alone.

Starting the console script costs a second or two, so commands that do not depend on each other run
side by side (`run_together`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from protocoop.app import create_app
from protocoop.cli import app as cli_app
from protocoop.config import Settings, get_settings
from protocoop.db import migrate

PROTOCOOP = Path(sys.executable).parent / "protocoop"
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/protocoop"

Command = tuple[str, ...]
Result = subprocess.CompletedProcess[str]


def protocoop(*arguments: str, database_url: str, cwd: Path) -> Result:
    """Run the console script with only `PROTOCOOP_DATABASE_URL` set among protocoop's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env["PROTOCOOP_DATABASE_URL"] = database_url
    return subprocess.run(
        [str(PROTOCOOP), *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_together(database_url: str, cwd: Path, *commands: Command) -> list[Result]:
    """Run independent commands side by side; results in the order given."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = [
            pool.submit(protocoop, *command, database_url=database_url, cwd=cwd)
            for command in commands
        ]
        return [future.result() for future in futures]


def succeeded(result: Result) -> Result:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def one_line_error(result: Result, exit_code: int) -> str:
    """Assert a refusal: nothing on stdout, exactly one line on stderr, `exit_code`."""
    assert result.returncode == exit_code, (result.args, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def api_status(database_url: str, token: str, path: str = "/v1/communities") -> int:
    """The status the HTTP API answers `token` with on `path`."""
    settings = Settings(database_url=database_url, auto_migrate=False, _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        return response.status_code


def table_names(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the repository (no alembic.ini, no .env, no migrations)."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


@pytest.mark.slow
def test_an_admin_session_from_outside_the_repository(
    backend: str, empty_database_url: str, elsewhere: Path
) -> None:
    """db upgrade → keys → communities → members → refusals → db downgrade, on each database.

    Members, listings and refusals go through the same code whatever the database, so PostgreSQL
    (where the command line's own work is connecting, migrating and writing) skips them."""
    url = empty_database_url
    everything = backend == "sqlite"
    (head,) = migrate.head_revisions()

    succeeded(protocoop("db", "upgrade", database_url=url, cwd=elsewhere))
    current, check, admin_key, community = run_together(
        url,
        elsewhere,
        ("db", "current"),
        ("db", "check"),
        ("keys", "create", "--role", "admin", "--label", "ops"),
        ("communities", "create", "riverside", "--name", "Riverside Timebank",
         "--default-lower-limit", "-50", "--default-upper-limit", "500"),
    )  # fmt: skip
    assert succeeded(current).stdout.splitlines() == [f"{head} (head)"]
    succeeded(check)
    token_lines = succeeded(admin_key).stdout.splitlines()
    assert len(token_lines) == 1, admin_key.stdout  # the token, alone, for TOKEN=$(...)
    token = token_lines[0]
    assert token.startswith("pcp_")
    assert token not in admin_key.stderr
    key_id = next(word for word in admin_key.stderr.split() if word.startswith("key_"))
    assert "Riverside Timebank" in succeeded(community).stdout
    assert api_status(url, token) == 200
    assert api_status(url, token, "/v1/communities/riverside") == 200

    if everything:
        member, keys, unknown, duplicate = run_together(
            url,
            elsewhere,
            ("members", "create", "-c", "riverside", "bakery", "--name", "Bakery Co-op",
             "--kind", "organization", "--lower-limit", "-900"),
            ("keys", "list", "--json"),
            ("members", "list", "--community", "nowhere"),
            ("communities", "create", "riverside", "--name", "Again"),
        )  # fmt: skip
        succeeded(member)
        listed_keys = json.loads(succeeded(keys).stdout)
        assert [(k["id"], k["role"], k["label"], k["revoked_at"]) for k in listed_keys] == [
            (key_id, "admin", "ops", None)
        ]
        assert token not in keys.stdout
        assert token[12:] not in keys.stdout  # not even the secret part after the shown prefix
        assert "nowhere" in one_line_error(unknown, 2)  # an id that names nothing: exit 2
        assert "already_exists" in one_line_error(duplicate, 1)

    if everything:
        members, revoked = run_together(
            url,
            elsewhere,
            ("members", "list", "-c", "riverside", "--json"),
            ("keys", "revoke", key_id),
        )
        assert [
            (m["id"], m["name"], m["kind"], m["balance"], m["lower_limit"], m["upper_limit"])
            for m in json.loads(succeeded(members).stdout)
        ] == [("bakery", "Bakery Co-op", "organization", 0, -900, 500)]
    else:
        revoked = protocoop("keys", "revoke", key_id, database_url=url, cwd=elsewhere)
    assert succeeded(revoked).stdout == ""
    assert api_status(url, token) == 401  # revoked: refused from the next request on

    succeeded(protocoop("db", "downgrade", "base", database_url=url, cwd=elsewhere))
    assert table_names(url) <= {"alembic_version"}
    assert not list(elsewhere.iterdir())  # nothing was written where the commands ran


@pytest.fixture(scope="module")
def standalone_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("standalone")


@pytest.fixture(scope="module")
def standalone_runs(standalone_directory: Path) -> dict[str, Result]:
    """Commands that need no prepared database, run side by side once for the tests below."""
    directory = standalone_directory
    commands: dict[str, tuple[str, Command]] = {
        "first key": (f"sqlite:///{directory / 'new.db'}", ("keys", "create", "--role", "admin")),
        "unreachable": (UNREACHABLE, ("keys", "list")),
        "help": (UNREACHABLE, ("--help",)),
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {
            name: pool.submit(protocoop, *command, database_url=url, cwd=directory)
            for name, (url, command) in commands.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.slow
def test_a_key_for_a_sqlite_file_that_is_not_there_is_refused_with_its_path(
    standalone_runs: dict[str, Result], standalone_directory: Path
) -> None:
    """A key made beside a new, empty ledger would be refused by the running server: say where
    the command looked instead, and create nothing."""
    line = one_line_error(standalone_runs["first key"], 2)
    assert str((standalone_directory / "new.db").resolve()) in line
    assert "protocoop db upgrade" in line
    assert not (standalone_directory / "new.db").exists()


@pytest.mark.slow
def test_unreachable_database_is_one_line_and_exit_2(standalone_runs: dict[str, Result]) -> None:
    assert "database" in one_line_error(standalone_runs["unreachable"], 2)


def _in_process(
    monkeypatch: pytest.MonkeyPatch, directory: Path, *arguments: str, **environment: str
) -> Any:
    """Run the command line in this process (fast), with only `environment` among protocoop's
    variables and `directory` as working directory."""
    for name in list(os.environ):
        if name.startswith("PROTOCOOP_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(directory)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli_app, list(arguments), prog_name="protocoop")
    finally:
        get_settings.cache_clear()


def test_bad_configuration_or_input_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    """Configuration and input the command line cannot use: one line, exit 2, no traceback."""
    database = f"sqlite:///{elsewhere / 'p.db'}"
    for arguments, environment, expected in (
        (("communities", "list"), {"PROTOCOOP_DATABASE_URL": "not a url"}, "database"),
        (("keys", "list"), {"PROTOCOOP_DATABASE_URL": "nosuchdb://x"}, "database"),
        (("db", "current"), {"PROTOCOOP_DATABASE_URL": "not a url"}, "database"),
        (
            ("keys", "list"),
            {"PROTOCOOP_DATABASE_URL": database, "PROTOCOOP_PORT": "http"},
            "PROTOCOOP_PORT",
        ),
        (
            ("communities", "create", "Not A Slug", "--name", "X"),
            {"PROTOCOOP_DATABASE_URL": database},
            "ID",
        ),
    ):
        result = _in_process(monkeypatch, elsewhere, *arguments, **environment)
        assert isinstance(result.exception, SystemExit | None), (arguments, result.exception)
        assert result.exit_code == 2, (arguments, result.output)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (arguments, result.stderr)
        assert lines[0].startswith("error: ")
        assert expected in lines[0], (arguments, lines[0])


@pytest.mark.slow
def test_console_script_shows_help(standalone_runs: dict[str, Result]) -> None:
    run = succeeded(standalone_runs["help"])
    for group in ("serve", "db", "keys", "communities", "members"):
        assert group in run.stdout


def _every_command(group: Any, prefix: Command = ()) -> Iterator[Command]:
    yield prefix
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _every_command(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_and_group_has_help() -> None:
    """In process (the console script's own `--help` is checked above): new commands are found by
    walking the command tree."""
    commands = list(_every_command(typer.main.get_command(cli_app)))
    assert {
        ("serve",),
        ("db", "upgrade"),
        ("db", "downgrade"),
        ("db", "current"),
        ("db", "check"),
        ("keys", "create"),
        ("keys", "list"),
        ("keys", "revoke"),
        ("communities", "create"),
        ("communities", "list"),
        ("members", "create"),
        ("members", "list"),
    } <= set(commands)
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(cli_app, [*command, "--help"], prog_name="protocoop")
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output, command


# --- what a first-time user trips over ---------------------------------------------------------


def _refused(result: Any, exit_code: int) -> str:
    """An in-process refusal: `exit_code`, nothing on stdout, one `error: ` line on stderr."""
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return str(lines[0])


def _done(result: Any) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def _never_serve(*_: Any, **__: Any) -> None:
    raise AssertionError("the server was started")


def _leaf_commands() -> set[Command]:
    group = typer.main.get_command(cli_app)
    commands: set[Command] = set()
    for command in _every_command(group):
        found: Any = group
        for name in command:
            found = found.commands[name]
        if command and not hasattr(found, "commands"):
            commands.add(command)
    return commands


MINIMAL_ARGUMENTS: dict[Command, Command] = {
    ("serve",): (),
    ("db", "upgrade"): (),
    ("db", "downgrade"): ("base",),
    ("db", "current"): (),
    ("db", "check"): (),
    ("keys", "create"): ("--role", "admin"),
    ("keys", "list"): (),
    ("keys", "revoke"): ("key_x",),
    ("communities", "create"): ("riverside", "--name", "Riverside"),
    ("communities", "list"): (),
    ("members", "create"): ("-c", "riverside", "bakery", "--name", "Bakery"),
    ("members", "list"): ("-c", "riverside"),
    ("links", "create"): (
        *("riverside", "hillside", "--rate-a", "1", "--rate-b", "1"),
        *("--a-cap", "0", "--b-cap", "0"),
    ),
    ("links", "list"): (),
    ("check",): (),
    ("export",): ("-c", "riverside"),
    ("backup",): ("--output", "backup.db"),
    ("restore",): ("--input", "backup.db"),
}
"""Every command with the least it needs to get past its arguments."""


def test_every_command_is_known_to_these_tests() -> None:
    assert _leaf_commands() == set(MINIMAL_ARGUMENTS)


def test_serve_refuses_a_port_outside_1_to_65535(
    monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", _never_serve)
    database = f"sqlite:///{elsewhere / 'p.db'}"
    for port in ("99999", "65536", "0", "-1"):
        result = _in_process(
            monkeypatch, elsewhere, "serve", "--port", port, PROTOCOOP_DATABASE_URL=database
        )
        assert _refused(result, 2) == "error: --port must be a whole number from 1 to 65535"
    assert not list(elsewhere.iterdir())


def test_unknown_revisions_are_one_line_and_exit_2(
    backend: str, empty_database_url: str, monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    """Nor does a failed `db upgrade` leave a new SQLite file behind; `-1` is a revision."""
    url = empty_database_url

    def db(*arguments: str) -> Any:
        return _in_process(monkeypatch, elsewhere, "db", *arguments, PROTOCOOP_DATABASE_URL=url)

    def refused_revision(result: Any) -> None:
        line = _refused(result, 2)
        assert "'nonsense'" in line
        assert "head" in line  # what would have been accepted

    refused_revision(db("upgrade", "nonsense"))
    if backend == "sqlite":
        database = Path(make_url(url).database or "")
        assert not list(database.parent.glob(f"{database.name}*"))
    else:
        assert table_names(url) <= {"alembic_version"}

    _done(db("upgrade"))
    refused_revision(db("downgrade", "nonsense"))
    assert "(head)" in _done(db("current")).stdout
    _done(db("downgrade", "-1"))
    current = _done(db("current")).stdout
    assert current.strip()
    assert "(head)" not in current


def test_an_unsupported_database_url_is_one_line_from_every_command(
    monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    """And never shows the URL's password."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", _never_serve)
    for url in ("mysql://ops:s3cret@db.example.org/ledger", "postgresql+asyncpg://ops:s3cret@db/x"):
        for command, arguments in MINIMAL_ARGUMENTS.items():
            result = _in_process(
                monkeypatch, elsewhere, *command, *arguments, PROTOCOOP_DATABASE_URL=url
            )
            line = _refused(result, 2)
            assert "unsupported database URL" in line, (command, line)
            assert "(sqlite or postgresql)" in line, (command, line)
            assert "s3cret" not in result.output, (command, result.output)
    assert not list(elsewhere.iterdir())


@pytest.fixture
def never_migrated_url(backend: str, empty_database_url: str) -> str:
    """A database that exists but holds no schema (SQLite: an empty file)."""
    if backend == "sqlite":
        Path(make_url(empty_database_url).database or "").touch()
    return empty_database_url


def test_commands_on_a_database_never_migrated_say_to_run_db_upgrade(
    never_migrated_url: str, monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    environment = {"PROTOCOOP_DATABASE_URL": never_migrated_url, "PROTOCOOP_AUTO_MIGRATE": "false"}
    current = _done(_in_process(monkeypatch, elsewhere, "db", "current", **environment))
    assert current.stdout == "(none) — run protocoop db upgrade\n"
    for command in (
        ("keys", "create", "--role", "admin"),
        ("keys", "list"),
        ("communities", "list"),
        ("members", "list", "-c", "riverside"),
        ("check",),
        ("export", "-c", "riverside"),
    ):
        result = _in_process(monkeypatch, elsewhere, *command, **environment)
        assert _refused(result, 2) == (
            "error: the database schema is not migrated: run protocoop db upgrade"
        ), command
    assert table_names(never_migrated_url) == set()


def test_only_serve_db_upgrade_and_restore_create_a_database(
    monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    """Run from a directory without the ledger (the default URL is ./protocoop.db), a command
    says where it looked and creates nothing."""
    expected_path = str((elsewhere / "protocoop.db").resolve())
    for command, arguments in MINIMAL_ARGUMENTS.items():
        if command in {("serve",), ("db", "upgrade"), ("restore",)}:
            continue
        line = _refused(_in_process(monkeypatch, elsewhere, *command, *arguments), 2)
        assert expected_path in line, (command, line)
        assert not list(elsewhere.iterdir()), command
    _done(_in_process(monkeypatch, elsewhere, "db", "upgrade"))
    assert (elsewhere / "protocoop.db").is_file()


def test_exit_1_is_a_refusal_and_exit_2_an_id_that_names_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    """The same for every command: `check` keeps 1 for 'mutuality does not hold'."""
    environment = {"PROTOCOOP_DATABASE_URL": database_url, "PROTOCOOP_AUTO_MIGRATE": "false"}
    create = ("communities", "create", "riverside", "--name", "Riverside")
    _done(_in_process(monkeypatch, elsewhere, *create, **environment))
    assert "already_exists" in _refused(
        _in_process(monkeypatch, elsewhere, *create, **environment), 1
    )
    for command in (
        ("check", "--community", "nowhere"),
        ("export", "--community", "nowhere"),
        ("members", "list", "--community", "nowhere"),
        ("members", "create", "--community", "nowhere", "bakery", "--name", "Bakery"),
        ("keys", "create", "--role", "app", "--community", "nowhere"),
        ("keys", "revoke", "key_nowhere"),
    ):
        line = _refused(_in_process(monkeypatch, elsewhere, *command, **environment), 2)
        assert "not_found" in line, (command, line)
        assert "nowhere" in line, (command, line)
    # what the service finds invalid is named as typed, too
    line = _refused(
        _in_process(monkeypatch, elsewhere, "keys", "create", "--role", "app", **environment), 2
    )
    assert line.startswith("error: invalid --community: "), line


def test_bad_values_are_named_as_they_were_typed(
    monkeypatch: pytest.MonkeyPatch, elsewhere: Path
) -> None:
    database = {"PROTOCOOP_DATABASE_URL": f"sqlite:///{elsewhere / 'p.db'}"}
    for command, expected in (
        (
            ("keys", "create", "--role", "boss"),
            "error: --role must be one of admin, treasurer, app, auditor",
        ),
        (("keys", "create"), "error: --role is required: one of admin, treasurer, app, auditor"),
        (
            ("export", "-c", "riverside", "--format", "pdf"),
            "error: --format must be one of ledger, csv",
        ),
        (
            ("members", "create", "-c", "riverside", "bakery", "--name", "B", "--lower-limit", "5"),
            "error: invalid --lower-limit: must be at most 0",
        ),
        (
            ("communities", "create", "riverside", "--name", "R", "--scale", "9"),
            "error: invalid --scale: must be at most 6",
        ),
        (("serve", "--workers", "0"), "error: --workers must be a whole number of at least 1"),
    ):
        assert _refused(_in_process(monkeypatch, elsewhere, *command, **database), 2) == expected
    for variable, value, expected in (
        ("PROTOCOOP_PORT", "http", "error: invalid PROTOCOOP_PORT: must be a whole number"),
        ("PROTOCOOP_PORT", "0", "error: invalid PROTOCOOP_PORT: must be at least 1"),
    ):
        result = _in_process(
            monkeypatch, elsewhere, "keys", "list", **database, **{variable: value}
        )
        assert _refused(result, 2) == expected
    unknown = _refused(_in_process(monkeypatch, elsewhere, "keys", "list", "--bogus"), 2)
    assert "--bogus" in unknown
    assert "protocoop keys list --help" in unknown
    assert not list(elsewhere.iterdir())


def test_version_is_the_installed_one(monkeypatch: pytest.MonkeyPatch, elsewhere: Path) -> None:
    from importlib.metadata import version

    import protocoop

    result = _done(_in_process(monkeypatch, elsewhere, "--version"))
    assert result.stdout == f"protocoop {protocoop.__version__}\n"
    assert protocoop.__version__ == version("protocoop")


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _first_sentence(text: str) -> str:
    paragraph = _normalized(text.split("\n\n")[0])
    found = re.match(r"(.+?\.)(?: |$)", paragraph)
    return found.group(1) if found else paragraph


@pytest.mark.parametrize("columns", [None, "40", "80"])
def test_help_is_never_cut_off(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    """Without a terminal (CliRunner has none), with COLUMNS unset or narrow: every command's
    summary in its group's help, and every option's help, are there in full."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    root = typer.main.get_command(cli_app)
    runner = CliRunner()
    for path in _every_command(root):
        command: Any = root
        for name in path:
            command = command.commands[name]
        result = runner.invoke(cli_app, [*path, "--help"], prog_name="protocoop")
        assert result.exit_code == 0, (path, result.output)
        shown = _normalized(result.output)
        for name, sub in getattr(command, "commands", {}).items():
            assert f"{name} {_first_sentence(sub.help)}" in shown, (path, name, result.output)
        for parameter in command.params:
            if getattr(parameter, "help", None):
                assert _normalized(parameter.help) in shown, (path, parameter.name, result.output)


@pytest.mark.slow
def test_an_admin_links_two_communities_and_lists_the_link(
    empty_database_url: str, elsewhere: Path
) -> None:
    url = empty_database_url
    succeeded(protocoop("db", "upgrade", database_url=url, cwd=elsewhere))
    for community in ("riverside", "hillside"):
        command = ("communities", "create", community, "--name", community.title())
        succeeded(protocoop(*command, database_url=url, cwd=elsewhere))
    link = ("--rate-a", "100", "--rate-b", "2000", "--a-cap", "1000", "--b-cap", "30000")
    created = succeeded(
        protocoop(
            "links",
            "create",
            "riverside",
            "hillside",
            *link,
            "--json",
            database_url=url,
            cwd=elsewhere,
        )
    )
    [made] = json.loads(created.stdout)
    assert (made["a"], made["b"], made["rate"], made["status"]) == (
        "riverside",
        "hillside",
        {"a": 100, "b": 2000},
        "active",
    )
    listed = succeeded(protocoop("links", "list", "--json", database_url=url, cwd=elsewhere))
    assert [row["id"] for row in json.loads(listed.stdout)] == [made["id"]]
    again = protocoop(
        "links", "create", "hillside", "riverside", *link, database_url=url, cwd=elsewhere
    )
    assert "already linked" in one_line_error(again, 1)
    itself = protocoop(
        "links", "create", "riverside", "riverside", *link, database_url=url, cwd=elsewhere
    )
    assert "cannot link to itself" in one_line_error(itself, 2)
