"""Converting an amount across a link: pure arithmetic on integers of minor units.

A link's rate says that `rate_a` minor units of community `a`'s unit are worth `rate_b` minor
units of `b`'s. An intertrade states its amount on one side; the other side's amount is that
amount times the rate, rounded half to even to a whole minor unit (banker's rounding, so that
conversions that land exactly on a half do not drift one way over many intertrades).
"""

from __future__ import annotations


def round_half_even(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded to the nearest integer, a half to the even one
    (both positive)."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def convert(amount: int, from_rate: int, to_rate: int) -> int:
    """`amount` minor units on the side whose rate is `from_rate`, in the other side's minor
    units. May be 0 when a tiny amount meets a steep rate: the caller refuses that."""
    return round_half_even(amount * to_rate, from_rate)
