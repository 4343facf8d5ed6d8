"""Posting exchanges: the one path by which balances and reservations change.

`LockedLedger` is a community's ledger inside one write transaction:

1. lock the community's ledger head row: it assigns `seq`, extends the hash chain and numbers
   events, so everything that changes a community's ledger is serialized by it;
2. lock the accounts involved, in id order, release any reservation that has expired, and check
   every change against the running balances, reservations, limits and member status in memory —
   a refusal leaves nothing behind;
3. write: one INSERT for the exchanges, one for their entries, one guarded UPDATE per account in
   id order (the database's CHECK constraints refuse any balance outside its limits, whatever
   Python computed), the pending exchanges, the mutuality figures, the events and the new head.
   The caller commits once.

Several independent operations (requests) may share one `LockedLedger` and so one transaction:
each call succeeds or fails on its own, leaving the others untouched, which is what group commit
needs.

Amounts: an exchange of `amount` from provider P to receiver R posts -amount to R and +amount to
P. With a levy of L into @commons paid by the provider, P gets +(amount - L); paid by the
receiver, R pays -(amount + L). A pending exchange posts nothing: it reserves what its entries
would take (`reserved_debit`) and add (`reserved_credit`), so accepting it can never break a limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from protocoop.clock import utc_now
from protocoop.db.bulk import among, insert_rows, update_rows
from protocoop.db.models import (
    Account,
    Community,
    Entry,
    Exchange,
    LedgerHead,
    Member,
    PendingExchange,
)
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
from protocoop.events.service import NewEvent, write_events
from protocoop.ledger.chain import ChainedExchange, ChainEntry, chain_hash
from protocoop.ledger.pair_flows import PairFlows, pair_of
from protocoop.ledger.records import (
    COMMONS,
    Draft,
    Levy,
    Payer,
    PostedExchange,
    Settlement,
    levy_postings,
    pending_document,
    row_levy,
)
from protocoop.money import MAX_BALANCE

_accounts = cast(Table, Account.__table__)
_exchanges = cast(Table, Exchange.__table__)
_entries = cast(Table, Entry.__table__)
_heads = cast(Table, LedgerHead.__table__)
_pending = cast(Table, PendingExchange.__table__)


@dataclass(slots=True)
class _AccountState:
    """An account as locked at the start of the transaction, plus what this transaction did."""

    id: str
    kind: str
    status: str | None
    """The member's status; None for system accounts."""
    lower_limit: int
    upper_limit: int | None
    balance: int
    """Including what this transaction has recorded so far."""
    reserved_debit: int
    reserved_credit: int
    given: int
    """Mutuality figure, including what this transaction counted (written whole, not added:
    a figure may pass 64 bits, where SQL arithmetic is not exact on SQLite)."""
    received: int
    d_balance: int = 0
    d_reserved_debit: int = 0
    d_reserved_credit: int = 0
    d_given: int = 0
    d_received: int = 0
    d_exchanges: int = 0
    d_partners: int = 0
    last_exchange_at: datetime | None = None

    @property
    def dirty(self) -> bool:
        return any(
            (
                self.d_balance,
                self.d_reserved_debit,
                self.d_reserved_credit,
                self.d_given,
                self.d_received,
                self.d_exchanges,
                self.d_partners,
                self.last_exchange_at,
            )
        )


@dataclass(frozen=True, slots=True)
class _Counted:
    """An exchange as the mutuality figures count it."""

    provider: str
    receiver: str
    amount: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """A checked change: an exchange's parties, amount, levy and the entries it posts."""

    draft: Draft
    provider: str
    receiver: str
    amount: int
    postings: list[tuple[str, int]]
    levy: tuple[int, Payer] | None = None
    uncounts: _Counted | None = None

    @property
    def counted(self) -> _Counted:
        """The exchange as the mutuality figures count it."""
        return _Counted(self.provider, self.receiver, self.amount)

    """For a reversal of a counted exchange: what leaves the mutuality figures."""


