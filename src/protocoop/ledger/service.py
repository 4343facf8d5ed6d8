"""Posting exchanges: the one path by which balances change.

`LockedLedger` is a community's ledger inside one write transaction:

1. lock the community's ledger head row (serializes postings: `seq` and the hash chain);
2. lock the accounts involved, in id order, and check every exchange against their running
   balances, limits and the members' status, in memory — a refusal leaves nothing behind;
3. write: one INSERT for the exchanges, one for their entries, one guarded UPDATE per account in
   id order (the database's CHECK constraints refuse any balance outside its limits, whatever
   Python computed), and the new head. The caller commits once.

Several independent postings (requests) may share one `LockedLedger` and so one transaction:
each `post` call succeeds or fails on its own, which is what group commit needs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from protocoop.clock import utc_now
from protocoop.db.models import Account, Community, Entry, Exchange, LedgerHead, Member
from protocoop.errors import (
    DuplicateExternalId,
    InvalidState,
    LimitExceeded,
    MemberInactive,
    NotFound,
    ProblemError,
    SameMember,
    ValidationFailed,
)
from protocoop.ledger.chain import ChainedExchange, ChainEntry, chain_hash
from protocoop.money import MAX_BALANCE

_accounts = Account.__table__
_exchanges = Exchange.__table__
_entries = Entry.__table__
_heads = LedgerHead.__table__


@dataclass(frozen=True, slots=True)
class Draft:
    """An exchange to record: well-formed, but not yet checked against the ledger."""

    provider: str
    """Account that gave; credited +amount."""
    receiver: str
    """Account that received; debited -amount."""
    amount: int
    """Minor units, 1..10^15."""
    description: str
    category: str | None = None
    external_id: str | None = None
    occurred_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    reverses: str | None = None
    """For a reversal: the exchange it undoes (provider, receiver and amount come from it)."""


@dataclass(frozen=True, slots=True)
class PostedEntry:
    """One posting as recorded."""

    account: str
    amount: int
    """Signed change, minor units."""
    balance_after: int
    """The account's balance right after this entry."""


@dataclass(frozen=True, slots=True)
class PostedExchange:
    """An exchange as recorded in the ledger."""

    community: str
    id: str
    seq: int
    provider: str
    receiver: str
    amount: int
    description: str
    category: str | None
    external_id: str | None
    occurred_at: datetime
    created_at: datetime
    reverses: str | None
    reversed_by: str | None
    metadata: dict[str, Any] | None
    entries: tuple[PostedEntry, ...]
    prev_hash: str
    hash: str


