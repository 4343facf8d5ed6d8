"""Money in protocoop: integers of minor units (10^-scale of a community's unit), never floats."""

from typing import Final

MAX_AMOUNT: Final = 10**15
"""The largest amount one exchange may carry, in minor units."""

MAX_LIMIT: Final = 10**15
"""The largest magnitude a credit limit may have, in minor units."""

MAX_BALANCE: Final = 10**18
"""A hard bound on any balance, well inside a signed 64-bit integer; an account with no upper
limit still cannot pass it (the refusal names it as the upper limit)."""
