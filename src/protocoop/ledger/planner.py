"""The posting planner: what a group of requests does to a community's ledger, with no I/O.

Given the ledger as locked for one write transaction (`LockedState`: the head, the accounts with
their limits, reservations, member status and mutuality figures, the pair flows, the pending
exchanges being settled or due, the exchanges being reversed, the external ids already taken)
and the group's requests (`Post`, `Settle`, `Expire`), `plan` returns each request's outcome —
its result, or its refusal (the domain error) — and ONE `WriteSet` for the group: the rows to
insert, the accounts, pair flows, pending exchanges and head to update, and the events.

Each request succeeds or fails on its own: a request is checked in full before it changes the
working state, so a refusal leaves the state exactly as the request found it and the requests
after it go on. The store (`ledger.store`) loads the state and writes the write set; nothing
here touches a database, a clock or the network (the time and new ids are given).

Amounts: an exchange of `amount` from provider P to receiver R posts -amount to R and +amount to
P. With a levy of L into @commons paid by the provider, P gets +(amount - L); paid by the
receiver, R pays -(amount + L). A pending exchange posts nothing: it reserves what its entries
would take (`reserved_debit`) and add (`reserved_credit`), so accepting it can never break a limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from protocoop.errors import (
    DuplicateExternalId,
    Forbidden,
    InvalidState,
    LimitExceeded,
    MemberInactive,
    NotFound,
    ProblemError,
    SameMember,
    ValidationFailed,
)
from protocoop.ledger.chain import ChainedExchange, ChainEntry, chain_hash
from protocoop.ledger.records import (
    Draft,
    Levy,
    Payer,
    PostedExchange,
    Settlement,
    is_clearing,
    levy_postings,
)
from protocoop.money import MAX_BALANCE

# --- the locked state (input) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """The community's ledger head: the chain's end, event numbering and counted figures."""

    last_seq: int
    last_hash: str
    last_created_at: datetime | None
    last_event_id: int
    counted_volume: int
    counted_exchanges: int


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account as locked (input) or as the group leaves it (output)."""

    id: str
    kind: str
    status: str | None
    """The member's status; None for system accounts."""
    lower_limit: int
    upper_limit: int | None
    balance: int
    reserved_debit: int
    reserved_credit: int
    given: int
    received: int
    exchange_count: int
    partner_count: int
    last_exchange_at: datetime | None = None
    """Output only: set when the group recorded an exchange the account took part in."""


@dataclass(frozen=True, slots=True)
class PairFlow:
    """What accounts `a` < `b` gave each other over counted exchanges."""

    a: str
    b: str
    a_to_b: int
    b_to_a: int
    exchanges: int
    stored: bool = True
    """Whether the row exists (else it is inserted)."""

    @property
    def imbalance(self) -> int:
        return abs(self.a_to_b - self.b_to_a)


@dataclass(frozen=True, slots=True)
class PendingState:
    """A pending exchange (a proposal) as stored."""

    id: str
    provider: str
    receiver: str
    amount: int
    description: str
    category: str | None
    external_id: str | None
    occurred_at: datetime | None
    metadata: dict[str, Any] | None
    levy_amount: int | None
    levy_paid_by: Payer | None
    initiated_by: str
    status: str
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None
    created_by: str | None

    @property
    def levy(self) -> tuple[int, Payer] | None:
        if self.levy_amount and self.levy_paid_by:
            return (self.levy_amount, self.levy_paid_by)
        return None

    @property
    def postings(self) -> list[tuple[str, int]]:
        return levy_postings(self.provider, self.receiver, self.amount, self.levy)


@dataclass(frozen=True, slots=True)
class Original:
    """A completed exchange that a reversal names."""

    id: str
    provider: str
    receiver: str
    amount: int
    reverses: str | None
    entries: tuple[tuple[str, int], ...]
    """(account, amount), ordered by amount."""
    intertrade_id: str | None = None
    """Set when it is one side of an intertrade (reversed only with its other side)."""
    reversed_by: str | None = None
    """The exchange that already reverses it, if any."""


