"""Converting across a link: integers of minor units, the converted side rounded half to even."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocoop.links.convert import convert, round_half_even


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(5, 2, 2), (7, 2, 4), (9, 2, 4), (11, 2, 6), (10, 4, 2), (3, 4, 1), (1, 4, 0), (6, 4, 2)],
)
def test_halves_go_to_the_even_neighbour_and_the_rest_to_the_nearest(
    numerator: int, denominator: int, expected: int
) -> None:
    assert round_half_even(numerator, denominator) == expected


def test_an_hour_worth_twenty_converts_both_ways() -> None:
    # 100 hundredths of an hour are worth 2000 cents.
    assert convert(150, 100, 2000) == 3000  # 1.5 hours -> 30.00
    assert convert(3000, 2000, 100) == 150
    assert convert(30, 2000, 100) == 2  # 1.5 hundredths -> 2 (half to even)
    assert convert(50, 2000, 100) == 2  # 2.5 -> 2
    assert convert(10, 2000, 100) == 0  # 0.5 -> 0: the service refuses it


@given(
    st.integers(min_value=1, max_value=10**15),
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=1, max_value=10**6),
)
def test_the_result_is_within_half_a_unit_of_the_exact_value(
    amount: int, from_rate: int, to_rate: int
) -> None:
    converted = convert(amount, from_rate, to_rate)
    # |converted - amount * to / from| <= 1/2, in integers
    assert abs(2 * (converted * from_rate - amount * to_rate)) <= from_rate
