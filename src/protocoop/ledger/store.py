"""The posting store: loads and locks what a group of requests touches, and writes its plan.

It reads and writes rows and nothing else; `ledger.planner` decides. Locks are taken in one
order everywhere: the community's ledger head first (it assigns `seq`, extends the hash chain and
numbers events, so it serializes every change to a community's ledger), then the accounts in id
order. Everything is read in batches, one statement per table for the whole group (SQLAlchemy
Core statements built once, no ORM), and written the same way: one statement per table, one
guarded UPDATE for the accounts (the CHECK constraints refuse any balance outside its limits,
whatever Python computed). On PostgreSQL each phase's statements share one round trip
(`db.bulk.Reads` and `Writes`). Kept figures (`Figure`) are written whole, never added in SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from protocoop.db.bulk import Reads, Writes, among, one_of, pair_params, pairs_among
from protocoop.db.engine import note_transaction_id
from protocoop.db.heads import lock_head
from protocoop.db.models import (
    Account,
    ApiKey,
    Community,
    Entry,
    Event,
    Exchange,
    IdempotencyRecord,
    LedgerHead,
    Member,
    PairFlow,
    PendingExchange,
)
from protocoop.errors import NotFound
from protocoop.ledger.planner import (
    AccountState,
    Expire,
    Head,
    LockedState,
    Original,
    PendingState,
    Post,
    Request,
    Settle,
    WriteSet,
    pair_of,
)
from protocoop.ledger.planner import PairFlow as PairState
from protocoop.ledger.records import COMMONS, Levy

_accounts = cast(Table, Account.__table__)
_api_keys = cast(Table, ApiKey.__table__)
_communities = cast(Table, Community.__table__)
_entries = cast(Table, Entry.__table__)
_events = cast(Table, Event.__table__)
_exchanges = cast(Table, Exchange.__table__)
_heads = cast(Table, LedgerHead.__table__)
_members = cast(Table, Member.__table__)
_pairs = cast(Table, PairFlow.__table__)
_pending = cast(Table, PendingExchange.__table__)
_records = cast(Table, IdempotencyRecord.__table__)


@dataclass(frozen=True)
class _Queries:
    """The posting path's reads, built once per dialect with named parameters (`Reads` sends
    them together)."""

    live_keys: Executable
    answers: Executable
    accounts: Executable
    members: Executable
    pairs: Executable
    external_ids: Executable


@cache
def _queries(dialect: str) -> _Queries:
    community: Any = bindparam("community")
    return _Queries(
        live_keys=select(_api_keys.c.id).where(
            one_of(_api_keys.c.id, "ids", dialect), _api_keys.c.revoked_at.is_(None)
        ),
        answers=pairs_among(_records, ("api_key_id", "key"), dialect),
        accounts=select(
            _accounts.c.id,
            _accounts.c.kind,
            _accounts.c.balance,
            _accounts.c.lower_limit,
            _accounts.c.upper_limit,
            _accounts.c.reserved_debit,
            _accounts.c.reserved_credit,
            _accounts.c.given,
            _accounts.c.received,
            _accounts.c.exchange_count,
            _accounts.c.partner_count,
        )
        .where(_accounts.c.community_id == community, one_of(_accounts.c.id, "ids", dialect))
        .order_by(_accounts.c.id)
        .with_for_update(),
        # Sent after `accounts`, so read under its locks (a status change holds them too).
        members=select(_members.c.id, _members.c.status).where(
            _members.c.community_id == community, one_of(_members.c.id, "ids", dialect)
        ),
        pairs=pairs_among(_pairs, ("a", "b"), dialect),
        external_ids=union_all(
            *(
                select(table.c.external_id, table.c.id).where(
                    table.c.community_id == community,
                    one_of(table.c.external_id, "external_ids", dialect),
                )
                for table in (_exchanges, _pending)
            )
        ),
    )


class LedgerStore:
    """One community's rows inside one write transaction."""

    def __init__(self, session: Session, community_id: str) -> None:
        self.session = session
        self.connection = session.connection()
        self.community_id = community_id
        self.dialect = self.connection.dialect.name
        self._queries = _queries(self.dialect)
        self._head: Any = None

    # --- loading -------------------------------------------------------------------------------

    def lock_head(self) -> None:
        """Lock the community's ledger head (first, always) and read its policy with it."""
        head = lock_head(
            self.connection,
            self.community_id,
            _heads.c.last_seq,
            _heads.c.last_hash,
            _heads.c.last_created_at,
            _heads.c.last_event_id,
            _heads.c.counted_volume,
            _heads.c.counted_exchanges,
            _communities.c.status,
            _communities.c.levy_rate_ppm,
            _communities.c.levy_minimum,
            _communities.c.levy_paid_by,
        )
        if head is None:
            raise NotFound(f"Community {self.community_id!r} not found.")
        self._head = head

    def check(
        self, key_ids: Iterable[str], keyed: Sequence[tuple[str, str]]
    ) -> tuple[set[str], dict[tuple[str, str], Any]]:
        """Which of `key_ids` are not revoked (checked inside the writing transaction), and the
        community's idempotency records for the (api_key_id, key) pairs `keyed`; one round
        trip."""
        reads = Reads(self.connection)
        live = reads.add(self._queries.live_keys, {"ids": list(set(key_ids))})
        records = (
            reads.add(
                self._queries.answers,
                {"community": self.community_id, **pair_params(keyed, self.dialect)},
            )
            if keyed
            else []
        )
        reads.send()
        return {row.id for row in live}, {(row.api_key_id, row.key): row for row in records}

    def load(self, requests: Sequence[Request], now: datetime) -> LockedState:
        """Lock and read everything `requests` touch (after `lock_head`)."""
        if self._head is None:
            self.lock_head()
        head = self._head
        levy = (
            Levy(head.levy_rate_ppm, head.levy_minimum, head.levy_paid_by)
            if head.levy_rate_ppm is not None
            else None
        )
        drafts = [d for r in requests if isinstance(r, Post) for d in r.drafts]
        originals = self._originals([d.reverses for d in drafts if d.reverses])
        settled = [r.exchange_id for r in requests if isinstance(r, Settle)]
        pending = self._pending(among(_pending.c.id, settled, self.dialect)) if settled else {}
        completed = self._completed([i for i in settled if i not in pending])
        for request in requests:
            if isinstance(request, Expire):
                due = (_pending.c.status == "pending") & (_pending.c.expires_at <= now)
                if request.accounts is not None:
                    ids = list(request.accounts)
                    due &= _pending.c.provider.in_(ids) | _pending.c.receiver.in_(ids)
                pending.update(self._pending(due))

        parties: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        for draft in drafts:
            if draft.reverses is not None:
                original = originals.get(draft.reverses)
                if original is not None:
                    parties.update((original.provider, original.receiver))
                    parties.update(account for account, _ in original.entries)
                    pairs.add(pair_of(original.provider, original.receiver))
            else:
                parties.update((draft.provider, draft.receiver))
                if levy is not None:
                    parties.add(COMMONS)
                if not draft.pending and draft.provider != draft.receiver:
                    pairs.add(pair_of(draft.provider, draft.receiver))
        for row in pending.values():
            parties.update((row.provider, row.receiver, *(a for a, _ in row.postings)))
            pairs.add(pair_of(row.provider, row.receiver))
        # Accounts (locked), their members, pair flows and external ids: one round trip.
        reads = Reads(self.connection)
        read_accounts = self._read_accounts(reads, parties)
        read_pairs = self._read_pair_flows(reads, pairs)
        read_external_ids = self._read_external_ids(
            reads, [d.external_id for d in drafts if d.external_id]
        )
        reads.send()
        accounts = read_accounts()
        # Reservations of these accounts whose time is up are released first.
        expiring = any(isinstance(r, Expire) for r in requests)  # those release their own
        reserving = sorted(
            a.id
            for a in accounts.values()
            if not expiring and (a.reserved_debit or a.reserved_credit)
        )
        if reserving:
            released = self._pending(
                (_pending.c.status == "pending")
                & (_pending.c.expires_at <= now)
                & (
                    among(_pending.c.provider, reserving, self.dialect)
                    | among(_pending.c.receiver, reserving, self.dialect)
                )
            )
            pending.update({i: row for i, row in released.items() if i not in pending})
            accounts.update(
                self._accounts(
                    {a for row in released.values() for a, _ in row.postings} - set(accounts)
                )
            )
        due_ids = tuple(
            row.id
            for row in sorted(pending.values(), key=lambda r: (r.expires_at, r.id))
            if row.status == "pending"
            and row.expires_at <= now
            and (row.provider in reserving or row.receiver in reserving)
        )
        return LockedState(
            community_id=self.community_id,
            status=head.status,
            levy=levy,
            head=Head(
                last_seq=head.last_seq,
                last_hash=head.last_hash,
                last_created_at=head.last_created_at,
                last_event_id=head.last_event_id,
                counted_volume=int(head.counted_volume),
                counted_exchanges=head.counted_exchanges,
            ),
            accounts=accounts,
            pairs=read_pairs(),
            pending=pending,
            due=due_ids,
            completed=completed,
            originals=originals,
            external_ids=read_external_ids(),
        )

    def _accounts(self, ids: Iterable[str]) -> dict[str, AccountState]:
        """Lock and read accounts in id order, with their members' statuses."""
        reads = Reads(self.connection)
        read = self._read_accounts(reads, ids)
        reads.send()
        return read()

    def _read_accounts(
        self, reads: Reads, ids: Iterable[str]
    ) -> Callable[[], dict[str, AccountState]]:
        """Add to `reads` the lock and read of accounts `ids` in id order, then their members'
        statuses (read under the account locks: a status change holds the account lock too);
        returns how to build their states once `reads` is sent."""
        wanted = sorted(set(ids))
        if not wanted:
            return dict
        params = {"community": self.community_id, "ids": wanted}
        rows = reads.add(self._queries.accounts, params)
        members = reads.add(self._queries.members, params)

        def states() -> dict[str, AccountState]:
            statuses = {row.id: row.status for row in members}
            return {
                row.id: AccountState(
                    id=row.id,
                    kind=row.kind,
                    status=statuses.get(row.id) if row.kind == "member" else None,
                    lower_limit=row.lower_limit,
                    upper_limit=row.upper_limit,
                    balance=row.balance,
                    reserved_debit=row.reserved_debit,
                    reserved_credit=row.reserved_credit,
                    given=int(row.given),
                    received=int(row.received),
                    exchange_count=row.exchange_count,
                    partner_count=row.partner_count,
                )
                for row in rows
            }

        return states

    def _pending(self, condition: Any) -> dict[str, PendingState]:
        rows = self.connection.execute(
            select(_pending)
            .where(_pending.c.community_id == self.community_id, condition)
            .with_for_update()
        ).all()
        return {row.id: _pending_state(row) for row in rows}

    def _completed(self, ids: list[str]) -> frozenset[str]:
        if not ids:
            return frozenset()
        return frozenset(
            self.connection.scalars(
                select(_exchanges.c.id).where(
                    _exchanges.c.community_id == self.community_id, _exchanges.c.id.in_(ids)
                )
            )
        )

    def _originals(self, ids: list[str]) -> dict[str, Original]:
        """The exchanges to reverse, with their entries and any reversal already recorded."""
        if not ids:
            return {}
        rows = self.connection.execute(
            select(
                _exchanges.c.id,
                _exchanges.c.provider,
                _exchanges.c.receiver,
                _exchanges.c.amount,
                _exchanges.c.reverses,
                _exchanges.c.intertrade_id,
            ).where(_exchanges.c.community_id == self.community_id, _exchanges.c.id.in_(ids))
        ).all()
        if not rows:
            return {}
        found = [row.id for row in rows]
        entries: dict[str, list[tuple[str, int]]] = {i: [] for i in found}
        for exchange_id, account_id, amount in self.connection.execute(
            select(_entries.c.exchange_id, _entries.c.account_id, _entries.c.amount)
            .where(_entries.c.community_id == self.community_id, _entries.c.exchange_id.in_(found))
            .order_by(_entries.c.exchange_id, _entries.c.amount)
        ):
            entries[exchange_id].append((account_id, amount))
        reversed_by = dict(
            self.connection.execute(
                select(_exchanges.c.reverses, _exchanges.c.id).where(
                    _exchanges.c.community_id == self.community_id,
                    _exchanges.c.reverses.in_(found),
                )
            ).all()
        )
        return {
            row.id: Original(
                id=row.id,
                provider=row.provider,
                receiver=row.receiver,
                amount=row.amount,
                reverses=row.reverses,
                entries=tuple(entries[row.id]),
                intertrade_id=row.intertrade_id,
                reversed_by=reversed_by.get(row.id),
            )
            for row in rows
        }

    def _read_pair_flows(
        self, reads: Reads, pairs: set[tuple[str, str]]
    ) -> Callable[[], dict[tuple[str, str], PairState]]:
        if not pairs:
            return dict
        rows = reads.add(
            self._queries.pairs,
            {"community": self.community_id, **pair_params(sorted(pairs), self.dialect)},
        )
        return lambda: {
            (row.a, row.b): PairState(
                # int(): PostgreSQL reads NUMERIC figures as Decimal
                row.a,
                row.b,
                int(row.a_to_b),
                int(row.b_to_a),
                int(row.exchanges),
            )
            for row in rows
        }

    def _read_external_ids(
        self, reads: Reads, external_ids: list[str]
    ) -> Callable[[], dict[str, str]]:
        if not external_ids:
            return dict
        rows = reads.add(
            self._queries.external_ids,
            {"community": self.community_id, "external_ids": external_ids},
        )
        return lambda: {str(e): str(i) for e, i in rows}

    # --- writing -------------------------------------------------------------------------------

    def flush(
        self,
        writes: WriteSet,
        event_data: Sequence[dict[str, Any]],
        remembered: Sequence[dict[str, Any]] = (),
        *,
        now: datetime,
    ) -> None:
        """Write the group's plan (and idempotency records); the caller commits. On PostgreSQL
        all of it goes to the server in one round trip."""
        out = Writes(self.connection)
        out.insert(_exchanges, writes.exchanges)
        out.insert(_entries, writes.entries)
        out.insert(_pending, writes.new_pending)
        out.update(
            _pending,
            [
                {
                    "community_id": self.community_id,
                    "id": exchange_id,
                    "status": status,
                    "resolved_at": resolved_at,
                }
                for exchange_id, status, resolved_at in writes.settled_pending
            ],
            keys=("community_id", "id"),
            assign=("status", "resolved_at"),
        )
        out.update(
            _accounts,
            [
                {
                    "community_id": self.community_id,
                    "id": a.id,
                    "balance": a.balance,
                    "reserved_debit": a.reserved_debit,
                    "reserved_credit": a.reserved_credit,
                    "given": a.given,
                    "received": a.received,
                    "exchange_count": a.exchange_count,
                    "partner_count": a.partner_count,
                    "last_exchange_at": a.last_exchange_at,
                }
                for a in writes.accounts
            ],
            keys=("community_id", "id"),
            assign=(
                "balance",
                "reserved_debit",
                "reserved_credit",
                "given",
                "received",
                "exchange_count",
                "partner_count",
            ),
            unless_null=("last_exchange_at",),
        )
        pair_rows = [
            (
                pair.stored,
                {
                    "community_id": self.community_id,
                    "a": pair.a,
                    "b": pair.b,
                    "a_to_b": pair.a_to_b,
                    "b_to_a": pair.b_to_a,
                    "exchanges": pair.exchanges,
                    "imbalance": pair.imbalance,
                },
            )
            for pair in writes.pairs
        ]
        out.insert(_pairs, [row for stored, row in pair_rows if not stored])
        out.update(
            _pairs,
            [row for stored, row in pair_rows if stored],
            keys=("community_id", "a", "b"),
            assign=("a_to_b", "b_to_a", "exchanges", "imbalance"),
        )
        if writes.head is not None:
            first_event = writes.head.last_event_id - len(writes.events)
            out.insert(
                _events,
                [
                    {
                        "community_id": self.community_id,
                        "id": first_event + number,
                        "type": event.type,
                        "created_at": now,
                        "data": data,
                    }
                    for number, (event, data) in enumerate(
                        zip(writes.events, event_data, strict=True), start=1
                    )
                ],
            )
            head = writes.head
            out.update(
                _heads,
                [
                    {
                        "community_id": self.community_id,
                        "last_seq": head.last_seq,
                        "last_hash": head.last_hash,
                        "last_created_at": head.last_created_at,
                        "last_event_id": head.last_event_id,
                        "counted_volume": head.counted_volume,
                        "counted_exchanges": head.counted_exchanges,
                    }
                ],
                keys=("community_id",),
                assign=(
                    "last_seq",
                    "last_hash",
                    "last_created_at",
                    "last_event_id",
                    "counted_volume",
                    "counted_exchanges",
                ),
            )
        out.insert(_records, remembered)
        # The transaction's id comes back with the writes: one round trip fewer before COMMIT.
        note_transaction_id(self.session, out.send(transaction_id=True))


def _pending_state(row: Any) -> PendingState:
    return PendingState(
        id=row.id,
        provider=row.provider,
        receiver=row.receiver,
        amount=row.amount,
        description=row.description,
        category=row.category,
        external_id=row.external_id,
        occurred_at=row.occurred_at,
        metadata=row.metadata,
        levy_amount=row.levy_amount,
        levy_paid_by=row.levy_paid_by,
        initiated_by=row.initiated_by,
        status=row.status,
        created_at=row.created_at,
        expires_at=row.expires_at,
        resolved_at=row.resolved_at,
        created_by=row.created_by,
    )