@dataclass(slots=True)
class _AccountState:
    """An account as locked at the start of the transaction, plus what this transaction did."""

    id: str
    kind: str
    status: str | None
    """The member's status; None for system accounts."""
    balance: int
    """The balance including what this transaction has recorded so far."""
    lower_limit: int
    upper_limit: int | None
    reserved_debit: int
    reserved_credit: int
    delta: int = 0
    """What this transaction has added to the stored balance, not yet written."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """A checked exchange: who, how much, and the entries it posts (receiver first)."""

    draft: Draft
    provider: str
    receiver: str
    amount: int
    postings: list[tuple[str, int]]


@dataclass(slots=True)
class _Original:
    """An exchange being reversed."""

    provider: str
    receiver: str
    amount: int
    entries: list[tuple[str, int]] = field(default_factory=list)


class LockedLedger:
    """A community's ledger, locked for one write transaction."""

    def __init__(self, session: Session, community_id: str) -> None:
        self.session = session
        self.community_id = community_id
        head = session.execute(
            select(_heads.c.last_seq, _heads.c.last_hash, _heads.c.last_created_at)
            .where(_heads.c.community_id == community_id)
            .with_for_update()
        ).first()
        if head is None:
            raise NotFound(f"Community {community_id!r} not found.")
        status = session.execute(
            select(Community.status).where(Community.id == community_id)
        ).scalar_one()
        if status != "active":
            raise InvalidState(
                f"Community {community_id!r} is {status} and records no new exchanges.",
                current_status=status,
            )
        self.last_seq: int = head.last_seq
        self.last_hash: str = head.last_hash
        self.last_created_at: datetime | None = head.last_created_at
        self._accounts: dict[str, _AccountState] = {}
        self._external_ids: dict[str, str] = {}
        """external_id -> exchange id, for those posted in this transaction."""
        self._reversed: set[str] = set()
        self._exchange_rows: list[dict[str, Any]] = []
        self._entry_rows: list[dict[str, Any]] = []

    # --- checking ------------------------------------------------------------------------------

    def post(
        self, drafts: Sequence[Draft], *, created_by: str | None, batch: bool = False
    ) -> list[PostedExchange]:
        """Record `drafts` in order, all or nothing. A refusal raises (naming the item's `index`
        when `batch`) and leaves this ledger exactly as it was."""
        originals = self._load_originals([d.reverses for d in drafts if d.reverses])
        self._load_accounts(self._parties(drafts, originals))
        self._check_external_ids(drafts, batch)

        plans: list[_Plan] = []
        pending: dict[str, int] = {}
        reversing: set[str] = set()
        for index, draft in enumerate(drafts):
            try:
                plan = self._plan(draft, originals, pending, reversing)
            except ProblemError as refusal:
                if batch:
                    refusal.extra["index"] = index
                raise
            for account_id, amount in plan.postings:
                pending[account_id] = pending.get(account_id, 0) + amount
            if draft.reverses is not None:
                reversing.add(draft.reverses)
            plans.append(plan)
        self._reversed |= reversing
        return [self._record(plan, created_by) for plan in plans]

    def _parties(self, drafts: Sequence[Draft], originals: dict[str, _Original]) -> set[str]:
        parties: set[str] = set()
        for draft in drafts:
            if draft.reverses and draft.reverses in originals:
                parties.update(account for account, _ in originals[draft.reverses].entries)
            else:
                parties.update((draft.provider, draft.receiver))
        return parties

    def _plan(
        self,
        draft: Draft,
        originals: dict[str, _Original],
        pending: dict[str, int],
        reversing: set[str],
    ) -> _Plan:
        """The entries `draft` would post, checked against the running balances."""
        if draft.reverses is not None:
            original = originals.get(draft.reverses)
            if original is None:
                raise NotFound(f"Exchange {draft.reverses!r} not found.")
            if draft.reverses in self._reversed or draft.reverses in reversing:
                raise InvalidState("The exchange is already reversed.", current_status="reversed")
            plan = _Plan(
                draft=draft,
                provider=original.receiver,
                receiver=original.provider,
                amount=original.amount,
                postings=[(account, -amount) for account, amount in original.entries],
            )
            # A correction may involve suspended members, but never a closed one.
            allowed: tuple[str, ...] = ("active", "suspended")
        else:
            if draft.provider == draft.receiver:
                raise SameMember("Provider and receiver must be different accounts.")
            plan = _Plan(
                draft=draft,
                provider=draft.provider,
                receiver=draft.receiver,
                amount=draft.amount,
                postings=[(draft.receiver, -draft.amount), (draft.provider, draft.amount)],
            )
            allowed = ("active",)
        for account_id, _ in plan.postings:
            account = self._accounts.get(account_id)
            if account is None:
                raise NotFound(f"Member {account_id!r} not found.", member=account_id)
            if account.status is not None and account.status not in allowed:
                raise MemberInactive(
                    f"Member {account_id!r} is {account.status}.",
                    member=account_id,
                    member_status=account.status,
                )
        for account_id, amount in plan.postings:
            self._check_limits(self._accounts[account_id], pending.get(account_id, 0), amount)
        return plan

    @staticmethod
    def _check_limits(account: _AccountState, pending: int, amount: int) -> None:
        balance = account.balance + pending
        after = balance + amount
        upper = account.upper_limit if account.upper_limit is not None else MAX_BALANCE
        if amount < 0 and after - account.reserved_debit < account.lower_limit:
            limit, value = "lower", account.lower_limit
        elif amount > 0 and after + account.reserved_credit > upper:
            limit, value = "upper", upper
        else:
            return
        raise LimitExceeded(
            f"{account.id!r} has balance {balance}; {amount:+d} would pass its {limit} limit "
            f"{value}.",
            member=account.id,
            limit=limit,
            limit_value=value,
            balance=balance,
            attempted=abs(amount),
            reserved=account.reserved_debit if limit == "lower" else account.reserved_credit,
        )

    def _check_external_ids(self, drafts: Sequence[Draft], batch: bool) -> None:
        seen: dict[str, int] = {}
        for index, draft in enumerate(drafts):
            if draft.external_id is None:
                continue
            if draft.external_id in seen:
                loc = ["body", "exchanges", index, "external_id"] if batch else ["body"]
                raise ValidationFailed([{"loc": loc, "msg": "external_id repeated in the batch"}])
            seen[draft.external_id] = index
        if not seen:
            return
        existing = dict(
            self.session.execute(
                select(_exchanges.c.external_id, _exchanges.c.id).where(
                    _exchanges.c.community_id == self.community_id,
                    _exchanges.c.external_id.in_(seen),
                )
            ).all()
        )
        existing.update({k: v for k, v in self._external_ids.items() if k in seen})
        for external_id, index in seen.items():
            if external_id in existing:
                refusal = DuplicateExternalId(
                    f"external_id {external_id!r} is already recorded.",
                    exchange_id=existing[external_id],
                    external_id=external_id,
                )
                if batch:
                    refusal.extra["index"] = index
                raise refusal

    # --- loading -------------------------------------------------------------------------------

    def _load_accounts(self, account_ids: Iterable[str]) -> None:
        """Lock and read the accounts not yet loaded, in id order."""
        missing = sorted(set(account_ids) - self._accounts.keys())
        if not missing:
            return
        rows = self.session.execute(
            select(
                _accounts.c.id,
                _accounts.c.kind,
                _accounts.c.balance,
                _accounts.c.lower_limit,
                _accounts.c.upper_limit,
                _accounts.c.reserved_debit,
                _accounts.c.reserved_credit,
            )
            .where(_accounts.c.community_id == self.community_id, _accounts.c.id.in_(missing))
            .order_by(_accounts.c.id)
            .with_for_update()
        ).all()
        # Read after the locks are held: a status change holds the account lock too.
        statuses = dict(
            self.session.execute(
                select(Member.id, Member.status).where(
                    Member.community_id == self.community_id, Member.id.in_(missing)
                )
            ).all()
        )
        for row in rows:
            self._accounts[row.id] = _AccountState(
                id=row.id,
                kind=row.kind,
                status=statuses.get(row.id) if row.kind == "member" else None,
                balance=row.balance,
                lower_limit=row.lower_limit,
                upper_limit=row.upper_limit,
                reserved_debit=row.reserved_debit,
                reserved_credit=row.reserved_credit,
            )

    def _load_originals(self, exchange_ids: list[str]) -> dict[str, _Original]:
        """The exchanges to reverse, with their entries; refuses those already reversed."""
        if not exchange_ids:
            return {}
        rows = self.session.execute(
            select(
                _exchanges.c.id, _exchanges.c.provider, _exchanges.c.receiver, _exchanges.c.amount
            ).where(
                _exchanges.c.community_id == self.community_id, _exchanges.c.id.in_(exchange_ids)
            )
        ).all()
        originals = {row.id: _Original(row.provider, row.receiver, row.amount) for row in rows}
        for exchange_id, account_id, amount in self.session.execute(
            select(_entries.c.exchange_id, _entries.c.account_id, _entries.c.amount)
            .where(
                _entries.c.community_id == self.community_id,
                _entries.c.exchange_id.in_(list(originals)),
            )
            .order_by(_entries.c.exchange_id, _entries.c.amount)
        ):
            originals[exchange_id].entries.append((account_id, amount))
        reversed_already = self.session.execute(
            select(_exchanges.c.reverses, _exchanges.c.id).where(
                _exchanges.c.community_id == self.community_id,
                _exchanges.c.reverses.in_(list(originals)),
            )
        ).all()
        for original_id, reversal_id in reversed_already:
            raise InvalidState(
                f"Exchange {original_id!r} is already reversed by {reversal_id!r}.",
                current_status="reversed",
                reversed_by=reversal_id,
            )
        return originals

    # --- recording -----------------------------------------------------------------------------

    def _record(self, plan: _Plan, created_by: str | None) -> PostedExchange:
        """Give a checked exchange its seq, time and hash, and queue its rows for writing."""
        draft = plan.draft
        now = utc_now()
        if self.last_created_at is not None and now < self.last_created_at:
            now = self.last_created_at
        self.last_seq += 1
        exchange_id = str(uuid.uuid4())
        entries = []
        for account_id, amount in plan.postings:
            account = self._accounts[account_id]
            account.balance += amount
            account.delta += amount
            entries.append(PostedEntry(account_id, amount, account.balance))
        chained = ChainedExchange(
            community=self.community_id,
            seq=self.last_seq,
            id=exchange_id,
            provider=plan.provider,
            receiver=plan.receiver,
            amount=plan.amount,
            description=draft.description,
            category=draft.category,
            external_id=draft.external_id,
            reverses=draft.reverses,
            created_at=now,
            entries=tuple(ChainEntry(e.account, e.amount, e.balance_after) for e in entries),
        )
        prev_hash, self.last_hash = self.last_hash, chain_hash(self.last_hash, chained)
        self.last_created_at = now
        if draft.external_id is not None:
            self._external_ids[draft.external_id] = exchange_id
        posted = PostedExchange(
            community=self.community_id,
            id=exchange_id,
            seq=self.last_seq,
            provider=plan.provider,
            receiver=plan.receiver,
            amount=plan.amount,
            description=draft.description,
            category=draft.category,
            external_id=draft.external_id,
            occurred_at=draft.occurred_at or now,
            created_at=now,
            reverses=draft.reverses,
            reversed_by=None,
            metadata=draft.metadata,
            entries=tuple(sorted(entries, key=lambda e: (e.amount, e.account))),
            prev_hash=prev_hash,
            hash=self.last_hash,
        )
        self._exchange_rows.append(
            {
                "community_id": self.community_id,
                "id": exchange_id,
                "seq": posted.seq,
                "provider": posted.provider,
                "receiver": posted.receiver,
                "amount": posted.amount,
                "description": posted.description,
                "category": posted.category,
                "external_id": posted.external_id,
                "occurred_at": posted.occurred_at,
                "created_at": now,
                "reverses": posted.reverses,
                "metadata": posted.metadata,
                "created_by": created_by,
                "prev_hash": prev_hash,
                "hash": posted.hash,
            }
        )
        self._entry_rows.extend(
            {
                "community_id": self.community_id,
                "exchange_id": exchange_id,
                "account_id": entry.account,
                "seq": posted.seq,
                "amount": entry.amount,
                "balance_after": entry.balance_after,
            }
            for entry in entries
        )
        return posted

    def flush(self) -> None:
        """Write what `post` recorded; the caller's transaction commits it."""
        if not self._exchange_rows:
            return
        connection = self.session.connection()
        connection.execute(insert(_exchanges), self._exchange_rows)
        connection.execute(insert(_entries), self._entry_rows)
        touched = sorted(
            (account for account in self._accounts.values() if account.delta),
            key=lambda account: account.id,
        )
        if touched:
            connection.execute(
                update(_accounts)
                .where(
                    _accounts.c.community_id == bindparam("p_community"),
                    _accounts.c.id == bindparam("p_account"),
                )
                .values(balance=_accounts.c.balance + bindparam("p_delta")),
                [
                    {"p_community": self.community_id, "p_account": a.id, "p_delta": a.delta}
                    for a in touched
                ],
            )
        connection.execute(
            update(_heads)
            .where(_heads.c.community_id == self.community_id)
            .values(
                last_seq=self.last_seq,
                last_hash=self.last_hash,
                last_created_at=self.last_created_at,
            )
        )
        for account in touched:
            account.delta = 0
        self._exchange_rows.clear()
        self._entry_rows.clear()


def post_exchanges(
    session: Session,
    community_id: str,
    drafts: Sequence[Draft],
    *,
    created_by: str | None,
    batch: bool = False,
) -> list[PostedExchange]:
    """Record `drafts` in one community, all or nothing, in the caller's transaction."""
    ledger = LockedLedger(session, community_id)
    posted = ledger.post(drafts, created_by=created_by, batch=batch)
    ledger.flush()
    return posted
