"""What the ledger records: drafts in, posted exchanges and entries out, and the levy rule.

Plain values, no database: `planner.plan` turns drafts into posted exchanges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from protocoop.ledger.chain import ChainEntry

COMMONS = "@commons"
CLEARING_PREFIX = "@link:"
"""A community's clearing account for a link is `@link:<the other community>`."""


def clearing_account(other_community: str) -> str:
    return CLEARING_PREFIX + other_community


def is_clearing(account_id: str) -> bool:
    return account_id.startswith(CLEARING_PREFIX)


PPM = 1_000_000

Payer = Literal["provider", "receiver"]
Settlement = Literal["accept", "reject", "cancel"]


@dataclass(frozen=True, slots=True)
class Levy:
    """A community's levy policy: `rate_ppm` of each exchange's amount (round half up, at least
    `minimum`, at most the amount), paid into @commons by `paid_by`."""

    rate_ppm: int
    minimum: int
    paid_by: Payer

    def on(self, amount: int) -> int:
        """The levy on an exchange of `amount` minor units."""
        proportional = (amount * self.rate_ppm + PPM // 2) // PPM
        return min(amount, max(self.minimum, proportional))


@dataclass(frozen=True, slots=True)
class Draft:
    """An exchange to record: well-formed, but not yet checked against the ledger."""

    provider: str
    """Account that gave; credited."""
    receiver: str
    """Account that received; debited."""
    amount: int
    """Minor units, 1..10^15."""
    description: str
    category: str | None = None
    external_id: str | None = None
    occurred_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    reverses: str | None = None
    """For a reversal: the exchange it undoes (provider, receiver and amount come from it)."""
    pending: bool = False
    """Propose rather than record: reserve the amount until the other side accepts."""
    initiated_by: Payer = "provider"
    """Who proposes a pending exchange (and may cancel it)."""
    expires_in: int = 7 * 24 * 3600
    """Seconds a pending exchange's reservation lasts."""
    intertrade_id: str | None = None
    """This community's side of an intertrade (`links.intertrades`): the only way a clearing
    account (`@link:<community>`) moves."""


@dataclass(frozen=True, slots=True)
class PostedExchange:
    """An exchange as the ledger now holds it: completed (with seq, entries and hash) or not."""

    community: str
    id: str
    status: str
    """`completed`, `pending`, `rejected`, `cancelled` or `expired`."""
    provider: str
    receiver: str
    amount: int
    description: str
    category: str | None
    external_id: str | None
    occurred_at: datetime
    created_at: datetime
    metadata: dict[str, Any] | None
    levy_amount: int | None = None
    levy_paid_by: str | None = None
    intertrade_id: str | None = None
    seq: int | None = None
    reverses: str | None = None
    reversed_by: str | None = None
    entries: tuple[ChainEntry, ...] = ()
    prev_hash: str | None = None
    hash: str | None = None
    initiated_by: str | None = None
    expires_at: datetime | None = None
    resolved_at: datetime | None = None


def levy_postings(
    provider: str, receiver: str, amount: int, levy: tuple[int, Payer] | None
) -> list[tuple[str, int]]:
    """The entries of an exchange, receiver first, without zero entries."""
    if levy is None:
        return [(receiver, -amount), (provider, amount)]
    levy_amount, paid_by = levy
    if paid_by == "provider":
        postings = [(receiver, -amount), (provider, amount - levy_amount)]
    else:
        postings = [(receiver, -(amount + levy_amount)), (provider, amount)]
    postings.append((COMMONS, levy_amount))
    return [(account, value) for account, value in postings if value != 0]


def row_levy(row: Any) -> tuple[int, Payer] | None:
    return (row.levy_amount, row.levy_paid_by) if row.levy_amount else None


def pending_document(community_id: str, row: dict[str, Any]) -> PostedExchange:
    return PostedExchange(
        community=community_id,
        id=row["id"],
        status=row["status"],
        provider=row["provider"],
        receiver=row["receiver"],
        amount=row["amount"],
        description=row["description"],
        category=row["category"],
        external_id=row["external_id"],
        occurred_at=row["occurred_at"] or row["created_at"],
        created_at=row["created_at"],
        metadata=row["metadata"],
        levy_amount=row["levy_amount"],
        levy_paid_by=row["levy_paid_by"],
        initiated_by=row["initiated_by"],
        expires_at=row["expires_at"],
        resolved_at=row["resolved_at"],
    )