@dataclass(frozen=True, slots=True)
class LockedState:
    """Everything a group needs, as read under the group's locks."""

    community_id: str
    status: str
    """The community's status: only an active one records new exchanges."""
    levy: Levy | None
    head: Head
    accounts: Mapping[str, AccountState]
    pairs: Mapping[tuple[str, str], PairFlow] = field(default_factory=dict)
    """Every pair the group may count (absent ones are new)."""
    pending: Mapping[str, PendingState] = field(default_factory=dict)
    """The pending exchanges being settled, and those due to expire."""
    due: tuple[str, ...] = ()
    """Pending exchanges whose time is up, touching the locked accounts: released first."""
    completed: frozenset[str] = frozenset()
    """Ids among the settled ones that are completed exchanges (not proposals)."""
    originals: Mapping[str, Original] = field(default_factory=dict)
    external_ids: Mapping[str, str] = field(default_factory=dict)
    """external_id -> exchange id, for those of the group's drafts already recorded."""


# --- the requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Post:
    """Record (or, for `pending` drafts, propose) drafts in order, all or nothing."""

    drafts: Sequence[Draft]
    created_by: str | None
    batch: bool = False


@dataclass(frozen=True, slots=True)
class Settle:
    """Accept, reject or cancel a pending exchange."""

    exchange_id: str
    action: Settlement
    system_accounts: bool = True
    """Whether the sender may settle a proposal with a system account (such as @commons) as a
    party: only a treasurer may (403 otherwise, whatever the proposal's status)."""


@dataclass(frozen=True, slots=True)
class Expire:
    """Release the due pending exchanges in the state (those touching `accounts`, if given)."""

    accounts: frozenset[str] | None = None


Request = Post | Settle | Expire


# --- the plan (output) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's answer. `result` is a list of exchanges for a `Post`, one exchange for a
    `Settle`, the number expired for an `Expire`. A refusal with `kept` set (a settlement that
    found its exchange expired) keeps its writes; any other refusal wrote nothing."""

    result: list[PostedExchange] | PostedExchange | int | None = None
    refusal: ProblemError | None = None
    kept: bool = False


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """An event: its type and either the exchange it shows (rendered by the store) or data."""

    type: str
    exchange: PostedExchange | None = None
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class WriteSet:
    """Everything one group writes, in one transaction."""

    exchanges: list[dict[str, Any]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[AccountState] = field(default_factory=list)
    """The changed accounts' new values, in id order."""
    pairs: list[PairFlow] = field(default_factory=list)
    """The changed pair flows' new values (`stored` False: insert)."""
    new_pending: list[dict[str, Any]] = field(default_factory=list)
    settled_pending: list[tuple[str, str, datetime]] = field(default_factory=list)
    """(id, new status, resolved_at)."""
    events: list[PlannedEvent] = field(default_factory=list)
    head: Head | None = None
    """The new head, when anything changed it."""


@dataclass(frozen=True, slots=True)
class Plan:
    outcomes: list[Outcome]
    writes: WriteSet


# --- planning --------------------------------------------------------------------------------


def plan(
    state: LockedState,
    requests: Sequence[Request],
    *,
    now: datetime,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    clock: Callable[[], datetime] | None = None,
) -> Plan:
    """Each request's outcome, in order, and the group's write set. `now` decides what has
    expired; `clock` (default: always `now`) gives each recorded row its time."""
    planner = _Planner(state, now, new_id, clock or (lambda: now))
    planner.expire(state.due)
    outcomes = [planner.run(request) for request in requests]
    return Plan(outcomes, planner.writes())


@dataclass(frozen=True, slots=True)
class _Checked:
    """A checked change: an exchange's parties, amount, levy and the entries it posts."""

    draft: Draft
    provider: str
    receiver: str
    amount: int
    postings: list[tuple[str, int]]
    levy: tuple[int, Payer] | None = None
    uncounts: tuple[str, str, int] | None = None
    """For a reversal of a counted exchange: (provider, receiver, amount) leaving the figures."""


