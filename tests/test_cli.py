"""The `protocoop` command line, run as an admin would: the installed console script, in a directory
outside the repository, configured by `PROTOCOOP_DATABASE_URL` alone.

Starting the console script costs a second or two, so commands that do not depend on each other run
side by side (`run_together`)."""

from __future__ import annotations

import json
import os
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
        assert "nowhere" in one_line_error(unknown, 1)
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
def test_first_command_on_a_new_sqlite_file_migrates_it(
    standalone_runs: dict[str, Result], standalone_directory: Path
) -> None:
    run = succeeded(standalone_runs["first key"])
    (token,) = run.stdout.splitlines()
    assert token.startswith("pcp_")
    database_url = f"sqlite:///{standalone_directory / 'new.db'}"
    assert table_names(database_url) >= {"communities", "members", "accounts", "api_keys"}
    assert api_status(database_url, token) == 200


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
        (("keys", "list"), {"PROTOCOOP_DATABASE_URL": database, "PROTOCOOP_PORT": "http"}, "port"),
        (
            ("communities", "create", "Not A Slug", "--name", "X"),
            {"PROTOCOOP_DATABASE_URL": database},
            "id",
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
