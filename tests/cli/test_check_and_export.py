"""`protocoop check` (is mutuality holding? for cron) and `protocoop export` (the ledger as a
ledger-cli/hledger journal or a CSV), run against the test's database on SQLite and PostgreSQL.

Most runs go through typer's CliRunner in this process (fast); one runs the installed console
script, as cron would. The journal is read by both real tools, `ledger` and `hledger`: every
balance each computes must equal protocoop's, to the unit. A tool not on PATH skips its run of
those tests with the reason, except under `CI=true`, where it fails (CI installs both)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import text
from typer.testing import CliRunner

from protocoop import cli
from protocoop.config import get_settings
from protocoop.db import Database
from tests.support.api import Api, create_community, create_member
from tests.support.databases import IN_CI, tampering
from tests.support.ledger import all_exchanges, posted, reverse
from tests.support.workflows import proposed, set_levy

PROTOCOOP = Path(sys.executable).parent / "protocoop"
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/protocoop"
CSV_COLUMNS = [
    "seq",
    "id",
    "created_at",
    "provider",
    "receiver",
    "amount",
    "description",
    "category",
    "external_id",
    "reverses",
    "entries",
    "hash",
]
"""The CSV's columns as `src/protocoop/ledger/export.py` documents them."""


def run(database_url: str, *arguments: str) -> Result:
    """`protocoop ARGUMENTS` in this process against `database_url`."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(
            cli.app,
            list(arguments),
            prog_name="protocoop",
            env={"PROTOCOOP_DATABASE_URL": database_url, "PROTOCOOP_AUTO_MIGRATE": "false"},
        )
    finally:
        get_settings.cache_clear()


def one_line_error(result: Result, exit_code: int) -> str:
    """A refusal: exit `exit_code`, nothing on stdout, one line on stderr."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def url(db: Database) -> str:
    return db.settings.database_url


def break_first_exchange(db: Database, community: str = "riverside") -> None:
    """Add 1 to bob's entry of the community's first exchange, behind the service's back."""
    with tampering(db) as connection:
        connection.execute(
            text(
                "UPDATE entries SET amount = amount + 1 WHERE community_id = :c AND seq = 1 "
                "AND account_id = 'bob'"
            ),
            {"c": community},
        )


@pytest.fixture
def two_communities(api: Api, community: dict[str, Any]) -> None:
    """riverside: a small reciprocal history; hillside: one-way (warnings, yet it holds)."""
    posted(api, "alice", "bob", 10)
    posted(api, "bob", "carol", 10)
    posted(api, "carol", "alice", 10)
    create_community(api, "hillside")
    for member in ("alice", "bob"):
        create_member(api, "hillside", member)
    for amount in (1, 2, 3):
        response = api.post(
            "/v1/communities/hillside/exchanges",
            json={"provider": "alice", "receiver": "bob", "amount": amount, "description": "x"},
        )
        assert response.status_code == 201, response.text


# --- protocoop check -----------------------------------------------------------------------------


def test_check_prints_one_verdict_per_community_and_exits_0_when_mutuality_holds(
    db: Database, two_communities: None
) -> None:
    result = run(url(db), "check")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    hillside, riverside = lines
    assert hillside.startswith("hillside: mutuality holds (")
    assert "3 exchanges" in hillside
    assert "mutuality index 0.000" in hillside
    assert "2 warnings" in hillside  # one-way alice and bob: reported, never failing
    assert riverside.startswith("riverside: mutuality holds (")
    assert "mutuality index 1.000" in riverside


def test_check_exits_1_after_a_tampered_row_and_says_why(
    db: Database, two_communities: None
) -> None:
    break_first_exchange(db)

    result = run(url(db), "check")

    assert result.exit_code == 1, result.output
    verdicts = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert set(verdicts) == {"hillside", "riverside"}
    assert verdicts["hillside"].startswith("mutuality holds")
    assert verdicts["riverside"].startswith("MUTUALITY DOES NOT HOLD: integrity: ")
    assert "invariant 1 unbalanced_exchange" in verdicts["riverside"]


def test_check_of_one_community_looks_at_that_community_only(
    db: Database, two_communities: None
) -> None:
    break_first_exchange(db)

    healthy = run(url(db), "check", "--community", "hillside")
    broken = run(url(db), "check", "-c", "riverside")

    assert healthy.exit_code == 0, healthy.output
    assert [line.split(":")[0] for line in healthy.stdout.splitlines()] == ["hillside"]
    assert broken.exit_code == 1, broken.output
    assert [line.split(":")[0] for line in broken.stdout.splitlines()] == ["riverside"]