class LockedLedger:
    """A community's ledger, locked for one write transaction."""

    def __init__(self, session: Session, community_id: str) -> None:
        self.session = session
        self.community_id = community_id
        self.dialect = session.get_bind().dialect.name
        head = session.execute(
            select(
                _heads.c.last_seq,
                _heads.c.last_hash,
                _heads.c.last_created_at,
                _heads.c.last_event_id,
                _heads.c.counted_volume,
                _heads.c.counted_exchanges,
            )
            .where(_heads.c.community_id == community_id)
            .with_for_update()
        ).first()
        if head is None:
            raise NotFound(f"Community {community_id!r} not found.")
        community = session.execute(
            select(
                Community.status,
                Community.levy_rate_ppm,
                Community.levy_minimum,
                Community.levy_paid_by,
            ).where(Community.id == community_id)
        ).one()
        self.status: str = community.status
        self.levy: Levy | None = (
            Levy(community.levy_rate_ppm, community.levy_minimum, community.levy_paid_by)
            if community.levy_rate_ppm is not None
            else None
        )
        self.last_seq: int = head.last_seq
        self.last_hash: str = head.last_hash
        self.last_created_at: datetime | None = head.last_created_at
        self.last_event_id: int = head.last_event_id
        self.counted_volume: int = head.counted_volume
        self.counted_exchanges: int = head.counted_exchanges
        self._head_dirty = False
        self._accounts: dict[str, _AccountState] = {}
        self._pair_flows = PairFlows(community_id)
        self._external_ids: dict[str, str] = {}
        """external_id -> exchange id, for those recorded in this transaction."""
        self._reversed: set[str] = set()
        self._exchange_rows: list[dict[str, Any]] = []
        self._entry_rows: list[dict[str, Any]] = []
        self._new_pending: list[dict[str, Any]] = []
        self._settled_pending: list[tuple[str, str, datetime]] = []
        self._resolved: dict[str, str] = {}
        """pending exchange id -> the status this transaction gave it."""
        self._events: list[NewEvent] = []

    # --- public operations ---------------------------------------------------------------------

    def post(
        self, drafts: Sequence[Draft], *, created_by: str | None, batch: bool = False
    ) -> list[PostedExchange]:
        """Record (or, when a draft is `pending`, propose) `drafts` in order, all or nothing.
        A refusal raises (naming the item's `index` when `batch`) and leaves this ledger exactly
        as it was."""
        self._require_active_community()
        originals = self._load_originals([d.reverses for d in drafts if d.reverses])
        parties = self._parties(drafts, originals)
        self._load_accounts(parties)
        self._check_external_ids(drafts, batch)

        plans: list[_Plan] = []
        pending: dict[str, list[int]] = {}
        reversing: set[str] = set()
        for index, draft in enumerate(drafts):
            try:
                plan = self._plan(draft, originals, pending, reversing)
            except ProblemError as refusal:
                if batch:
                    refusal.extra["index"] = index
                raise
            for account_id, amount in plan.postings:
                held = pending.setdefault(account_id, [0, 0, 0])
                if draft.pending:
                    held[1 if amount < 0 else 2] += abs(amount)
                else:
                    held[0] += amount
            if draft.reverses is not None:
                reversing.add(draft.reverses)
            plans.append(plan)
        self._reversed |= reversing
        self._pair_flows.load(
            self.session.connection(),
            (
                pair_of(counted.provider, counted.receiver)
                for plan in plans
                if not plan.draft.pending
                for counted in [
                    plan.uncounts or _Counted(plan.provider, plan.receiver, plan.amount)
                ]
            ),
        )
        return [self._apply(plan, created_by) for plan in plans]

    def prefetch(self, drafts: Iterable[Draft]) -> None:
        """Lock and read, in one query each, what many upcoming `post` calls will need (their
        accounts and pair flows), instead of a query per call. Changes nothing visible."""
        drafts = [draft for draft in drafts if draft.reverses is None]
        self._load_accounts(self._parties(drafts, {}))
        self._pair_flows.load(
            self.session.connection(),
            (
                pair_of(draft.provider, draft.receiver)
                for draft in drafts
                if not draft.pending and draft.provider != draft.receiver
            ),
        )

    def settle(self, exchange_id: str, action: Settlement) -> PostedExchange | InvalidState:
        """Accept (record it), reject or cancel (release it) a pending exchange. From any other
        status the answer is `409 invalid_state` with the `current_status` — returned, not
        raised, when this very call found the exchange expired, so that the expiry is kept."""
        row = self._load_pending(exchange_id)
        status = self._resolved.get(row.id, row.status)
        if status != "pending":
            raise InvalidState(f"The exchange is {status}, not pending.", current_status=status)
        if action == "accept":
            self._require_active_community()
        postings = levy_postings(row.provider, row.receiver, row.amount, row_levy(row))
        # Both parties, even one left without an entry (a levy that takes the whole amount):
        # both must be active, and both are counted in the mutuality figures.
        parties = list(dict.fromkeys([row.receiver, row.provider, *(a for a, _ in postings)]))
        self._load_accounts(parties)
        if self._resolved.get(row.id) == "expired" or self._expire_if_due(row, postings):
            return InvalidState("The exchange has expired.", current_status="expired")
        if action != "accept":
            self._release(row, postings)
            return self._resolve(row, "rejected" if action == "reject" else "cancelled")
        for account_id in parties:
            account = self._accounts[account_id]
            if account.status is not None and account.status != "active":
                raise MemberInactive(
                    f"Member {account_id!r} is {account.status}.",
                    member=account_id,
                    member_status=account.status,
                )
        self._release(row, postings)
        draft = Draft(
            provider=row.provider,
            receiver=row.receiver,
            amount=row.amount,
            description=row.description,
            category=row.category,
            external_id=row.external_id,
            occurred_at=row.occurred_at,
            metadata=row.metadata,
        )
        plan = _Plan(
            draft=draft,
            provider=row.provider,
            receiver=row.receiver,
            amount=row.amount,
            postings=postings,
            levy=row_levy(row),
        )
        resolved = self._resolve(row, "completed", emit=False)
        return self._complete(plan, created_by=row.created_by, proposal=resolved)

    def expire_due(self, account_ids: Iterable[str] | None = None) -> int:
        """Release every pending exchange whose time is up (only those touching `account_ids`,
        when given); returns how many expired."""
        query = select(_pending).where(
            _pending.c.community_id == self.community_id,
            _pending.c.status == "pending",
            _pending.c.expires_at <= utc_now(),
        )
        if account_ids is not None:
            ids = list(account_ids)
            query = query.where(_pending.c.provider.in_(ids) | _pending.c.receiver.in_(ids))
        rows = self.session.execute(query.with_for_update()).all()
        expired = 0
        for row in rows:
            postings = levy_postings(row.provider, row.receiver, row.amount, row_levy(row))
            self._load_accounts((account for account, _ in postings), expire=False)
            expired += self._expire_if_due(row, postings)
        return expired

    # --- checking ------------------------------------------------------------------------------

    def _require_active_community(self) -> None:
        if self.status != "active":
            raise InvalidState(
                f"Community {self.community_id!r} is {self.status} and records no new exchanges.",
                community_status=self.status,
            )

    def _parties(self, drafts: Sequence[Draft], originals: dict[str, Any]) -> set[str]:
        parties: set[str] = set()
        for draft in drafts:
            if draft.reverses:
                if draft.reverses in originals:
                    original = originals[draft.reverses]
                    # Both parties, even one without an entry (a levy took the whole amount).
                    parties.update((original["provider"], original["receiver"]))
                    parties.update(account for account, _ in original["entries"])
            else:
                parties.update((draft.provider, draft.receiver))
                if self.levy is not None:
                    parties.add(COMMONS)
        return parties

    def _plan(
        self,
        draft: Draft,
        originals: dict[str, Any],
        pending: dict[str, list[int]],
        reversing: set[str],
    ) -> _Plan:
        """The entries `draft` would post (or reserve), checked against the running balances."""
        if draft.reverses is not None:
            original = originals.get(draft.reverses)
            if original is None:
                raise NotFound(f"Exchange {draft.reverses!r} not found.")
            if draft.reverses in self._reversed or draft.reverses in reversing:
                raise InvalidState("The exchange is already reversed.", current_status="reversed")
            plan = _Plan(
                draft=draft,
                provider=original["receiver"],
                receiver=original["provider"],
                amount=original["amount"],
                postings=[(account, -amount) for account, amount in original["entries"]],
                uncounts=(
                    _Counted(original["provider"], original["receiver"], original["amount"])
                    if original["reverses"] is None
                    else None
                ),
            )
            # A correction may involve suspended members, but never a closed one.
            allowed: tuple[str, ...] = ("active", "suspended")
        else:
            if draft.provider == draft.receiver:
                raise SameMember("Provider and receiver must be different accounts.")
            levy = self._levy_for(draft)
            plan = _Plan(
                draft=draft,
                provider=draft.provider,
                receiver=draft.receiver,
                amount=draft.amount,
                postings=levy_postings(draft.provider, draft.receiver, draft.amount, levy),
                levy=levy,
            )
            allowed = ("active",)
        # Receiver first, then provider, then any other account: refusals name them in that order.
        for account_id in dict.fromkeys(
            [plan.receiver, plan.provider, *(account for account, _ in plan.postings)]
        ):
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
            held = pending.get(account_id, [0, 0, 0])
            self._check_limits(self._accounts[account_id], held, amount)
        return plan

    def _levy_for(self, draft: Draft) -> tuple[int, Payer] | None:
        """The levy on a member-to-member exchange under the community's policy."""
        if self.levy is None or draft.provider.startswith("@") or draft.receiver.startswith("@"):
            return None
        levy_amount = self.levy.on(draft.amount)
        return (levy_amount, self.levy.paid_by) if levy_amount > 0 else None

    @staticmethod
    def _check_limits(account: _AccountState, held: list[int], amount: int) -> None:
        """Would `amount` (posted or reserved) keep the account within its limits, counting what
        is reserved and what this request already holds (`held`: balance change, extra reserved
        debit, extra reserved credit)?"""
        balance = account.balance + held[0]
        reserved_debit = account.reserved_debit + held[1]
        reserved_credit = account.reserved_credit + held[2]
        upper = account.upper_limit if account.upper_limit is not None else MAX_BALANCE
        if amount < 0 and balance + amount - reserved_debit < account.lower_limit:
            limit, value, reserved = "lower", account.lower_limit, reserved_debit
        elif amount > 0 and balance + amount + reserved_credit > upper:
            limit, value, reserved = "upper", upper, reserved_credit
        else:
            return
        raise LimitExceeded(
            f"{account.id!r} has balance {balance}"
            + (f" ({reserved} reserved)" if reserved else "")
            + f"; {amount:+d} would pass its {limit} limit {value}.",
            member=account.id,
            limit=limit,
            limit_value=value,
            balance=balance,
            attempted=abs(amount),
            reserved=reserved,
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
        existing: dict[str, str] = {}
        for table in (_exchanges, _pending):
            existing.update(
                self.session.execute(
                    select(table.c.external_id, table.c.id).where(
                        table.c.community_id == self.community_id,
                        table.c.external_id.in_(seen),
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

    def _load_accounts(self, account_ids: Iterable[str], *, expire: bool = True) -> None:
        """Lock and read the accounts not yet loaded, in id order, then release reservations
        of theirs that have expired."""
        missing = sorted({account for account in account_ids if account not in self._accounts})
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
                _accounts.c.given,
                _accounts.c.received,
            )
            .where(
                _accounts.c.community_id == self.community_id,
                among(_accounts.c.id, missing, self.dialect),
            )
            .order_by(_accounts.c.id)
            .with_for_update()
        ).all()
        # Read after the locks are held: a status change holds the account lock too.
        statuses = dict(
            self.session.execute(
                select(Member.id, Member.status).where(
                    Member.community_id == self.community_id,
                    among(Member.id, missing, self.dialect),
                )
            ).all()
        )
        for row in rows:
            self._accounts[row.id] = _AccountState(
                id=row.id,
                kind=row.kind,
                status=statuses.get(row.id) if row.kind == "member" else None,
                lower_limit=row.lower_limit,
                upper_limit=row.upper_limit,
                balance=row.balance,
                reserved_debit=row.reserved_debit,
                reserved_credit=row.reserved_credit,
                given=row.given,
                received=row.received,
            )
        if expire and any(
            self._accounts[a].reserved_debit or self._accounts[a].reserved_credit
            for a in missing
            if a in self._accounts
        ):
            self.expire_due(missing)

    def _load_originals(self, exchange_ids: list[str]) -> dict[str, Any]:
        """The exchanges to reverse, with their entries; refuses those already reversed."""
        if not exchange_ids:
            return {}
        rows = self.session.execute(
            select(
                _exchanges.c.id,
                _exchanges.c.provider,
                _exchanges.c.receiver,
                _exchanges.c.amount,
                _exchanges.c.reverses,
            ).where(
                _exchanges.c.community_id == self.community_id,
                _exchanges.c.id.in_(exchange_ids),
            )
        ).all()
        originals: dict[str, Any] = {row.id: {**row._asdict(), "entries": []} for row in rows}
        for exchange_id, account_id, amount in self.session.execute(
            select(_entries.c.exchange_id, _entries.c.account_id, _entries.c.amount)
            .where(
                _entries.c.community_id == self.community_id,
                _entries.c.exchange_id.in_(list(originals)),
            )
            .order_by(_entries.c.exchange_id, _entries.c.amount)
        ):
            originals[exchange_id]["entries"].append((account_id, amount))
        for original_id, reversal_id in self.session.execute(
            select(_exchanges.c.reverses, _exchanges.c.id).where(
                _exchanges.c.community_id == self.community_id,
                _exchanges.c.reverses.in_(list(originals)),
            )
        ):
            raise InvalidState(
                f"Exchange {original_id!r} is already reversed by {reversal_id!r}.",
                current_status="reversed",
                reversed_by=reversal_id,
            )
        return originals

    def _load_pending(self, exchange_id: str) -> Any:
        row = self.session.execute(
            select(_pending)
            .where(_pending.c.community_id == self.community_id, _pending.c.id == exchange_id)
            .with_for_update()
        ).first()
        if row is not None:
            return row
        completed = self.session.execute(
            select(_exchanges.c.id).where(
                _exchanges.c.community_id == self.community_id, _exchanges.c.id == exchange_id
            )
        ).first()
        if completed is not None:
            raise InvalidState(
                "The exchange is completed, not pending.", current_status="completed"
            )
        raise NotFound(f"Exchange {exchange_id!r} not found.")

    # --- applying ------------------------------------------------------------------------------

    def _apply(self, plan: _Plan, created_by: str | None) -> PostedExchange:
        if plan.draft.pending:
            return self._reserve(plan, created_by)
        return self._complete(plan, created_by=created_by)

    def _reserve(self, plan: _Plan, created_by: str | None) -> PostedExchange:
        """Hold a proposal's entries as reservations and queue its pending row."""
        draft = plan.draft
        for account_id, amount in plan.postings:
            account = self._accounts[account_id]
            if amount < 0:
                account.reserved_debit -= amount
                account.d_reserved_debit -= amount
            else:
                account.reserved_credit += amount
                account.d_reserved_credit += amount
        now = utc_now()
        exchange_id = str(uuid.uuid4())
        if draft.external_id is not None:
            self._external_ids[draft.external_id] = exchange_id
        row = {
            "community_id": self.community_id,
            "id": exchange_id,
            "provider": plan.provider,
            "receiver": plan.receiver,
            "amount": plan.amount,
            "description": draft.description,
            "category": draft.category,
            "external_id": draft.external_id,
            # When it happened: as told, else when proposed (accepting later does not change it).
            "occurred_at": draft.occurred_at or now,
            "metadata": draft.metadata,
            "levy_amount": plan.levy[0] if plan.levy else None,
            "levy_paid_by": plan.levy[1] if plan.levy else None,
            "initiated_by": draft.initiated_by,
            "status": "pending",
            "created_at": now,
            "expires_at": now + timedelta(seconds=draft.expires_in),
            "resolved_at": None,
            "created_by": created_by,
        }
        self._new_pending.append(row)
        proposed = pending_document(self.community_id, row)
        self._events.append(NewEvent("exchange.pending", exchange_document(proposed)))
        return proposed

    def _release(self, row: Any, postings: list[tuple[str, int]]) -> None:
        """Give back what a pending exchange reserved."""
        for account_id, amount in postings:
            account = self._accounts[account_id]
            if amount < 0:
                account.reserved_debit += amount
                account.d_reserved_debit += amount
            else:
                account.reserved_credit -= amount
                account.d_reserved_credit -= amount

    def _resolve(self, row: Any, status: str, *, emit: bool = True) -> PostedExchange:
        now = utc_now()
        self._resolved[row.id] = status
        self._settled_pending.append((row.id, status, now))
        resolved = replace(
            pending_document(self.community_id, row._asdict()), status=status, resolved_at=now
        )
        if emit:
            self._events.append(NewEvent(f"exchange.{status}", exchange_document(resolved)))
        return resolved

    def _expire_if_due(self, row: Any, postings: list[tuple[str, int]]) -> bool:
        if row.status != "pending" or row.expires_at > utc_now() or row.id in self._resolved:
            return False
        self._release(row, postings)
        self._resolve(row, "expired")
        return True

    def _complete(
        self, plan: _Plan, *, created_by: str | None, proposal: PostedExchange | None = None
    ) -> PostedExchange:
        """Give a checked exchange its seq, time and hash, post its entries, update the figures,
        and queue its rows for writing. An accepted `proposal` keeps its id."""
        draft = plan.draft
        now = utc_now()
        if self.last_created_at is not None and now < self.last_created_at:
            now = self.last_created_at
        self.last_seq += 1
        exchange_id = proposal.id if proposal else str(uuid.uuid4())
        entries = []
        for account_id, amount in plan.postings:
            account = self._accounts[account_id]
            account.balance += amount
            account.d_balance += amount
            entries.append(ChainEntry(account_id, amount, account.balance))
        for party in (plan.provider, plan.receiver):
            self._accounts[party].last_exchange_at = now
        if draft.reverses is None:
            self._count(plan.counted, +1)
        elif plan.uncounts is not None:
            self._count(plan.uncounts, -1)
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
            entries=tuple(entries),
        )
        prev_hash, self.last_hash = self.last_hash, chain_hash(self.last_hash, chained)
        self.last_created_at = now
        self._head_dirty = True
        if draft.external_id is not None:
            self._external_ids[draft.external_id] = exchange_id
        posted = PostedExchange(
            community=self.community_id,
            id=exchange_id,
            status="completed",
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
            metadata=draft.metadata,
            levy_amount=plan.levy[0] if plan.levy else None,
            levy_paid_by=plan.levy[1] if plan.levy else None,
            entries=tuple(sorted(entries, key=lambda e: (e.amount, e.account))),
            prev_hash=prev_hash,
            hash=self.last_hash,
            initiated_by=proposal.initiated_by if proposal else None,
            expires_at=proposal.expires_at if proposal else None,
            resolved_at=proposal.resolved_at if proposal else None,
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
                "levy_amount": posted.levy_amount,
                "levy_paid_by": posted.levy_paid_by,
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
        self._events.append(NewEvent("exchange.completed", exchange_document(posted)))
        if draft.reverses is not None:
            self._events.append(
                NewEvent("exchange.reversed", {"id": draft.reverses, "reversed_by": exchange_id})
            )
        return posted

    def _count(self, exchange: _Counted, sign: int) -> None:
        """Add (+1) or take back (-1) a counted exchange in the mutuality figures."""
        provider = self._accounts[exchange.provider]
        receiver = self._accounts[exchange.receiver]
        provider.d_given += sign * exchange.amount
        receiver.d_received += sign * exchange.amount
        provider.given += sign * exchange.amount
        receiver.received += sign * exchange.amount
        provider.d_exchanges += sign
        receiver.d_exchanges += sign
        partners = self._pair_flows.add(
            self.session.connection(), exchange.provider, exchange.receiver, sign * exchange.amount
        )
        provider.d_partners += partners
        receiver.d_partners += partners
        self.counted_volume += sign * exchange.amount
        self.counted_exchanges += sign

    # --- writing -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what this ledger recorded; the caller's transaction commits it."""
        connection = self.session.connection()
        insert_rows(connection, _exchanges, self._exchange_rows)
        insert_rows(connection, _entries, self._entry_rows)
        insert_rows(connection, _pending, self._new_pending)
        update_rows(
            connection,
            _pending,
            [
                {
                    "community_id": self.community_id,
                    "id": exchange_id,
                    "status": status,
                    "resolved_at": resolved_at,
                }
                for exchange_id, status, resolved_at in self._settled_pending
            ],
            keys=("community_id", "id"),
            assign=("status", "resolved_at"),
        )
        self._flush_accounts(connection)
        self._pair_flows.flush(connection)
        self.last_event_id = write_events(
            self.session, self.community_id, self.last_event_id, self._events
        )
        if self._head_dirty or self._events:
            connection.execute(
                update(_heads)
                .where(_heads.c.community_id == self.community_id)
                .values(
                    last_seq=self.last_seq,
                    last_hash=self.last_hash,
                    last_created_at=self.last_created_at,
                    last_event_id=self.last_event_id,
                    counted_volume=self.counted_volume,
                    counted_exchanges=self.counted_exchanges,
                )
            )
        self._exchange_rows.clear()
        self._entry_rows.clear()
        self._new_pending.clear()
        self._settled_pending.clear()
        self._events.clear()
        self._head_dirty = False

    def _flush_accounts(self, connection: Any) -> None:
        """One guarded update per changed account (the CHECK constraints guard the limits)."""
        touched = sorted(
            (account for account in self._accounts.values() if account.dirty),
            key=lambda account: account.id,
        )
        update_rows(
            connection,
            _accounts,
            [
                {
                    "community_id": self.community_id,
                    "id": a.id,
                    "balance": a.d_balance,
                    "reserved_debit": a.d_reserved_debit,
                    "reserved_credit": a.d_reserved_credit,
                    "given": a.given,
                    "received": a.received,
                    "exchange_count": a.d_exchanges,
                    "partner_count": a.d_partners,
                    "last_exchange_at": a.last_exchange_at,
                }
                for a in touched
            ],
            keys=("community_id", "id"),
            add=(
                "balance",
                "reserved_debit",
                "reserved_credit",
                "exchange_count",
                "partner_count",
            ),
            assign=("given", "received"),
            unless_null=("last_exchange_at",),
        )
        for account in touched:
            account.d_balance = account.d_reserved_debit = account.d_reserved_credit = 0
            account.d_given = account.d_received = account.d_exchanges = account.d_partners = 0
            account.last_exchange_at = None


def exchange_document(exchange: PostedExchange) -> dict[str, Any]:
    """The exchange as its API document, in JSON form (for events)."""
    from protocoop.ledger.queries import document

    return document(exchange)


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


def settle_exchange(
    session: Session, community_id: str, exchange_id: str, action: Settlement
) -> PostedExchange | InvalidState:
    """Accept, reject or cancel a pending exchange, in the caller's transaction. An exchange
    found expired is released (and the refusal returned, for the caller to send after commit)."""
    ledger = LockedLedger(session, community_id)
    settled = ledger.settle(exchange_id, action)
    ledger.flush()
    return settled


def expire_due(session: Session, community_id: str) -> int:
    """Release every pending exchange of the community whose time is up."""
    ledger = LockedLedger(session, community_id)
    expired = ledger.expire_due()
    ledger.flush()
    return expired
