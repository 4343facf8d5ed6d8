"""The posting planner alone: locked state and requests in, outcomes and one write set out."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from protocoop.errors import Forbidden, InvalidState, LimitExceeded, MemberInactive
from protocoop.ledger.chain import GENESIS_HASH, ChainedExchange, ChainEntry, verify_chain
from protocoop.ledger.planner import (
    AccountState,
    Head,
    LockedState,
    Original,
    PairFlow,
    PendingState,
    Post,
    Settle,
    plan,
)
from protocoop.ledger.records import Draft, Levy, PostedExchange

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"x{next(counter)}"


def account(
    id: str,
    balance: int = 0,
    lower: int = -1000,
    upper: int | None = 1000,
    reserved_debit: int = 0,
    reserved_credit: int = 0,
    status: str | None = "active",
) -> AccountState:
    return AccountState(
        id=id,
        kind="system" if id.startswith("@") else "member",
        status=None if id.startswith("@") else status,
        lower_limit=lower,
        upper_limit=upper,
        balance=balance,
        reserved_debit=reserved_debit,
        reserved_credit=reserved_credit,
        given=0,
        received=0,
        exchange_count=0,
        partner_count=0,
    )


def state(*accounts: AccountState, levy: Levy | None = None, **more: object) -> LockedState:
    return LockedState(
        community_id="river",
        status="active",
        levy=levy,
        head=Head(41, "ab" * 32, None, 7, 5000, 40),
        accounts={a.id: a for a in accounts},
        **more,  # type: ignore[arg-type]
    )


def pay(provider: str, receiver: str, amount: int, **more: object) -> Draft:
    return Draft(provider=provider, receiver=receiver, amount=amount, description="d", **more)  # type: ignore[arg-type]


def entries_of(posted: PostedExchange) -> dict[str, int]:
    return {entry.account: entry.amount for entry in posted.entries}


def test_a_plain_post_moves_the_amount_and_extends_the_head() -> None:
    result = plan(
        state(account("ann", 10), account("bob", -5)),
        [Post([pay("ann", "bob", 30)], created_by="k1")],
        now=NOW,
        new_id=ids(),
    )
    [posted] = result.outcomes[0].result  # type: ignore[misc]
    assert entries_of(posted) == {"bob": -30, "ann": 30}
    assert posted.seq == 42
    assert posted.prev_hash == "ab" * 32
    writes = result.writes
    assert {a.id: a.balance for a in writes.accounts} == {"ann": 40, "bob": -35}
    assert {a.id: (a.given, a.received, a.partner_count) for a in writes.accounts} == {
        "ann": (30, 0, 1),
        "bob": (0, 30, 1),
    }
    assert writes.pairs == [PairFlow("ann", "bob", 30, 0, 1, stored=False)]
    assert writes.head is not None
    assert (writes.head.last_seq, writes.head.last_hash) == (42, posted.hash)
    assert (writes.head.counted_volume, writes.head.counted_exchanges) == (5030, 41)
    assert writes.head.last_event_id == 8
    assert [e.type for e in writes.events] == ["exchange.completed"]
    assert [(r["seq"], r["created_by"]) for r in writes.exchanges] == [(42, "k1")]
    assert sorted((r["account_id"], r["balance_after"]) for r in writes.entries) == [
        ("ann", 40),
        ("bob", -35),
    ]


def test_limits_count_reservations() -> None:
    locked = state(account("ann"), account("bob", -50, lower=-100, reserved_debit=30))
    refused = plan(locked, [Post([pay("ann", "bob", 21)], None)], now=NOW)
    refusal = refused.outcomes[0].refusal
    assert isinstance(refusal, LimitExceeded)
    assert refusal.extra == {
        "member": "bob",
        "limit": "lower",
        "limit_value": -100,
        "balance": -50,
        "attempted": 21,
        "reserved": 30,
    }
    assert refused.writes.accounts == []
    assert refused.writes.head is None
    fits = plan(locked, [Post([pay("ann", "bob", 20)], None)], now=NOW)
    assert {a.id: a.balance for a in fits.writes.accounts} == {"ann": 20, "bob": -70}


def test_an_upper_limit_counts_reserved_credit() -> None:
    locked = state(account("ann", 90, upper=100, reserved_credit=5), account("bob"))
    refusal = plan(locked, [Post([pay("ann", "bob", 6)], None)], now=NOW).outcomes[0].refusal
    assert isinstance(refusal, LimitExceeded)
    assert (refusal.extra["limit"], refusal.extra["limit_value"]) == ("upper", 100)
    assert plan(locked, [Post([pay("ann", "bob", 5)], None)], now=NOW).outcomes[0].refusal is None


def test_levies_round_half_up_with_a_minimum() -> None:
    members = (account("ann"), account("bob"), account("@commons", lower=0, upper=None))
    by_provider = state(*members, levy=Levy(15_000, 1, "provider"))  # 1.5 %
    [posted] = plan(by_provider, [Post([pay("ann", "bob", 100)], None)], now=NOW).outcomes[0].result  # type: ignore[misc]
    assert entries_of(posted) == {"bob": -100, "ann": 98, "@commons": 2}  # 1.5 rounds to 2
    assert (posted.levy_amount, posted.levy_paid_by) == (2, "provider")
    by_receiver = state(*members, levy=Levy(15_000, 1, "receiver"))
    [posted] = plan(by_receiver, [Post([pay("ann", "bob", 33)], None)], now=NOW).outcomes[0].result  # type: ignore[misc]
    assert entries_of(posted) == {"bob": -34, "ann": 33, "@commons": 1}  # 0.495 -> minimum 1
    to_commons = plan(by_receiver, [Post([pay("@commons", "bob", 50)], None)], now=NOW)
    [posted] = to_commons.outcomes[0].result  # type: ignore[misc]
    assert posted.levy_amount is None
    assert entries_of(posted) == {"bob": -50, "@commons": 50}


def test_reversing_a_levied_exchange_undoes_entries_and_figures() -> None:
    ann = replace(account("ann", 98), given=100, exchange_count=1, partner_count=1)
    bob = replace(account("bob", -100), received=100, exchange_count=1, partner_count=1)
    locked = state(
        ann,
        bob,
        account("@commons", 2, lower=0, upper=None),
        levy=Levy(15_000, 1, "provider"),
        originals={
            "x0": Original(
                "x0", "ann", "bob", 100, None, (("bob", -100), ("@commons", 2), ("ann", 98))
            )
        },
        pairs={("ann", "bob"): PairFlow("ann", "bob", 100, 0, 1)},
    )
    reversal = Draft(provider="", receiver="", amount=0, description="oops", reverses="x0")
    result = plan(locked, [Post([reversal], "k1")], now=NOW, new_id=ids())
    [posted] = result.outcomes[0].result  # type: ignore[misc]
    assert (posted.provider, posted.receiver, posted.amount) == ("bob", "ann", 100)
    assert entries_of(posted) == {"bob": 100, "@commons": -2, "ann": -98}
    after = {a.id: a for a in result.writes.accounts}
    assert {i: a.balance for i, a in after.items()} == {"ann": 0, "bob": 0, "@commons": 0}
    assert (after["ann"].given, after["ann"].exchange_count, after["ann"].partner_count) == (
        0,
        0,
        0,
    )
    assert result.writes.pairs == [PairFlow("ann", "bob", 0, 0, 0)]
    assert result.writes.head is not None
    assert (result.writes.head.counted_volume, result.writes.head.counted_exchanges) == (4900, 39)
    assert [e.type for e in result.writes.events] == ["exchange.completed", "exchange.reversed"]
    again = plan(locked, [Post([reversal], None), Post([reversal], None)], now=NOW)
    assert again.outcomes[0].refusal is None
    assert isinstance(again.outcomes[1].refusal, InvalidState)


def test_a_batch_is_all_or_nothing_and_names_the_failing_index() -> None:
    locked = state(account("ann"), account("bob", lower=-100))
    batch = [pay("ann", "bob", 40), pay("ann", "bob", 50), pay("ann", "bob", 11)]
    result = plan(locked, [Post(batch, None, batch=True)], now=NOW)
    refusal = result.outcomes[0].refusal
    assert isinstance(refusal, LimitExceeded)
    assert refusal.extra["index"] == 2
    assert refusal.extra["balance"] == -90
    assert result.writes.exchanges == []
    assert result.writes.accounts == []
    assert result.writes.head is None
    assert result.writes.events == []


def test_a_refusal_in_the_middle_of_a_group_leaves_the_others_intact() -> None:
    locked = state(account("ann"), account("bob", lower=-100), account("cy", status="suspended"))
    result = plan(
        locked,
        [
            Post([pay("ann", "bob", 60)], "k1"),
            Post([pay("ann", "cy", 1)], "k2"),
            Post([pay("ann", "bob", 41)], "k3"),
            Post([pay("bob", "ann", 5)], "k4"),
        ],
        now=NOW,
        new_id=ids(),
    )
    refusals = [type(o.refusal).__name__ if o.refusal else None for o in result.outcomes]
    assert refusals == [None, "MemberInactive", "LimitExceeded", None]
    assert isinstance(result.outcomes[1].refusal, MemberInactive)
    assert [(r["seq"], r["created_by"]) for r in result.writes.exchanges] == [
        (42, "k1"),
        (43, "k4"),
    ]
    assert {a.id: a.balance for a in result.writes.accounts} == {"ann": 55, "bob": -55}
    assert result.writes.head is not None
    assert result.writes.head.last_seq == 43


def test_seq_and_the_hash_chain_continue_across_a_group() -> None:
    locked = state(account("ann"), account("bob"))
    result = plan(
        locked,
        [Post([pay("ann", "bob", n)], None) for n in (1, 2, 3)],
        now=NOW,
        new_id=ids(),
    )
    rows, entries = result.writes.exchanges, result.writes.entries
    links = [
        (
            ChainedExchange(
                community="river",
                seq=row["seq"],
                id=row["id"],
                provider=row["provider"],
                receiver=row["receiver"],
                amount=row["amount"],
                description=row["description"],
                category=row["category"],
                external_id=row["external_id"],
                reverses=row["reverses"],
                created_at=row["created_at"],
                entries=tuple(
                    ChainEntry(e["account_id"], e["amount"], e["balance_after"])
                    for e in entries
                    if e["exchange_id"] == row["id"]
                ),
            ),
            row["prev_hash"],
            row["hash"],
        )
        for row in rows
    ]
    assert [row["seq"] for row in rows] == [42, 43, 44]
    assert list(verify_chain(links, start_seq=41, start_hash="ab" * 32)) == []
    assert result.writes.head is not None
    assert result.writes.head.last_hash == rows[-1]["hash"]
    assert list(verify_chain(links, start_seq=41, start_hash=GENESIS_HASH)) != []


def proposal(expires_at: datetime) -> PendingState:
    return PendingState(
        id="p1",
        provider="ann",
        receiver="bob",
        amount=30,
        description="d",
        category=None,
        external_id=None,
        occurred_at=None,
        metadata=None,
        levy_amount=None,
        levy_paid_by=None,
        initiated_by="provider",
        status="pending",
        created_at=NOW - timedelta(days=1),
        expires_at=expires_at,
        resolved_at=None,
        created_by="k0",
    )


def test_a_proposal_reserves_and_accepting_it_posts_under_its_id() -> None:
    locked = state(account("ann"), account("bob", lower=-50))
    proposed = plan(locked, [Post([pay("ann", "bob", 30, pending=True)], "k0")], now=NOW)
    assert {a.id: (a.reserved_debit, a.reserved_credit) for a in proposed.writes.accounts} == {
        "ann": (0, 30),
        "bob": (30, 0),
    }
    assert proposed.writes.head is not None
    assert proposed.writes.head.last_seq == 41
    reserved = state(
        account("ann", reserved_credit=30),
        account("bob", lower=-50, reserved_debit=30),
        pending={"p1": proposal(NOW + timedelta(hours=1))},
    )
    accepted = plan(reserved, [Settle("p1", "accept")], now=NOW)
    settled = accepted.outcomes[0].result
    assert isinstance(settled, PostedExchange)
    assert (settled.id, settled.seq, settled.status) == ("p1", 42, "completed")
    assert {
        a.id: (a.balance, a.reserved_debit, a.reserved_credit) for a in accepted.writes.accounts
    } == {
        "ann": (30, 0, 0),
        "bob": (-30, 0, 0),
    }
    assert accepted.writes.settled_pending == [("p1", "completed", NOW)]


def test_settling_an_expired_proposal_releases_it_and_keeps_the_release() -> None:
    reserved = state(
        account("ann", reserved_credit=30),
        account("bob", reserved_debit=30),
        pending={"p1": proposal(NOW - timedelta(seconds=1))},
    )
    result = plan(reserved, [Settle("p1", "accept")], now=NOW)
    outcome = result.outcomes[0]
    assert isinstance(outcome.refusal, InvalidState)
    assert outcome.kept
    assert outcome.refusal.extra == {"current_status": "expired"}
    assert result.writes.settled_pending == [("p1", "expired", NOW)]
    assert {a.id: (a.reserved_debit, a.reserved_credit) for a in result.writes.accounts} == {
        "ann": (0, 0),
        "bob": (0, 0),
    }
    assert result.writes.exchanges == []


def test_settling_a_proposal_with_a_system_account_needs_a_treasurer_whatever_its_status() -> None:
    from_commons = replace(proposal(NOW + timedelta(hours=1)), provider="@commons")
    rejected = replace(from_commons, id="p2", status="rejected")
    reserved = state(
        account("@commons", reserved_credit=30),
        account("bob", reserved_debit=30),
        pending={"p1": from_commons, "p2": rejected},
    )
    app = plan(
        reserved,
        [Settle("p1", "accept", system_accounts=False), Settle("p2", "cancel", False)],
        now=NOW,
    )
    assert [type(o.refusal) for o in app.outcomes] == [Forbidden, Forbidden]
    assert not any(o.kept for o in app.outcomes)
    assert (app.writes.accounts, app.writes.settled_pending) == ([], [])
    treasurer = plan(reserved, [Settle("p1", "accept")], now=NOW)
    assert treasurer.outcomes[0].refusal is None
    assert {a.id: a.balance for a in treasurer.writes.accounts} == {"@commons": 30, "bob": -30}


def test_each_recorded_exchange_takes_its_time_from_the_clock_never_going_back() -> None:
    ticks = iter([NOW + timedelta(seconds=2), NOW + timedelta(seconds=1)])
    last = Head(41, "ab" * 32, NOW, 7, 5000, 40)
    locked = replace(state(account("ann"), account("bob")), head=last)
    result = plan(
        locked,
        [Post([pay("ann", "bob", 1), pay("ann", "bob", 2)], None, batch=True)],
        now=NOW,
        clock=lambda: next(ticks),
    )
    times = [row["created_at"] for row in result.writes.exchanges]
    assert times == [NOW + timedelta(seconds=2), NOW + timedelta(seconds=2)]