def test_check_json_is_the_full_report_of_each_community(
    db: Database, two_communities: None
) -> None:
    honest = run(url(db), "check", "--json")
    assert honest.exit_code == 0, honest.output
    reports = json.loads(honest.stdout)
    assert set(reports) == {"hillside", "riverside"}
    assert reports["riverside"]["holds"] is True
    assert reports["riverside"]["indicators"]["mutuality_index"] == 1.0
    assert reports["hillside"]["indicators"]["volume"] == 6
    assert {w["code"] for w in reports["hillside"]["warnings"]} == {"one_way_member"}

    break_first_exchange(db)
    broken = run(url(db), "check", "--json", "--community", "riverside")

    assert broken.exit_code == 1, broken.output
    report = json.loads(broken.stdout)["riverside"]
    assert report["holds"] is False
    assert report["integrity"]["ok"] is False
    assert report["integrity"]["verified_from_seq"] == 0  # check audits everything
    assert "unbalanced_exchange" in {p["code"] for p in report["integrity"]["problems"]}


def test_clean_check_lets_the_report_verify_only_what_came_after(
    api: Api, db: Database, two_communities: None
) -> None:
    assert run(url(db), "check").exit_code == 0
    posted(api, "alice", "carol", 1)

    shown = api.get("/v1/communities/riverside/mutuality").json()

    assert shown["integrity"]["verified_from_seq"] == 3
    assert shown["integrity"]["checkpoint_at"] is not None
    assert shown["holds"] is True


def test_check_of_an_unknown_community_exits_2(db: Database, two_communities: None) -> None:
    line = one_line_error(run(url(db), "check", "--community", "nowhere"), 2)
    assert "nowhere" in line


def test_check_of_an_unreachable_database_exits_2() -> None:
    line = one_line_error(run(UNREACHABLE, "check"), 2)
    assert "database" in line


def test_check_from_the_console_script_as_cron_runs_it(db: Database, two_communities: None) -> None:
    """One run of the installed script (starting it costs seconds): exit 1, and stdout is the
    JSON report alone, so cron can mail it or a script can read it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env["PROTOCOOP_DATABASE_URL"] = url(db)
    env["PROTOCOOP_AUTO_MIGRATE"] = "false"
    break_first_exchange(db)

    done = subprocess.run(
        [str(PROTOCOOP), "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert {cid: r["holds"] for cid, r in json.loads(done.stdout).items()} == {
        "hillside": True,
        "riverside": False,
    }


# --- protocoop export: the journal, read by ledger-cli or hledger --------------------------------


JOURNAL_TOOLS = {
    "ledger": ["ledger", "--args-only", "balance", "--flat", "--no-total", "--empty", "-f"],
    "hledger": ["hledger", "balance", "--flat", "--no-total", "--empty", "-f"],
}
"""Each tool that must read the journal, and its command that prints every account's balance."""


@pytest.fixture(params=sorted(JOURNAL_TOOLS))
def journal_tool(request: pytest.FixtureRequest) -> list[str]:
    """The command of `hledger`, then of `ledger`, that prints a journal's balances; skip the
    test for that tool (fail under CI) when it is not on PATH."""
    name: str = request.param
    if shutil.which(name) is None:
        reason = f"`{name}` is not on PATH: the journal's balances are not checked with it"
        if IN_CI:
            pytest.fail(f"CI=true but {reason} (.ci/run installs Debian's `{name}`)")
        pytest.skip(reason)
    return JOURNAL_TOOLS[name]


BALANCE_LINE = re.compile(r"^\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)(?:\s+(\"[^\"]+\"|\S+))?\s{2,}(\S+)$")


