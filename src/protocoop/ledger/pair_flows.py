"""The pair flows posting keeps for the mutuality report: what each two accounts gave each
other over counted exchanges (`pair_flows`), read once per transaction and written once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.engine import Connection

from protocoop.db.bulk import insert_rows, rows_matching_pairs, update_rows
from protocoop.db.models import PairFlow

_pairs = cast(Table, PairFlow.__table__)


@dataclass(slots=True)
class _PairState:
    a_to_b: int
    b_to_a: int
    exchanges: int
    stored: bool
    """Whether the row exists in the database (else it is inserted)."""
    dirty: bool = False


def pair_of(provider: str, receiver: str) -> tuple[str, str]:
    """The pair's key: the two account ids in order."""
    return (provider, receiver) if provider < receiver else (receiver, provider)


class PairFlows:
    """One community's pair flows inside one write transaction."""

    def __init__(self, community_id: str) -> None:
        self.community_id = community_id
        self._pairs: dict[tuple[str, str], _PairState] = {}

    def load(self, connection: Connection, pairs: Iterable[tuple[str, str]]) -> None:
        """Read the pairs not read yet, in one query."""
        missing = sorted({pair for pair in pairs if pair not in self._pairs})
        if not missing:
            return
        found = {
            (row.a, row.b): row
            for row in rows_matching_pairs(
                connection, _pairs, self.community_id, ("a", "b"), missing
            )
        }
        for pair in missing:
            row = found.get(pair)
            self._pairs[pair] = (
                # int(): on PostgreSQL the raw query reads NUMERIC figures as Decimal
                _PairState(int(row.a_to_b), int(row.b_to_a), int(row.exchanges), stored=True)
                if row is not None
                else _PairState(0, 0, 0, stored=False)
            )

    def add(self, connection: Connection, provider: str, receiver: str, amount: int) -> int:
        """Count (`amount` > 0) or take back (< 0) a flow from provider to receiver; returns
        +1 when the two just became partners, -1 when they just stopped being partners, else 0."""
        key = pair_of(provider, receiver)
        self.load(connection, [key])
        pair = self._pairs[key]
        before = pair.exchanges
        if provider == key[0]:
            pair.a_to_b += amount
        else:
            pair.b_to_a += amount
        pair.exchanges += 1 if amount > 0 else -1
        pair.dirty = True
        if (before == 0) == (pair.exchanges == 0):
            return 0
        return 1 if pair.exchanges else -1

    def flush(self, connection: Connection) -> None:
        """Insert the new pairs and update the changed ones."""
        dirty = [(key, pair) for key, pair in sorted(self._pairs.items()) if pair.dirty]
        rows: list[tuple[_PairState, dict[str, Any]]] = [
            (
                pair,
                {
                    "community_id": self.community_id,
                    "a": a,
                    "b": b,
                    "a_to_b": pair.a_to_b,
                    "b_to_a": pair.b_to_a,
                    "exchanges": pair.exchanges,
                    "imbalance": abs(pair.a_to_b - pair.b_to_a),
                },
            )
            for (a, b), pair in dirty
        ]
        insert_rows(connection, _pairs, [row for pair, row in rows if not pair.stored])
        update_rows(
            connection,
            _pairs,
            [row for pair, row in rows if pair.stored],
            keys=("community_id", "a", "b"),
            assign=("a_to_b", "b_to_a", "exchanges", "imbalance"),
        )
        for _, pair in dirty:
            pair.stored, pair.dirty = True, False
