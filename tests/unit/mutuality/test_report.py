"""The mutuality report's definitions (docs/design.md §3), checked with literal numbers and no
database: reciprocity and standing, the mutuality index and velocity, who is near or outside a
limit, which warnings are given, and when mutuality holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from protocoop.mutuality.report import (
    LedgerFigures,
    LinkFigures,
    MemberFigures,
    MutualityReport,
    PairFigures,
    PartnerFigures,
    Policy,
    link_positions,
    member_mutuality,
    mutuality_index,
    mutuality_report,
    reciprocity,
    standing,
)

AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RECENTLY = AS_OF - timedelta(days=1)


def member(name: str, given: int = 0, received: int = 0, **fields: Any) -> MemberFigures:
    """A member's figures; balance defaults to what the window's flows left it with."""
    exchanges = fields.pop("exchanges", 1 if given or received else 0)
    return MemberFigures(
        member=name,
        given=given,
        received=received,
        exchanges=exchanges,
        partners=fields.pop("partners", 1 if exchanges else 0),
        balance=fields.pop("balance", given - received),
        lower_limit=fields.pop("lower_limit", -100),
        upper_limit=fields.pop("upper_limit", None),
        last_exchange_at=fields.pop("last_exchange_at", RECENTLY if exchanges else None),
    )


def report(
    members: list[MemberFigures],
    pairs: list[PairFigures] | None = None,
    policy: Policy | None = None,
    **ledger: Any,
) -> MutualityReport:
    """The report over `members`; volume and sums default to what their figures imply."""
    ledger.setdefault("balance_sum", sum(m.balance for m in members))
    ledger.setdefault("volume", sum(m.given for m in members))
    ledger.setdefault("exchanges", sum(m.exchanges for m in members) // 2)
    ledger.setdefault("outstanding_credit", sum(m.balance for m in members if m.balance > 0))
    return mutuality_report(
        members, pairs or [], LedgerFigures(**ledger), policy or Policy(), AS_OF
    )


def warned(result: MutualityReport) -> set[tuple[str, str | None]]:
    return {(w.code, w.member) for w in result.warnings}


def names(positions: tuple[Any, ...]) -> list[str]:
    return [p.member for p in positions]


# --- reciprocity and standing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "received", "expected"),
    [
        (10, 10, 1.0),
        (30, 0, 0.0),
        (0, 30, 0.0),
        (30, 10, 0.5),
        (10, 30, 0.5),
        (3, 1, 0.5),
        (7, 3, 0.6),
        (1, 999, 0.002),
    ],
)
def test_reciprocity_is_one_minus_the_imbalance_over_the_flow(
    given: int, received: int, expected: float
) -> None:
    assert reciprocity(given, received) == pytest.approx(expected)


def test_reciprocity_of_a_member_who_did_nothing_is_none() -> None:
    assert reciprocity(0, 0) is None


@pytest.mark.parametrize(
    ("given", "received", "threshold", "expected"),
    [
        (10, 10, 0.5, "reciprocal"),
        (30, 10, 0.5, "reciprocal"),  # reciprocity exactly 0.5: at the threshold counts
        (10, 30, 0.5, "reciprocal"),
        (31, 10, 0.5, "net_giver"),  # 1 - 21/41 = 0.488
        (10, 31, 0.5, "net_receiver"),
        (30, 10, 0.6, "net_giver"),  # the same flows under a stricter community
        (10, 30, 0.6, "net_receiver"),
        (50, 0, 0.0, "reciprocal"),  # a threshold of 0 calls everybody active reciprocal
        (11, 10, 1.0, "net_giver"),  # a threshold of 1 asks for exact balance
        (10, 10, 1.0, "reciprocal"),
        (0, 0, 0.5, "inactive"),
        (0, 0, 0.0, "inactive"),
    ],
)
def test_standing_follows_reciprocity_against_the_threshold(
    given: int, received: int, threshold: float, expected: str
) -> None:
    assert standing(given, received, threshold) == expected


# --- community indicators ----------------------------------------------------------------------


def test_mutuality_index_is_one_when_every_member_gives_as_much_as_it_receives() -> None:
    # alice -> bob 10, bob -> alice 10
    members = [member("alice", 10, 10, exchanges=2), member("bob", 10, 10, exchanges=2)]
    assert mutuality_index(members, volume=20) == 1.0


def test_mutuality_index_is_zero_when_everything_went_one_way() -> None:
    # alice -> bob 10, twice
    members = [member("alice", 20, 0, exchanges=2), member("bob", 0, 20, exchanges=2)]
    assert mutuality_index(members, volume=20) == 0.0


def test_mutuality_index_is_none_without_volume() -> None:
    assert mutuality_index([member("alice"), member("bob")], volume=0) is None
    assert mutuality_index([], volume=0) is None


def test_mutuality_index_of_a_mixed_community_computed_by_hand() -> None:
    # alice -> bob 30, bob -> carol 10, carol -> alice 10: volume 50.
    # Net changes: alice +20, bob -20, carol 0. N = 20, index = 1 - 20/50 = 0.6.
    members = [
        member("alice", given=30, received=10, exchanges=2),
        member("bob", given=10, received=30, exchanges=2),
        member("carol", given=10, received=10, exchanges=2),
    ]
    assert mutuality_index(members, volume=50) == pytest.approx(0.6)

    result = report(members)
    assert result.indicators.volume == 50
    assert result.indicators.exchanges == 3
    assert result.indicators.mutuality_index == pytest.approx(0.6)
    assert [m.standing for m in result.members] == ["reciprocal", "reciprocal", "reciprocal"]
    assert [m.reciprocity for m in result.members] == pytest.approx([0.5, 0.5, 1.0])


def test_mutuality_index_counts_the_fund_when_it_gives_or_receives_one_way() -> None:
    # @commons is not a member, but its exchanges are in the volume: the fund -> alice 10 alone
    # is all one way, and so is bob -> the fund 10.
    assert mutuality_index([member("alice", 0, 10), member("bob")], volume=10) == 0.0
    assert mutuality_index([member("alice"), member("bob", 10, 0)], volume=10) == 0.0
    # fund -> alice 10 and bob -> fund 10: the fund is even, alice and bob are not.
    both = [member("alice", 0, 10), member("bob", 10, 0)]
    assert mutuality_index(both, volume=20) == 0.5
    # fund -> alice 10 and alice -> fund 10: all matched.
    assert mutuality_index([member("alice", 10, 10, exchanges=2)], volume=20) == 1.0


def test_velocity_is_volume_over_outstanding_credit() -> None:
    members = [member("alice", 30, 10), member("bob", 10, 30)]
    result = report(members, volume=40, outstanding_credit=20)
    assert result.indicators.velocity == 2.0
    assert result.indicators.outstanding_credit == 20


def test_velocity_is_none_without_outstanding_credit() -> None:
    members = [member("alice", 10, 10), member("bob", 10, 10)]
    result = report(members, volume=20)
    assert result.indicators.outstanding_credit == 0
    assert result.indicators.velocity is None
    assert result.indicators.mutuality_index == 1.0


def test_active_members_are_those_with_an_exchange_in_the_window() -> None:
    members = [member("alice", 5, 0), member("bob", 0, 5), member("carol", balance=0)]
    result = report(members)
    assert result.indicators.active_members == 2
    assert result.indicators.members == 3
    assert [m.standing for m in result.members] == ["net_giver", "net_receiver", "inactive"]
    assert result.members[2].reciprocity is None


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "near"),
    [
        (-100, True),  # at the limit
        (-95, True),
        (-90, True),  # exactly 10 % above it
        (-89, False),  # just beyond 10 %
        (-50, False),
        (0, False),
    ],
)
def test_near_the_lower_limit_means_at_or_within_ten_percent_of_it(
    balance: int, near: bool
) -> None:
    result = report(
        [member("dana", balance=balance, lower_limit=-100), member("x", balance=-balance)]
    )
    assert names(result.near_lower) == (["dana"] if near else [])
    assert (("near_lower_limit", "dana") in warned(result)) is near
    assert result.near_upper == ()
    assert result.outside == ()
    assert result.holds is True


@pytest.mark.parametrize(
    ("balance", "near"),
    [
        (200, True),  # at the cap
        (190, True),
        (180, True),  # exactly 10 % below it
        (179, False),  # just beyond 10 %
        (0, False),
        (-100, False),
    ],
)
def test_near_the_upper_limit_means_at_or_within_ten_percent_of_it(
    balance: int, near: bool
) -> None:
    result = report([member("hugo", balance=balance, lower_limit=-100, upper_limit=200)])
    assert names(result.near_upper) == (["hugo"] if near else [])
    assert (("near_upper_limit", "hugo") in warned(result)) is near


def test_near_limit_ratio_comes_from_the_policy() -> None:
    members = [
        member("dana", balance=-75, lower_limit=-100),
        member("hugo", balance=160, upper_limit=200),
    ]
    assert report(members).near_lower == ()
    assert report(members).near_upper == ()

    wider = report(members, policy=Policy(near_limit_ratio=0.25))
    assert names(wider.near_lower) == ["dana"]
    assert names(wider.near_upper) == ["hugo"]


def test_a_member_without_a_cap_is_never_near_the_upper_limit() -> None:
    result = report([member("rich", balance=10**15, upper_limit=None)])
    assert result.near_upper == ()
    assert result.outside == ()
    assert "near_upper_limit" not in {w.code for w in result.warnings}


def test_a_member_without_credit_is_not_stuck_in_debt_at_zero() -> None:
    # Lower limit 0 (may not go negative) and upper limit 0: a zero balance is near neither.
    result = report([member("newcomer", balance=0, lower_limit=0, upper_limit=0)])
    assert result.near_lower == ()
    assert result.near_upper == ()


def test_a_member_outside_its_limits_breaks_mutuality_and_is_not_merely_near() -> None:
    members = [
        member("under", balance=-101, lower_limit=-100),
        member("over", balance=201, lower_limit=-100, upper_limit=200),
        member("ok", balance=-100, lower_limit=-100),
    ]
    result = report(members, balance_sum=0)

    assert result.holds is False
    assert names(result.outside) == ["under", "over"]
    assert result.outside[0].balance == -101
    assert result.outside[0].lower_limit == -100
    assert result.outside[1].upper_limit == 200
    assert names(result.near_lower) == ["ok"]
    assert result.near_upper == ()
    assert result.integrity_ok is True
    assert result.zero_sum_ok is True


# --- when mutuality holds ----------------------------------------------------------------------


def test_mutuality_holds_on_a_whole_ledger_summing_to_zero_within_limits() -> None:
    result = report([member("alice", 10, 0), member("bob", 0, 10)])
    assert result.holds is True
    assert result.integrity_ok is True
    assert result.zero_sum_ok is True
    assert result.balance_sum == 0


def test_balances_not_summing_to_zero_break_mutuality() -> None:
    result = report([member("alice", 10, 0), member("bob", 0, 10)], balance_sum=1)
    assert result.holds is False
    assert result.zero_sum_ok is False
    assert result.balance_sum == 1
    assert result.integrity_ok is True


def test_integrity_problems_break_mutuality() -> None:
    problem = "hash_mismatch: seq 3 does not hash to its stored hash"
    result = report([member("alice", 10, 0), member("bob", 0, 10)], integrity_problems=(problem,))
    assert result.holds is False
    assert result.integrity_ok is False
    assert result.integrity_problems == (problem,)
    assert result.zero_sum_ok is True


def test_warnings_of_every_kind_never_break_mutuality() -> None:
    long_ago = AS_OF - timedelta(days=400)
    members = [
        member("debtor", 0, 95, exchanges=3, partners=1, lower_limit=-100),
        member("hoarder", 95, 0, exchanges=3, partners=1, upper_limit=100),
        member("sleeper", 0, 0, exchanges=0, balance=7, last_exchange_at=long_ago),
        member("creditor", 0, 0, exchanges=0, balance=-7, last_exchange_at=long_ago),
    ]
    result = report(members, volume=95, exchanges=3)

    assert {w.code for w in result.warnings} == {
        "near_lower_limit",
        "near_upper_limit",
        "one_way_member",
        "dormant_with_balance",
    }
    assert result.holds is True


# --- warnings ----------------------------------------------------------------------------------


def test_one_way_member_needs_three_exchanges_below_the_threshold() -> None:
    members = [
        member("steady", given=30, received=0, exchanges=3),  # reciprocity 0 over 3: warned
        member("newcomer", given=30, received=0, exchanges=2),  # too few exchanges to judge
        member("taker", given=0, received=60, exchanges=5),  # one way the other way
        member("fair", given=30, received=10, exchanges=4),  # reciprocity 0.5: at the threshold
        member("nearly", given=31, received=10, exchanges=4),  # 0.488: below it
    ]
    result = report(members, balance_sum=0)

    one_way = {w.member for w in result.warnings if w.code == "one_way_member"}
    assert one_way == {"steady", "taker", "nearly"}
    detail = next(w.detail for w in result.warnings if w.member == "steady")
    assert "0.00" in detail
    assert "3 exchanges" in detail


def test_one_way_member_follows_the_community_threshold() -> None:
    members = [member("fair", given=30, received=10, exchanges=4, balance=0)]
    assert warned(report(members)) == set()
    assert warned(report(members, policy=Policy(reciprocity_threshold=0.6))) == {
        ("one_way_member", "fair")
    }


@pytest.mark.parametrize(
    ("days_ago", "balance", "dormant"),
    [
        (91, 5, True),
        (400, -5, True),  # debt left behind counts too
        (90 + 1 / 86400, 5, True),  # a second beyond 90 days
        (90 - 1 / 86400, 5, False),  # a second within them
        (89, 5, False),
        (1, 5, False),
        (400, 0, False),  # dormant but square: nothing to warn about
    ],
)
def test_dormant_with_balance_means_a_balance_and_no_exchange_within_the_period(
    days_ago: float, balance: int, dormant: bool
) -> None:
    sleeper = member(
        "sleeper",
        exchanges=0,
        balance=balance,
        last_exchange_at=AS_OF - timedelta(days=days_ago),
    )
    other = member("other", exchanges=0, balance=-balance, last_exchange_at=RECENTLY)
    result = report([sleeper, other])

    assert (("dormant_with_balance", "sleeper") in warned(result)) is dormant
    assert result.indicators.dormant_with_balance == (1 if dormant else 0)
    assert result.holds is True


def test_a_member_with_a_balance_and_no_exchange_at_all_is_dormant() -> None:
    result = report([member("ghost", exchanges=0, balance=3, last_exchange_at=None)])
    assert warned(result) == {("dormant_with_balance", "ghost")}


def test_dormant_after_days_comes_from_the_policy() -> None:
    members = [
        member("a", exchanges=0, balance=5, last_exchange_at=AS_OF - timedelta(days=40)),
        member("b", exchanges=0, balance=-5, last_exchange_at=AS_OF - timedelta(days=10)),
    ]
    assert report(members).indicators.dormant_with_balance == 0
    monthly = report(members, policy=Policy(dormant_after_days=30))
    assert warned(monthly) == {("dormant_with_balance", "a")}


def test_an_honest_reciprocal_community_has_no_warnings() -> None:
    members = [member("alice", 10, 10, exchanges=4), member("bob", 10, 10, exchanges=4)]
    assert report(members).warnings == ()


# --- pairs -------------------------------------------------------------------------------------


def test_the_twenty_most_imbalanced_pairs_are_shown_most_imbalanced_first() -> None:
    # 25 pairs whose imbalance is 1..25, given in scrambled order; two of them one way against
    # the alphabet (b gave more), and two ties broken by the pair's names.
    pairs = [
        PairFigures(f"m{i:02d}", f"n{i:02d}", a_to_b=100 + i, b_to_a=100) for i in range(1, 26)
    ]
    pairs[24] = PairFigures("m25", "n25", a_to_b=0, b_to_a=25)  # net -25: the most imbalanced
    pairs[23] = PairFigures("m24", "n24", a_to_b=10, b_to_a=34)  # net -24
    pairs.append(PairFigures("a00", "z00", a_to_b=30, b_to_a=7))  # net 23, ties with m23
    scrambled = pairs[::2] + pairs[1::2]

    result = report([member("m01", balance=0)], pairs=scrambled)

    shown = [(p.a, p.b, p.net) for p in result.pairs]
    assert len(shown) == 20
    assert shown[:4] == [
        ("m25", "n25", -25),
        ("m24", "n24", -24),
        ("a00", "z00", 23),
        ("m23", "n23", 23),
    ]
    assert [abs(net) for _, _, net in shown] == sorted((abs(n) for _, _, n in shown), reverse=True)
    assert {a for a, _, _ in shown}.isdisjoint({"m01", "m02", "m03", "m04", "m05", "m06"})
    first = result.pairs[0]
    assert (first.a_to_b, first.b_to_a) == (0, 25)


def test_pairs_keep_both_directions_and_their_net() -> None:
    result = report([member("alice", balance=0)], pairs=[PairFigures("alice", "bob", 12, 5)])
    pair = result.pairs[0]
    assert (pair.a, pair.b, pair.a_to_b, pair.b_to_a, pair.net) == ("alice", "bob", 12, 5, 7)


# --- one member ------------------------------------------------------------------------------


def test_member_mutuality_gives_a_row_per_partner_most_imbalanced_first() -> None:
    alice = member("alice", given=13, received=7, exchanges=5, partners=3)
    partners = [
        PartnerFigures("carol", given=3, received=3, exchanges=2),
        PartnerFigures("bob", given=10, received=4, exchanges=2),
        PartnerFigures("dave", given=0, received=0, exchanges=0),
        PartnerFigures("erin", given=0, received=0, exchanges=1),
    ]
    result = member_mutuality(alice, partners, Policy())

    figures = result.figures
    assert (figures.member, figures.given, figures.received, figures.balance) == (
        "alice",
        13,
        7,
        6,
    )
    assert figures.reciprocity == pytest.approx(0.7)  # 1 - 6/20
    assert figures.standing == "reciprocal"
    rows = [(p.partner, p.given, p.received, p.exchanges, p.net) for p in result.partners]
    assert rows == [
        ("bob", 10, 4, 2, 6),
        ("carol", 3, 3, 2, 0),
        ("dave", 0, 0, 0, 0),
        ("erin", 0, 0, 1, 0),
    ]
    assert [p.reciprocity for p in result.partners] == pytest.approx([1 - 6 / 14, 1.0, None, None])


def test_member_mutuality_standing_follows_the_threshold() -> None:
    alice = member("alice", given=13, received=7, exchanges=5)
    assert member_mutuality(alice, [], Policy(reciprocity_threshold=0.7)).figures.standing == (
        "reciprocal"
    )
    assert member_mutuality(alice, [], Policy(reciprocity_threshold=0.71)).figures.standing == (
        "net_giver"
    )


def test_member_mutuality_of_an_inactive_member() -> None:
    result = member_mutuality(member("zoe", balance=0), [], Policy())
    assert result.figures.standing == "inactive"
    assert result.figures.reciprocity is None
    assert result.partners == ()


def test_a_link_near_its_cap_warns_and_one_with_room_does_not() -> None:
    positions, warnings = link_positions(
        [
            LinkFigures(other="hillside", balance=-950, cap=1_000, exports=1_200, imports=250),
            LinkFigures(other="lowtown", balance=-100, cap=1_000, exports=100, imports=0),
            LinkFigures(other="importer", balance=900, cap=1_000, exports=0, imports=900),
        ],
        near_limit_ratio=0.1,
    )
    assert [p.near_cap for p in positions] == [True, False, False]
    assert [(w.code, w.member) for w in warnings] == [("near_link_cap", None)]
    assert "hillside" in warnings[0].detail
