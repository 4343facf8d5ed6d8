"""The ledger exported: a ledger-cli/hledger journal that reproduces every balance, or a CSV of
every exchange. Both stream, so memory stays flat however long the history."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.orm import Session

from protocoop.clock import rfc3339
from protocoop.csv_rows import csv_chunks
from protocoop.db.models import Community
from protocoop.ledger.chain import ChainedExchange
from protocoop.ledger.history import chain_links

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


def format_amount(minor_units: int, scale: int) -> str:
    """An integer of minor units as a decimal string with exactly `scale` decimals, no floats."""
    sign = "-" if minor_units < 0 else ""
    whole, fraction = divmod(abs(minor_units), 10**scale)
    return f"{sign}{whole}.{fraction:0{scale}d}" if scale else f"{sign}{whole}"


def journal_account(account_id: str) -> str:
    """`members:alice` for a member, `system:commons` for `@commons` (ledger reads `@` as a
    price)."""
    if account_id.startswith("@"):
        return "system:" + account_id[1:]
    return "members:" + account_id


def journal_commodity(unit_code: str) -> str:
    """The unit as a journal commodity: `HOUR` bare, `"CO2"` quoted (ledger and hledger read a
    bare symbol holding digits or `_` as part of an amount expression)."""
    return unit_code if unit_code.isalpha() else f'"{unit_code}"'


def _one_line(text: str) -> str:
    return " ".join(text.split())


def journal_transaction(exchange: ChainedExchange, unit_code: str, scale: int) -> str:
    """One exchange as a journal transaction: dated, described, one posting per entry."""
    lines = [
        f"{exchange.created_at.strftime('%Y-%m-%d')} * {_one_line(exchange.description)}",
        f"    ; seq: {exchange.seq}",
        f"    ; id: {exchange.id}",
    ]
    if exchange.reverses:
        lines.append(f"    ; reverses: {exchange.reverses}")
    for entry in sorted(exchange.entries, key=lambda e: (e.amount, e.account)):
        amount = format_amount(entry.amount, scale)
        lines.append(f"    {journal_account(entry.account):<40}  {amount} {unit_code}")
    return "\n".join(lines) + "\n\n"


def journal(session: Session, community: Community) -> Iterator[str]:
    """The community's whole ledger as a ledger-cli/hledger journal."""
    yield (
        f"; protocoop ledger of community {community.id} ({_one_line(community.name)})\n"
        f"; unit {community.unit_code} ({_one_line(community.unit_name)}), amounts with "
        f"{community.unit_scale} decimals\n"
        f"commodity {journal_commodity(community.unit_code)}\n\n"
    )
    for exchange, _, _ in chain_links(session, community.id):
        yield journal_transaction(
            exchange, journal_commodity(community.unit_code), community.unit_scale
        )


def exchanges_csv(session: Session, community: Community) -> Iterator[str]:
    """Every exchange as a CSV row (amounts in minor units; entries as `account:amount;...`),
    spreadsheet-safe as `protocoop.csv_rows` writes it."""
    rows = (
        [
            exchange.seq,
            exchange.id,
            rfc3339(exchange.created_at),
            exchange.provider,
            exchange.receiver,
            exchange.amount,
            exchange.description,
            exchange.category,
            exchange.external_id,
            exchange.reverses,
            ";".join(f"{e.account}:{e.amount}" for e in exchange.entries),
            stored_hash,
        ]
        for exchange, _, stored_hash in chain_links(session, community.id)
    )
    yield from csv_chunks(CSV_COLUMNS, rows)