def journal_balances(program: list[str], path: Path, scale: int) -> dict[str, int]:
    """account -> balance in minor units, as `program` (ledger or hledger) computes it from the
    journal."""
    done = subprocess.run(
        [*program, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    balances = {}
    for line in done.stdout.splitlines():
        match = BALANCE_LINE.match(line)
        assert match, f"unexpected line from {program[0]}: {line!r}"
        amount = Decimal(match.group(1).replace(",", ""))
        balances[match.group(3)] = int(amount.scaleb(scale))
    return balances


def protocoop_balances(api: Api, community: str) -> dict[str, int]:
    """Every account's balance by the journal's account names (members:x, system:commons)."""
    response = api.get(f"/v1/communities/{community}/balances", params={"limit": 1000})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    return {
        ("system:" + item["account"][1:])
        if item["account"].startswith("@")
        else ("members:" + item["account"]): item["balance"]
        for item in page["items"]
    }


def exported_journal(db: Database, community: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{community}.journal"
    result = run(url(db), "export", "--community", community, "--format", "ledger", "-o", str(path))
    assert result.exit_code == 0, (result.output, result.exception)
    return path


def test_journal_balances_in_ledger_equal_protocoops(
    api: Api, db: Database, community: dict[str, Any], tmp_path: Path, journal_tool: list[str]
) -> None:
    posted(api, "alice", "bob", 10)
    mistake = posted(api, "bob", "carol", 40, description="x ; (oops) @ 3 HOUR")
    posted(api, "carol", "alice", 7, description="two\nlines,  and   spaces")
    reverse(api, mistake["id"])
    proposed(api, "carol", "bob", 5)  # pending: not in the ledger yet

    expected = protocoop_balances(api, "riverside")
    shown = journal_balances(journal_tool, exported_journal(db, "riverside", tmp_path), scale=0)

    assert {k: v for k, v in shown.items() if v} == {k: v for k, v in expected.items() if v}
    assert shown["members:alice"] == 3
    assert shown["members:bob"] == -10
    assert shown["members:carol"] == 7


def test_journal_of_a_community_with_cents_levies_and_a_reversal_balances_in_ledger(
    api: Api, db: Database, tmp_path: Path, journal_tool: list[str]
) -> None:
    market = "/v1/communities/market"
    # Names may hold line breaks; the journal's header comment must not be broken by them.
    create_community(
        api,
        "market",
        name="Market\nsquare",
        unit={"code": "EUR", "name": "euro\ncents", "scale": 2},
        default_lower_limit=-50000,
    )
    for member in ("alice", "bob", "carol"):
        create_member(api, "market", member)

    def pay(provider: str, receiver: str, amount: int) -> dict[str, Any]:
        response = api.post(
            f"{market}/exchanges",
            json={"provider": provider, "receiver": receiver, "amount": amount, "description": "d"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    set_levy(api, {"rate_ppm": 50_000, "minimum": 1, "paid_by": "provider"}, community="market")
    mistake = pay("alice", "bob", 1050)  # 10.50 EUR, levy 0.53 from alice
    pay("bob", "carol", 333)  # levy 0.17 (16.65 rounded half up)
    response = api.post(f"{market}/exchanges/{mistake['id']}/reverse", json={"reason": "oops"})
    assert response.status_code == 201, response.text
    set_levy(api, {"rate_ppm": 100_000, "minimum": 0, "paid_by": "receiver"}, community="market")
    pay("carol", "alice", 999)  # alice pays 9.99 + 1.00 levy
    set_levy(api, None, community="market")
    pay("@commons", "bob", 25)  # the fund provides: credited like any provider

    expected = protocoop_balances(api, "market")
    journal = exported_journal(db, "market", tmp_path)
    shown = journal_balances(journal_tool, journal, scale=2)

    assert expected["system:commons"] == 17 + 100 + 25  # levies kept, and it provided 0.25
    assert expected["members:alice"] == -1099
    assert {k: v for k, v in shown.items() if v} == {k: v for k, v in expected.items() if v}
    assert "-10.99 EUR" in journal.read_text()


def test_journal_of_a_unit_code_with_digits_balances_in_ledger(
    api: Api, db: Database, tmp_path: Path, journal_tool: list[str]
) -> None:
    # Unit codes may hold digits and underscores (`CO2`, `KG_CO2`); ledger reads a bare symbol
    # with digits as an expression, so the journal must quote it.
    create_community(
        api,
        "carbon",
        unit={"code": "KG_CO2", "name": "kilogram", "scale": 3},
        default_lower_limit=-(10**6),
    )
    for member in ("alice", "bob"):
        create_member(api, "carbon", member)
    response = api.post(
        "/v1/communities/carbon/exchanges",
        json={"provider": "alice", "receiver": "bob", "amount": 1500, "description": "1.5 kg"},
    )
    assert response.status_code == 201, response.text

    shown = journal_balances(journal_tool, exported_journal(db, "carbon", tmp_path), scale=3)

    assert shown["members:alice"] == 1500
    assert shown["members:bob"] == -1500


@pytest.mark.parametrize("scale", range(7))
def test_journal_of_every_unit_scale_reproduces_every_balance(
    api: Api, db: Database, tmp_path: Path, journal_tool: list[str], scale: int
) -> None:
    # hledger refuses a commodity directive whose amount has no decimal mark (`commodity 0 CR`),
    # which a scale-0 journal used to hold; ledger accepted it. Both must read every scale.
    community = f"scale-{scale}"
    create_community(
        api,
        community,
        unit={"code": "CR", "name": "credit", "scale": scale},
        default_lower_limit=-(10**15),
    )
    for member in ("alice", "bob", "carol"):
        create_member(api, community, member)
    for provider, receiver, amount in (
        ("alice", "bob", 10**15),  # the largest amount, in minor units
        ("bob", "carol", 1),  # one minor unit
        ("carol", "alice", 10**scale + 7),
        ("@commons", "carol", 3 * 10**scale + 9),
    ):
        response = api.post(
            f"/v1/communities/{community}/exchanges",
            json={"provider": provider, "receiver": receiver, "amount": amount, "description": "x"},
        )
        assert response.status_code == 201, response.text

    expected = protocoop_balances(api, community)
    shown = journal_balances(journal_tool, exported_journal(db, community, tmp_path), scale)

    assert {k: v for k, v in shown.items() if v} == {k: v for k, v in expected.items() if v}
    assert expected["members:alice"] > 0 > expected["members:bob"]
    assert expected["members:carol"] < 0 < expected["system:commons"]


# --- protocoop export: CSV, output, refusals -----------------------------------------------------


def test_csv_has_one_row_per_exchange_with_the_documented_columns(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    posted(api, "alice", "bob", 10, category="garden", external_id="ext-1")
    mistake = posted(api, "bob", "carol", 4, description='she said "thanks", then\nleft')
    reverse(api, mistake["id"])
    proposed(api, "carol", "alice", 2)  # pending: not an exchange of the ledger yet
    recorded = sorted(
        (x for x in all_exchanges(api) if x.get("seq") is not None), key=lambda x: x["seq"]
    )

    result = run(url(db), "export", "--community", "riverside", "--format", "csv")

    assert result.exit_code == 0, (result.output, result.exception)
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert reader.fieldnames == CSV_COLUMNS
    rows = list(reader)
    assert len(rows) == len(recorded) == 3
    for row, exchange in zip(rows, recorded, strict=True):
        assert int(row["seq"]) == exchange["seq"]
        assert row["id"] == exchange["id"]
        assert (row["provider"], row["receiver"]) == (exchange["provider"], exchange["receiver"])
        assert int(row["amount"]) == exchange["amount"]
        assert row["description"] == exchange["description"]
        assert row["category"] == (exchange["category"] or "")
        assert row["external_id"] == (exchange["external_id"] or "")
        assert row["reverses"] == (exchange["reverses"] or "")
        assert row["hash"] == exchange["hash"]
        assert row["created_at"].endswith("Z")
        entries = dict(part.rsplit(":", 1) for part in row["entries"].split(";"))
        assert {a: int(v) for a, v in entries.items()} == {
            e["account"]: e["amount"] for e in exchange["entries"]
        }
    assert rows[1]["description"] == 'she said "thanks", then\nleft'
    assert rows[2]["reverses"] == mistake["id"]
    assert (rows[2]["provider"], rows[2]["receiver"]) == ("carol", "bob")


def test_export_writes_to_a_file_with_output_and_to_stdout_without(
    api: Api, db: Database, community: dict[str, Any], tmp_path: Path
) -> None:
    posted(api, "alice", "bob", 10)
    posted(api, "bob", "alice", 3)
    target = tmp_path / "riverside.csv"

    to_stdout = run(url(db), "export", "-c", "riverside", "--format", "csv")
    to_file = run(url(db), "export", "-c", "riverside", "--format", "csv", "--output", str(target))

    assert to_stdout.exit_code == 0
    assert to_file.exit_code == 0, (to_file.output, to_file.exception)
    assert to_file.stdout == ""
    assert str(target) in to_file.stderr
    assert target.read_text(encoding="utf-8") == to_stdout.stdout
    assert len(to_stdout.stdout.splitlines()) == 3

    journal = run(url(db), "export", "-c", "riverside")  # the journal is the default format
    assert journal.exit_code == 0
    assert journal.stdout.count("members:alice") == 2
    assert "\ncommodity HOUR\n" in journal.stdout


def test_export_of_an_unknown_community_is_one_line_and_exit_2(
    db: Database, community: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "nowhere.journal"
    line = one_line_error(run(url(db), "export", "--community", "nowhere", "-o", str(target)), 2)
    assert "nowhere" in line
    assert not target.exists()
