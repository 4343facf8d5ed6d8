"""The posting path's batched reads and writes (`db.bulk`), on both databases: what a batch
writes is all or nothing, figures beyond 64 bits come back exact, and statements sent together
read what the ones before them did."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest
from sqlalchemy import Table, select, text
from sqlalchemy.exc import IntegrityError

from protocoop.clock import utc_now
from protocoop.db import Database
from protocoop.db.bulk import Reads, Writes, one_of, pairs_among, rows_matching_pairs
from protocoop.db.models import Account, Event, IdempotencyRecord, PairFlow
from tests.support.databases import terminate_backend

_accounts = cast(Table, Account.__table__)
_events = cast(Table, Event.__table__)
_pairs = cast(Table, PairFlow.__table__)
_records = cast(Table, IdempotencyRecord.__table__)


def _event(number: int) -> dict[str, Any]:
    return {
        "community_id": "riverside",
        "id": number,
        "type": "test.event",
        "created_at": utc_now(),
        "data": {"n": number},
    }


def test_a_batch_whose_later_statement_fails_writes_nothing(
    db: Database, community: dict[str, Any]
) -> None:
    def write(session: Any) -> None:
        writes = Writes(session.connection())
        writes.insert(_events, [_event(9_000)])
        writes.insert(_events, [_event(9_000)])  # the same id again: refused by the key
        writes.send()

    with pytest.raises(IntegrityError):
        db.run_write(write)
    found = db.run_read(
        lambda session: session.execute(select(_events.c.id).where(_events.c.id == 9_000)).all()
    )
    assert found == []


def test_a_figure_beyond_64_bits_is_written_and_read_back_exactly(
    db: Database, community: dict[str, Any]
) -> None:
    huge = 2**70 + 3

    def write(session: Any) -> None:
        writes = Writes(session.connection())
        writes.update(
            _accounts,
            [{"community_id": "riverside", "id": "alice", "given": huge}],
            keys=("community_id", "id"),
            assign=("given",),
        )
        writes.send()

    db.run_write(write)
    given = db.run_read(
        lambda session: session.execute(
            select(_accounts.c.given).where(
                _accounts.c.community_id == "riverside", _accounts.c.id == "alice"
            )
        ).scalar_one()
    )
    assert given == huge


def test_reads_sent_together_see_the_writes_before_them(
    db: Database, community: dict[str, Any]
) -> None:
    dialect = "sqlite" if db.is_sqlite else "postgresql"
    statement = select(_accounts.c.id, _accounts.c.given).where(
        one_of(_accounts.c.id, "ids", dialect)
    )

    def work(session: Any) -> list[Any]:
        writes = Writes(session.connection())
        writes.update(
            _accounts,
            [
                {"community_id": "riverside", "id": "alice", "given": 7},
                {"community_id": "riverside", "id": "bob", "given": 11},
            ],
            keys=("community_id", "id"),
            assign=("given",),
        )
        writes.send()
        reads = Reads(session.connection())
        rows = reads.add(statement, {"ids": ["alice", "bob", "nobody"]})
        again = reads.add(statement, {"ids": ["carol"]})
        reads.send()
        return sorted((row.id, int(row.given)) for row in [*rows, *again])

    assert db.run_write(work) == [("alice", 7), ("bob", 11), ("carol", 0)]


def _pair(a: str, b: str, a_to_b: int) -> dict[str, Any]:
    return {
        "community_id": "riverside",
        "a": a,
        "b": b,
        "a_to_b": a_to_b,
        "b_to_a": 0,
        "exchanges": 1,
        "imbalance": a_to_b,
    }


def test_rows_matching_pairs_reads_exactly_the_pairs_asked_for(
    db: Database, community: dict[str, Any]
) -> None:
    def work(session: Any) -> list[tuple[str, str, int]]:
        writes = Writes(session.connection())
        writes.insert(
            _pairs,
            [_pair("alice", "bob", 5), _pair("alice", "carol", 2**70), _pair("bob", "carol", 9)],
        )
        writes.send()
        rows = rows_matching_pairs(
            session.connection(),
            _pairs,
            "riverside",
            ("a", "b"),
            [("alice", "carol"), ("bob", "carol"), ("carol", "alice"), ("alice", "nobody")],
        )
        return sorted((row.a, row.b, int(row.a_to_b)) for row in rows)

    # Only stored pairs, in their stored order (a < b): ("carol", "alice") names no row.
    assert db.run_write(work) == [("alice", "carol", 2**70), ("bob", "carol", 9)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_on_sqlite_each_pair_is_one_primary_key_lookup_however_many_rows_the_community_has(
    db: Database,
) -> None:
    # The plan is what keeps a post's cost flat as pair flows and idempotency records grow: a
    # scan of the community's rows filtered by the pairs grew with them (a soak slowed to a
    # quarter of its first minute's rate).
    for table, columns in ((_pairs, ("a", "b")), (_records, ("api_key_id", "key"))):
        with db.engine.connect() as connection:
            statement = pairs_among(table, columns, "sqlite").compile(connection)
            given = {"community": "riverside", "pairs": "[]"}
            plan = connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {statement}",
                tuple(given[name] for name in statement.positiontup or ()),
            ).all()
        details = [row[-1] for row in plan]
        assert any(
            f"SEARCH t USING INDEX sqlite_autoindex_{table.name}_1 "
            f"(community_id=? AND {columns[0]}=? AND {columns[1]}=?)" in detail
            for detail in details
        ), details


_SLEEP = text("SELECT pg_sleep(:seconds) AS slept")


def test_reads_whose_session_is_ended_mid_round_trip_run_again_on_a_new_connection(
    db: Database, community: dict[str, Any]
) -> None:
    """`pg_terminate_backend` (a restart, a proxy) while a pipelined round trip runs: the
    transaction counts as one that lost its connection before COMMIT and runs again, instead of
    answering 503 with psycopg's "cannot exit pipeline mode while busy"."""
    if db.is_sqlite:
        pytest.skip("SQLite has no session another process could end")
    backends: list[int] = []

    def work(session: Any) -> int:
        connection = session.connection()
        backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        backends.append(backend)
        if len(backends) == 1:
            threading.Timer(0.3, terminate_backend, (db.settings.database_url, backend)).start()
        reads = Reads(connection)
        first = reads.add(_SLEEP, {"seconds": 0 if len(backends) > 1 else 3})
        reads.add(select(_accounts.c.id).where(_accounts.c.id == "alice"), {})
        reads.send()
        return len(first)

    assert db.run_write(work) == 1
    assert len(backends) == 2
    assert backends[0] != backends[1]