class _Planner:
    def __init__(
        self,
        state: LockedState,
        now: datetime,
        new_id: Callable[[], str],
        clock: Callable[[], datetime],
    ) -> None:
        self.state = state
        self.community_id = state.community_id
        self.now = now
        self.clock = clock
        self.new_id = new_id
        self.head = state.head
        self.accounts: dict[str, AccountState] = dict(state.accounts)
        self.touched: dict[str, datetime | None] = {}
        """Changed accounts -> the time of their last exchange in this group (None: none)."""
        self.pairs: dict[tuple[str, str], PairFlow] = dict(state.pairs)
        self.dirty_pairs: set[tuple[str, str]] = set()
        self.external_ids = dict(state.external_ids)
        self.reversed: set[str] = set()
        self.resolved: dict[str, str] = {}
        self.expired_here: set[str] = set()
        self.out = WriteSet()
        self.head_dirty = False

    # --- requests ------------------------------------------------------------------------------

    def run(self, request: Request) -> Outcome:
        try:
            if isinstance(request, Post):
                return Outcome(result=self.post(request))
            if isinstance(request, Settle):
                settled = self.settle(request)
                if isinstance(settled, InvalidState):
                    return Outcome(refusal=settled, kept=True)
                return Outcome(result=settled)
            return Outcome(result=self.expire(self._due_for(request.accounts)))
        except ProblemError as refusal:
            return Outcome(refusal=refusal)

    def post(self, request: Post) -> list[PostedExchange]:
        drafts, batch = request.drafts, request.batch
        self._require_active_community()
        for draft in drafts:
            if draft.reverses is not None and draft.reverses in self.state.originals:
                reversed_by = self.state.originals[draft.reverses].reversed_by
                if reversed_by is not None:
                    raise InvalidState(
                        f"Exchange {draft.reverses!r} is already reversed by {reversed_by!r}.",
                        current_status="reversed",
                        reversed_by=reversed_by,
                    )
        self._check_external_ids(drafts, batch)
        checked: list[_Checked] = []
        held: dict[str, list[int]] = {}
        reversing: set[str] = set()
        for index, draft in enumerate(drafts):
            try:
                change = self._check(draft, held, reversing)
            except ProblemError as refusal:
                if batch:
                    refusal.extra["index"] = index
                raise
            for account_id, amount in change.postings:
                holding = held.setdefault(account_id, [0, 0, 0])
                if draft.pending:
                    holding[1 if amount < 0 else 2] += abs(amount)
                else:
                    holding[0] += amount
            if draft.reverses is not None:
                reversing.add(draft.reverses)
            checked.append(change)
        self.reversed |= reversing
        return [
            self._reserve(change, request.created_by)
            if change.draft.pending
            else self._complete(change, created_by=request.created_by)
            for change in checked
        ]

    def settle(self, request: Settle) -> PostedExchange | InvalidState:
        exchange_id, action = request.exchange_id, request.action
        row = self.state.pending.get(exchange_id)
        if row is None:
            if exchange_id in self.state.completed:
                raise InvalidState(
                    "The exchange is completed, not pending.", current_status="completed"
                )
            raise NotFound(f"Exchange {exchange_id!r} not found.")
        if not request.system_accounts and (
            row.provider.startswith("@") or row.receiver.startswith("@")
        ):
            raise Forbidden("Only a treasurer may settle exchanges with system accounts.")
        if exchange_id in self.expired_here:
            return InvalidState("The exchange has expired.", current_status="expired")
        status = self.resolved.get(row.id, row.status)
        if status != "pending":
            raise InvalidState(f"The exchange is {status}, not pending.", current_status=status)
        if action == "accept":
            self._require_active_community()
        postings = row.postings
        parties = list(dict.fromkeys([row.receiver, row.provider, *(a for a, _ in postings)]))
        for account_id in parties:
            if account_id not in self.accounts:
                raise NotFound(f"Member {account_id!r} not found.", member=account_id)
        if row.expires_at <= self.now:
            self._release(postings)
            self._resolve(row, "expired")
            self.expired_here.add(row.id)
            return InvalidState("The exchange has expired.", current_status="expired")
        if action != "accept":
            self._release(postings)
            return self._resolve(row, "rejected" if action == "reject" else "cancelled")
        for account_id in parties:
            account = self.accounts[account_id]
            if account.status is not None and account.status != "active":
                raise MemberInactive(
                    f"Member {account_id!r} is {account.status}.",
                    member=account_id,
                    member_status=account.status,
                )
        self._release(postings)
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
        change = _Checked(draft, row.provider, row.receiver, row.amount, postings, row.levy)
        resolved = self._resolve(row, "completed", emit=False)
        return self._complete(change, created_by=row.created_by, proposal=resolved)

    def expire(self, exchange_ids: Iterable[str]) -> int:
        expired = 0
        for exchange_id in exchange_ids:
            row = self.state.pending[exchange_id]
            if row.status != "pending" or row.expires_at > self.now or row.id in self.resolved:
                continue
            self._release(row.postings)
            self._resolve(row, "expired")
            self.expired_here.add(row.id)
            expired += 1
        return expired

    def _due_for(self, accounts: frozenset[str] | None) -> list[str]:
        return [
            row.id
            for row in self.state.pending.values()
            if accounts is None or row.provider in accounts or row.receiver in accounts
        ]

    # --- checking ------------------------------------------------------------------------------

    def _require_active_community(self) -> None:
        if self.state.status != "active":
            raise InvalidState(
                f"Community {self.community_id!r} is {self.state.status} and records no new "
                "exchanges.",
                community_status=self.state.status,
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
        for external_id, index in seen.items():
            if external_id in self.external_ids:
                refusal = DuplicateExternalId(
                    f"external_id {external_id!r} is already recorded.",
                    exchange_id=self.external_ids[external_id],
                    external_id=external_id,
                )
                if batch:
                    refusal.extra["index"] = index
                raise refusal

    def _check(self, draft: Draft, held: dict[str, list[int]], reversing: set[str]) -> _Checked:
        """The entries `draft` would post (or reserve), checked against the running balances."""
        if draft.reverses is not None:
            original = self.state.originals.get(draft.reverses)
            if original is None:
                raise NotFound(f"Exchange {draft.reverses!r} not found.")
            if draft.reverses in self.reversed or draft.reverses in reversing:
                raise InvalidState("The exchange is already reversed.", current_status="reversed")
            if (original.intertrade_id is None) != (draft.intertrade_id is None):
                raise InvalidState(
                    "One side of an intertrade is reversed only with its other side: "
                    f"POST .../intertrades/{original.intertrade_id}/reverse.",
                    intertrade_id=original.intertrade_id,
                )
            change = _Checked(
                draft=draft,
                provider=original.receiver,
                receiver=original.provider,
                amount=original.amount,
                postings=[(account, -amount) for account, amount in original.entries],
                uncounts=(
                    (original.provider, original.receiver, original.amount)
                    if original.reverses is None
                    else None
                ),
            )
            # A correction may involve suspended members, but never a closed one.
            allowed: tuple[str, ...] = ("active", "suspended")
        else:
            if draft.provider == draft.receiver:
                raise SameMember("Provider and receiver must be different accounts.")
            if draft.intertrade_id is None and (
                is_clearing(draft.provider) or is_clearing(draft.receiver)
            ):
                raise Forbidden("A clearing account moves only through intertrades.")
            levy = self._levy_for(draft)
            change = _Checked(
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
            [change.receiver, change.provider, *(account for account, _ in change.postings)]
        ):
            account = self.accounts.get(account_id)
            if account is None:
                raise NotFound(f"Member {account_id!r} not found.", member=account_id)
            if account.status is not None and account.status not in allowed:
                raise MemberInactive(
                    f"Member {account_id!r} is {account.status}.",
                    member=account_id,
                    member_status=account.status,
                )
        for account_id, amount in change.postings:
            check_limits(self.accounts[account_id], held.get(account_id, [0, 0, 0]), amount)
        return change

    def _levy_for(self, draft: Draft) -> tuple[int, Payer] | None:
        """The levy on a member-to-member exchange under the community's policy."""
        levy = self.state.levy
        if levy is None or draft.provider.startswith("@") or draft.receiver.startswith("@"):
            return None
        levy_amount = levy.on(draft.amount)
        return (levy_amount, levy.paid_by) if levy_amount > 0 else None

    # --- applying ------------------------------------------------------------------------------

    def _change(self, account_id: str, **changes: int) -> None:
        account = self.accounts[account_id]
        self.accounts[account_id] = replace(
            account, **{name: getattr(account, name) + value for name, value in changes.items()}
        )
        self.touched.setdefault(account_id, None)

    def _reserve(self, change: _Checked, created_by: str | None) -> PostedExchange:
        """Hold a proposal's entries as reservations and queue its pending row."""
        draft = change.draft
        for account_id, amount in change.postings:
            if amount < 0:
                self._change(account_id, reserved_debit=-amount)
            else:
                self._change(account_id, reserved_credit=amount)
        exchange_id = self.new_id()
        now = self.clock()
        if draft.external_id is not None:
            self.external_ids[draft.external_id] = exchange_id
        proposed = PostedExchange(
            community=self.community_id,
            id=exchange_id,
            status="pending",
            provider=change.provider,
            receiver=change.receiver,
            amount=change.amount,
            description=draft.description,
            category=draft.category,
            external_id=draft.external_id,
            # When it happened: as told, else when proposed (accepting later does not change it).
            occurred_at=draft.occurred_at or now,
            created_at=now,
            metadata=draft.metadata,
            levy_amount=change.levy[0] if change.levy else None,
            levy_paid_by=change.levy[1] if change.levy else None,
            initiated_by=draft.initiated_by,
            expires_at=now + timedelta(seconds=draft.expires_in),
        )
        self.out.new_pending.append(
            {
                "community_id": self.community_id,
                "id": exchange_id,
                "provider": proposed.provider,
                "receiver": proposed.receiver,
                "amount": proposed.amount,
                "description": proposed.description,
                "category": proposed.category,
                "external_id": proposed.external_id,
                "occurred_at": proposed.occurred_at,
                "metadata": proposed.metadata,
                "levy_amount": proposed.levy_amount,
                "levy_paid_by": proposed.levy_paid_by,
                "initiated_by": proposed.initiated_by,
                "status": "pending",
                "created_at": now,
                "expires_at": proposed.expires_at,
                "resolved_at": None,
                "created_by": created_by,
            }
        )
        self.out.events.append(PlannedEvent("exchange.pending", proposed))
        return proposed

    def _release(self, postings: list[tuple[str, int]]) -> None:
        """Give back what a pending exchange reserved."""
        for account_id, amount in postings:
            if amount < 0:
                self._change(account_id, reserved_debit=amount)
            else:
                self._change(account_id, reserved_credit=-amount)

    def _resolve(self, row: PendingState, status: str, *, emit: bool = True) -> PostedExchange:
        now = self.clock()
        self.resolved[row.id] = status
        self.out.settled_pending.append((row.id, status, now))
        resolved = PostedExchange(
            community=self.community_id,
            id=row.id,
            status=status,
            provider=row.provider,
            receiver=row.receiver,
            amount=row.amount,
            description=row.description,
            category=row.category,
            external_id=row.external_id,
            occurred_at=row.occurred_at or row.created_at,
            created_at=row.created_at,
            metadata=row.metadata,
            levy_amount=row.levy_amount,
            levy_paid_by=row.levy_paid_by,
            initiated_by=row.initiated_by,
            expires_at=row.expires_at,
            resolved_at=now,
        )
        if emit:
            self.out.events.append(PlannedEvent(f"exchange.{status}", resolved))
        return resolved

    def _complete(
        self, change: _Checked, *, created_by: str | None, proposal: PostedExchange | None = None
    ) -> PostedExchange:
        """Give a checked exchange its seq, time and hash, post its entries, update the figures,
        and queue its rows. An accepted `proposal` keeps its id."""
        draft = change.draft
        head = self.head
        now = self.clock()
        if head.last_created_at is not None and now < head.last_created_at:
            now = head.last_created_at
        seq = head.last_seq + 1
        exchange_id = proposal.id if proposal else self.new_id()
        entries = []
        for account_id, amount in change.postings:
            self._change(account_id, balance=amount)
            entries.append(ChainEntry(account_id, amount, self.accounts[account_id].balance))
        for party in (change.provider, change.receiver):
            self.touched[party] = now
        volume, exchanges = head.counted_volume, head.counted_exchanges
        if draft.reverses is None:
            self._count(change.provider, change.receiver, change.amount, +1)
            volume, exchanges = volume + change.amount, exchanges + 1
        elif change.uncounts is not None:
            provider, receiver, amount = change.uncounts
            self._count(provider, receiver, amount, -1)
            volume, exchanges = volume - amount, exchanges - 1
        chained = ChainedExchange(
            community=self.community_id,
            seq=seq,
            id=exchange_id,
            provider=change.provider,
            receiver=change.receiver,
            amount=change.amount,
            description=draft.description,
            category=draft.category,
            external_id=draft.external_id,
            reverses=draft.reverses,
            created_at=now,
            entries=tuple(entries),
            intertrade_id=draft.intertrade_id,
        )
        new_hash = chain_hash(head.last_hash, chained)
        self.head = replace(
            head,
            last_seq=seq,
            last_hash=new_hash,
            last_created_at=now,
            counted_volume=volume,
            counted_exchanges=exchanges,
        )
        self.head_dirty = True
        if draft.external_id is not None:
            self.external_ids[draft.external_id] = exchange_id
        posted = PostedExchange(
            community=self.community_id,
            id=exchange_id,
            status="completed",
            seq=seq,
            provider=change.provider,
            receiver=change.receiver,
            amount=change.amount,
            description=draft.description,
            category=draft.category,
            external_id=draft.external_id,
            occurred_at=draft.occurred_at or now,
            created_at=now,
            reverses=draft.reverses,
            metadata=draft.metadata,
            levy_amount=change.levy[0] if change.levy else None,
            levy_paid_by=change.levy[1] if change.levy else None,
            intertrade_id=draft.intertrade_id,
            entries=tuple(sorted(entries, key=lambda e: (e.amount, e.account))),
            prev_hash=head.last_hash,
            hash=new_hash,
            initiated_by=proposal.initiated_by if proposal else None,
            expires_at=proposal.expires_at if proposal else None,
            resolved_at=proposal.resolved_at if proposal else None,
        )
        self.out.exchanges.append(
            {
                "community_id": self.community_id,
                "id": exchange_id,
                "seq": seq,
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
                "intertrade_id": posted.intertrade_id,
                "created_by": created_by,
                "prev_hash": posted.prev_hash,
                "hash": new_hash,
            }
        )
        self.out.entries.extend(
            {
                "community_id": self.community_id,
                "exchange_id": exchange_id,
                "account_id": entry.account,
                "seq": seq,
                "amount": entry.amount,
                "balance_after": entry.balance_after,
            }
            for entry in entries
        )
        self.out.events.append(PlannedEvent("exchange.completed", posted))
        if draft.reverses is not None:
            self.out.events.append(
                PlannedEvent(
                    "exchange.reversed", data={"id": draft.reverses, "reversed_by": exchange_id}
                )
            )
        return posted

    def _count(self, provider: str, receiver: str, amount: int, sign: int) -> None:
        """Add (+1) or take back (-1) a counted exchange in the mutuality figures."""
        key = pair_of(provider, receiver)
        pair = self.pairs.get(key) or PairFlow(key[0], key[1], 0, 0, 0, stored=False)
        before = pair.exchanges
        if provider == key[0]:
            pair = replace(pair, a_to_b=pair.a_to_b + sign * amount)
        else:
            pair = replace(pair, b_to_a=pair.b_to_a + sign * amount)
        pair = replace(pair, exchanges=pair.exchanges + sign)
        self.pairs[key] = pair
        self.dirty_pairs.add(key)
        partners = 0 if (before == 0) == (pair.exchanges == 0) else (1 if pair.exchanges else -1)
        self._change(provider, given=sign * amount, exchange_count=sign, partner_count=partners)
        self._change(receiver, received=sign * amount, exchange_count=sign, partner_count=partners)

    # --- the write set -------------------------------------------------------------------------

    def writes(self) -> WriteSet:
        out = self.out
        out.accounts = [
            replace(self.accounts[account_id], last_exchange_at=self.touched[account_id])
            for account_id in sorted(self.touched)
            if self.accounts[account_id] != self.state.accounts.get(account_id)
            or self.touched[account_id] is not None
        ]
        out.pairs = [self.pairs[key] for key in sorted(self.dirty_pairs)]
        last_event_id = self.head.last_event_id + len(out.events)
        if self.head_dirty or out.events:
            out.head = replace(self.head, last_event_id=last_event_id)
        return out


def pair_of(provider: str, receiver: str) -> tuple[str, str]:
    """A pair flow's key: the two account ids in order."""
    return (provider, receiver) if provider < receiver else (receiver, provider)


def check_limits(account: AccountState, held: Sequence[int], amount: int) -> None:
    """Would `amount` (posted or reserved) keep the account within its limits, counting what is
    reserved and what the request already holds (`held`: balance change, extra reserved debit,
    extra reserved credit)? Raises `LimitExceeded` if not."""
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
