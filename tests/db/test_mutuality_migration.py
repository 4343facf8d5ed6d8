"""Figures kept by posting survive a migration: a ledger recorded before revision 0002 (which
added `accounts.given/received/exchange_count/partner_count/last_exchange_at`, `pair_flows` and the
ledger head's counted volume) gets them computed by the migration, exactly as posting would have
kept them, and posting carries on from them.

The ledger is written in raw SQL against 0001's schema (hashes are dummies: only the figures are
checked here), on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import BigInteger, Engine, String, column, create_engine, select, table

from protocoop.app import create_app
from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database, migrate
from protocoop.db.base import Figure, UTCDateTime
from tests.support.api import Api, make_key

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def xid(name: str) -> str:
    """The exchange id (a UUID, as the API requires) of `r1`, `r2`, ..."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"protocoop-test:{name}"))


_communities = table(
    "communities",
    column("id", String),
    column("name", String),
    column("unit_code", String),
    column("unit_name", String),
    column("unit_scale", BigInteger),
    column("default_lower_limit", BigInteger),
    column("default_upper_limit", BigInteger),
    column("status", String),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
_heads = table(
    "ledger_heads",
    column("community_id", String),
    column("last_seq", BigInteger),
    column("last_hash", String),
    column("last_created_at", UTCDateTime()),
)
_accounts = table(
    "accounts",
    column("community_id", String),
    column("id", String),
    column("kind", String),
    column("balance", BigInteger),
    column("lower_limit", BigInteger),
    column("upper_limit", BigInteger),
    column("reserved_debit", BigInteger),
    column("reserved_credit", BigInteger),
    column("created_at", UTCDateTime()),
)
_members = table(
    "members",
    column("community_id", String),
    column("id", String),
    column("name", String),
    column("kind", String),
    column("status", String),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
_exchanges = table(
    "exchanges",
    column("community_id", String),
    column("id", String),
    column("seq", BigInteger),
    column("provider", String),
    column("receiver", String),
    column("amount", BigInteger),
    column("description", String),
    column("created_at", UTCDateTime()),
    column("reverses", String),
    column("prev_hash", String),
    column("hash", String),
)
_entries = table(
    "entries",
    column("community_id", String),
    column("exchange_id", String),
    column("account_id", String),
    column("seq", BigInteger),
    column("amount", BigInteger),
    column("balance_after", BigInteger),
)

# (community, seq, id, provider, receiver, amount, hours after T0, reverses)
LEDGER = [
    ("riverside", 1, "r1", "alice", "bob", 10, 1, None),
    ("riverside", 2, "r2", "bob", "carol", 4, 2, None),
    ("riverside", 3, "r3", "carol", "alice", 7, 3, None),
    ("riverside", 4, "r4", "alice", "carol", 2, 4, None),
    ("riverside", 5, "r5", "dave", "alice", 50, 5, None),  # a mistake ...
    ("riverside", 6, "r6", "alice", "dave", 50, 6, "r5"),  # ... reversed
    ("riverside", 7, "r7", "@commons", "carol", 3, 7, None),  # the fund provides
    ("hillside", 1, "h1", "alice", "bob", 5, 8, None),  # same member ids, another community
]
ACCOUNTS = {
    "riverside": ["@commons", "alice", "bob", "carol", "dave"],
    "hillside": ["@commons", "alice", "bob"],
}


def write_ledger_at_0001(engine: Engine) -> None:
    """The ledger above, as 0001's tables would hold it (entries with running balances)."""
    balances: dict[tuple[str, str], int] = {}
    with engine.begin() as connection:
        for community, accounts in ACCOUNTS.items():
            connection.execute(
                _communities.insert().values(
                    id=community,
                    name=community.title(),
                    unit_code="HOUR",
                    unit_name="hour",
                    unit_scale=0,
                    default_lower_limit=-100,
                    default_upper_limit=None,
                    status="active",
                    created_at=T0,
                    updated_at=T0,
                )
            )
            last = [x for x in LEDGER if x[0] == community][-1]
            connection.execute(
                _heads.insert().values(
                    community_id=community,
                    last_seq=last[1],
                    last_hash=f"{last[1]:064x}",
                    last_created_at=at(last[6]),
                )
            )
            for account in accounts:
                balances[(community, account)] = 0
                system = account.startswith("@")
                connection.execute(
                    _accounts.insert().values(
                        community_id=community,
                        id=account,
                        kind="system" if system else "member",
                        balance=0,
                        lower_limit=-(10**12) if system else -100,
                        upper_limit=None,
                        reserved_debit=0,
                        reserved_credit=0,
                        created_at=T0,
                    )
                )
                if not system:
                    connection.execute(
                        _members.insert().values(
                            community_id=community,
                            id=account,
                            name=account.title(),
                            kind="person",
                            status="active",
                            created_at=T0,
                            updated_at=T0,
                        )
                    )
        for community, seq, exchange_id, provider, receiver, amount, hours, reverses in LEDGER:
            connection.execute(
                _exchanges.insert().values(
                    community_id=community,
                    id=xid(exchange_id),
                    seq=seq,
                    provider=provider,
                    receiver=receiver,
                    amount=amount,
                    description=f"{provider} helped {receiver}",
                    created_at=at(hours),
                    reverses=reverses and xid(reverses),
                    prev_hash=f"{seq - 1:064x}",
                    hash=f"{seq:064x}",
                )
            )
            for account, change in ((provider, amount), (receiver, -amount)):
                balances[(community, account)] += change
                connection.execute(
                    _entries.insert().values(
                        community_id=community,
                        exchange_id=xid(exchange_id),
                        account_id=account,
                        seq=seq,
                        amount=change,
                        balance_after=balances[(community, account)],
                    )
                )
        for (community, account), balance in balances.items():
            connection.execute(
                _accounts.update()
                .where(_accounts.c.community_id == community, _accounts.c.id == account)
                .values(balance=balance)
            )


def kept_figures(engine: Engine) -> dict[str, Any]:
    """What the database keeps: per account, per pair (with exchanges) and per ledger."""
    accounts = table(
        "accounts",
        column("community_id"),
        column("id"),
        column("given", Figure()),
        column("received", Figure()),
        column("exchange_count"),
        column("partner_count"),
        column("last_exchange_at", UTCDateTime()),
    )
    pairs = table(
        "pair_flows",
        column("community_id"),
        column("a"),
        column("b"),
        column("a_to_b", Figure()),
        column("b_to_a", Figure()),
        column("exchanges"),
        column("imbalance", Figure()),
    )
    heads = table(
        "ledger_heads",
        column("community_id"),
        column("counted_volume", Figure()),
        column("counted_exchanges"),
    )
    with engine.connect() as connection:
        return {
            "accounts": {
                (r.community_id, r.id): (r.given, r.received, r.exchange_count, r.partner_count)
                for r in connection.execute(select(accounts))
            },
            "last_exchange_at": {
                (r.community_id, r.id): r.last_exchange_at
                for r in connection.execute(select(accounts))
            },
            "pairs": {
                (r.community_id, r.a, r.b): (r.a_to_b, r.b_to_a, r.exchanges, r.imbalance)
                for r in connection.execute(select(pairs).where(pairs.c.exchanges > 0))
            },
            "heads": {
                r.community_id: (r.counted_volume, r.counted_exchanges)
                for r in connection.execute(select(heads))
            },
        }


@pytest.fixture
def migrated(empty_database_url: str) -> str:
    """A database migrated to 0001, given a ledger, then migrated to the latest revision."""
    migrate.upgrade(empty_database_url, "0001")
    engine = create_engine(empty_database_url)
    try:
        write_ledger_at_0001(engine)
    finally:
        engine.dispose()
    migrate.upgrade(empty_database_url)
    return empty_database_url


def test_migration_computes_the_figures_of_a_ledger_recorded_before_them(migrated: str) -> None:
    engine = create_engine(migrated)
    try:
        kept = kept_figures(engine)
    finally:
        engine.dispose()

    # Counted: r1, r2, r3, r4 and r7; r5 was reversed by r6, and neither counts.
    assert kept["accounts"] == {
        # (given, received, exchanges, partners)
        ("riverside", "alice"): (12, 7, 3, 2),
        ("riverside", "bob"): (4, 10, 2, 2),
        ("riverside", "carol"): (7, 9, 4, 3),
        ("riverside", "dave"): (0, 0, 0, 0),
        ("riverside", "@commons"): (3, 0, 1, 1),
        ("hillside", "alice"): (5, 0, 1, 1),
        ("hillside", "bob"): (0, 5, 1, 1),
        ("hillside", "@commons"): (0, 0, 0, 0),
    }
    assert kept["pairs"] == {
        # (a_to_b, b_to_a, exchanges, imbalance)
        ("riverside", "alice", "bob"): (10, 0, 1, 10),
        ("riverside", "bob", "carol"): (4, 0, 1, 4),
        ("riverside", "alice", "carol"): (2, 7, 2, 5),
        ("riverside", "@commons", "carol"): (3, 0, 1, 3),
        ("hillside", "alice", "bob"): (5, 0, 1, 5),
    }
    assert kept["heads"] == {"riverside": (26, 5), "hillside": (5, 1)}
    # The latest exchange each account took part in, reversals included (alice and dave: r6).
    assert kept["last_exchange_at"] == {
        ("riverside", "alice"): at(6),
        ("riverside", "bob"): at(2),
        ("riverside", "carol"): at(7),
        ("riverside", "dave"): at(6),
        ("riverside", "@commons"): at(7),
        ("hillside", "alice"): at(8),
        ("hillside", "bob"): at(8),
        ("hillside", "@commons"): None,
    }


def test_posting_carries_on_from_the_migrated_figures(migrated: str) -> None:
    settings = Settings(database_url=migrated, auto_migrate=False, expiry_sweep_s=0, _env_file=None)  # type: ignore[call-arg]
    db = Database(settings)
    try:
        token = make_key(db, Role.ADMIN)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            api = Api(client, token)
            path = "/v1/communities/riverside"
            reversal = api.post(
                f"{path}/exchanges/{xid('r1')}/reverse", json={"reason": "never happened"}
            )
            assert reversal.status_code == 201, reversal.text
            later = api.post(
                f"{path}/exchanges",
                json={"provider": "dave", "receiver": "bob", "amount": 6, "description": "d"},
            )
            assert later.status_code == 201, later.text
            shown = api.get(f"{path}/mutuality")
            assert shown.status_code == 200, shown.text
            report = shown.json()
    finally:
        db.dispose()

    engine = create_engine(migrated)
    try:
        kept = kept_figures(engine)
    finally:
        engine.dispose()
    # r1 (alice -> bob 10) taken back: alice and bob are no longer partners; dave -> bob is new.
    assert kept["accounts"][("riverside", "alice")] == (2, 7, 2, 1)
    assert kept["accounts"][("riverside", "bob")] == (4, 6, 2, 2)
    assert kept["accounts"][("riverside", "dave")] == (6, 0, 1, 1)
    assert ("riverside", "alice", "bob") not in kept["pairs"]
    assert kept["pairs"][("riverside", "bob", "dave")] == (0, 6, 1, 6)
    assert kept["heads"]["riverside"] == (26 - 10 + 6, 5)
    members = {m["member"]: (m["given"], m["received"]) for m in report["members"]}
    assert members == {"alice": (2, 7), "bob": (4, 6), "carol": (7, 9), "dave": (6, 0)}
    assert report["indicators"]["volume"] == 22


def test_kept_figures_survive_widening_and_narrowing(migrated: str) -> None:
    """0005 widens the figures with their values; going back keeps them while they fit in 64
    bits, and is refused, changing nothing, once one does not."""
    engine = create_engine(migrated)
    try:
        widened = kept_figures(engine)
        migrate.downgrade(migrated, "0004")
        assert kept_figures(engine) == widened
        migrate.upgrade(migrated)
        assert kept_figures(engine) == widened

        accounts = table(
            "accounts", column("community_id"), column("id"), column("given", Figure())
        )
        with engine.begin() as connection:
            connection.execute(
                accounts.update()
                .where(accounts.c.community_id == "riverside", accounts.c.id == "alice")
                .values(given=2**64 + 12)
            )
        with pytest.raises(RuntimeError, match="cannot downgrade"):
            migrate.downgrade(migrated, "0004")
        assert migrate.current_revisions(engine) == migrate.head_revisions()
        assert kept_figures(engine)["accounts"][("riverside", "alice")][0] == 2**64 + 12
    finally:
        engine.dispose()
