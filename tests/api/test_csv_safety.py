"""Every CSV protocoop writes (a statement, the balances, `protocoop export --format csv`) opens
safely in a spreadsheet: a text cell that would start a formula (`=`, `+`, `-`, `@`, tab, carriage
return) comes back prefixed with `'`, a line break inside a cell (even a bare carriage return)
never starts a new row, and numbers (negative ones too) stay plain numbers. On SQLite and
PostgreSQL; the files are read back with Python's csv module, as a spreadsheet would read them."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from typer.testing import CliRunner

from protocoop import cli
from protocoop.config import get_settings
from protocoop.db import Database
from tests.support.api import Api
from tests.support.ledger import C, posted

FORMULAS = ["=1+1", "+41", "-150", "@SUM(A1:A2)", "\tcmd", "\r=1+1"]
"""Text starting with each character with which a spreadsheet starts a formula."""
BARE_CR = "first\rsecond"
"""A description holding a carriage return alone, which the old writer left unquoted."""


def parsed(text: str) -> list[list[str]]:
    """The CSV's rows, read as a file opened with `newline=""` (so `\\r` ends an unquoted row)."""
    return list(csv.reader(io.StringIO(text, newline="")))


def neutralised(text: str) -> str:
    return "'" + text


@pytest.fixture
def history(api: Api, community: dict[str, Any]) -> list[dict[str, Any]]:
    """alice gives bob once per dangerous text (in description, category and external id), then
    one exchange with a bare carriage return, then the commons fund gives carol."""
    exchanges = [
        posted(
            api, "alice", "bob", n + 1, description=text, category=text, external_id=f"{text}{n}"
        )
        for n, text in enumerate(FORMULAS)
    ]
    exchanges.append(posted(api, "bob", "alice", 100, description=BARE_CR))
    exchanges.append(posted(api, "@commons", "carol", 4, description="@commons pays"))
    return exchanges


def test_statement_csv_neutralises_formulas_and_keeps_rows_and_numbers(
    api: Api, history: list[dict[str, Any]]
) -> None:
    response = api.get(f"{C}/members/alice/statement", headers={"Accept": "text/csv"})

    assert response.status_code == 200, response.text
    header, *rows = parsed(response.text)
    assert len(rows) == len(FORMULAS) + 1  # one row per exchange of alice's, no more
    line = {column: n for n, column in enumerate(header)}
    assert [r[line["description"]] for r in rows] == [
        *(neutralised(text) for text in FORMULAS),
        BARE_CR,
    ]
    assert [int(r[line["amount"]]) for r in rows] == [*range(1, 7), -100]
    assert int(rows[-1][line["balance_after"]]) == sum(range(1, 7)) - 100
    assert [r[line["counterparty"]] for r in rows] == ["bob"] * 7
    assert ",-100,-79\n" in response.text  # negative numbers stay bare numbers, not `'-100`


def test_commons_in_a_statement_csv_is_neutralised(api: Api, history: list[dict[str, Any]]) -> None:
    response = api.get(f"{C}/members/carol/statement", headers={"Accept": "text/csv"})

    assert response.status_code == 200, response.text
    header, *rows = parsed(response.text)
    line = {column: n for n, column in enumerate(header)}
    assert [(r[line["counterparty"]], r[line["description"]], r[line["amount"]]) for r in rows] == [
        ("'@commons", "'@commons pays", "-4")
    ]


def test_balances_csv_neutralises_account_ids_and_keeps_negative_balances_numbers(
    api: Api, history: list[dict[str, Any]]
) -> None:
    response = api.get(f"{C}/balances", headers={"Accept": "text/csv"})

    assert response.status_code == 200, response.text
    header, *rows = parsed(response.text)
    assert header == ["account", "kind", "balance", "lower_limit", "upper_limit"]
    balance = {r[0]: int(r[2]) for r in rows}
    assert balance == {"'@commons": 4, "alice": -79, "bob": 79, "carol": -4}
    assert "\nalice,member,-79,-100," in response.text  # numbers stay bare numbers


def test_export_csv_neutralises_every_text_cell_and_keeps_rows_and_numbers(
    db: Database, history: list[dict[str, Any]]
) -> None:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli.app,
            ["export", "--community", "riverside", "--format", "csv"],
            prog_name="protocoop",
            env={
                "PROTOCOOP_DATABASE_URL": db.settings.database_url,
                "PROTOCOOP_AUTO_MIGRATE": "false",
            },
        )
    finally:
        get_settings.cache_clear()

    assert result.exit_code == 0, (result.output, result.exception)
    header, *rows = parsed(result.stdout)
    assert len(rows) == len(history)
    by_column = [dict(zip(header, row, strict=True)) for row in rows]
    for n, text in enumerate(FORMULAS):
        assert by_column[n]["description"] == neutralised(text)
        assert by_column[n]["category"] == neutralised(text)
        assert by_column[n]["external_id"] == neutralised(f"{text}{n}")
        assert int(by_column[n]["amount"]) == n + 1
    assert by_column[-2]["description"] == BARE_CR
    assert (by_column[-1]["provider"], by_column[-1]["description"]) == (
        "'@commons",
        "'@commons pays",
    )
    assert all(int(row["seq"]) == n + 1 for n, row in enumerate(by_column))
