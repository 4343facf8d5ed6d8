"""protocoop's tables.

Global tables (`communities`, `api_keys`) are small and would be reference tables on a sharded
cluster. Every other table belongs to one community: `community_id` is the first column of its
primary key and of every unique constraint, and its foreign keys to other community tables include
`community_id`, so a community's rows can live together on one shard (docs/design.md §4).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from protocoop.db.base import Base, Figure, JSONDocument
from protocoop.money import MAX_AMOUNT, MAX_BALANCE

SLUG = String(63)
HASH = String(64)
EXCHANGE_ID = String(36)
KEY_ID = String(32)


class Community(Base):
    """One mutual-credit ledger: an isolated tenant with its own unit and members."""

    __tablename__ = "communities"
    __table_args__ = (
        CheckConstraint("unit_scale >= 0 AND unit_scale <= 6", name="unit_scale_range"),
        CheckConstraint("default_lower_limit <= 0", name="default_lower_limit_nonpositive"),
        CheckConstraint(
            "default_upper_limit IS NULL OR default_upper_limit >= 0",
            name="default_upper_limit_nonnegative",
        ),
        CheckConstraint("status IN ('active', 'suspended')", name="status_known"),
        CheckConstraint(
            "reciprocity_threshold >= 0 AND reciprocity_threshold <= 1",
            name="reciprocity_threshold_range",
        ),
        CheckConstraint(
            "near_limit_ratio >= 0 AND near_limit_ratio <= 1", name="near_limit_ratio_range"
        ),
        CheckConstraint("dormant_after_days >= 1", name="dormant_after_days_positive"),
        CheckConstraint(
            "(levy_rate_ppm IS NULL) = (levy_paid_by IS NULL) "
            "AND (levy_rate_ppm IS NULL) = (levy_minimum IS NULL)",
            name="levy_complete_or_absent",
        ),
        CheckConstraint(
            "levy_rate_ppm IS NULL OR (levy_rate_ppm >= 0 AND levy_rate_ppm <= 1000000)",
            name="levy_rate_range",
        ),
        CheckConstraint(
            "levy_minimum IS NULL OR levy_minimum >= 0", name="levy_minimum_nonnegative"
        ),
        CheckConstraint(
            "levy_paid_by IS NULL OR levy_paid_by IN ('provider', 'receiver')",
            name="levy_payer_known",
        ),
    )

    id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The community's slug, `[a-z0-9][a-z0-9-]{1,62}`."""
    name: Mapped[str] = mapped_column(String(200))
    """Display name."""
    unit_code: Mapped[str] = mapped_column(String(16))
    """Short code of the unit of account, e.g. `HOUR`."""
    unit_name: Mapped[str] = mapped_column(String(100))
    """Display name of the unit, e.g. `hour`."""
    unit_scale: Mapped[int] = mapped_column(SmallInteger)
    """Amounts are integers in 10^-scale of the unit (0..6)."""
    default_lower_limit: Mapped[int] = mapped_column(BigInteger)
    """Lower limit (<= 0, minor units) given to members created without one."""
    default_upper_limit: Mapped[int | None] = mapped_column(BigInteger)
    """Upper limit (>= 0, minor units) given to new members; null means no cap."""
    status: Mapped[str] = mapped_column(String(16), default="active")
    """`active`, or `suspended` (no new exchanges)."""
    reciprocity_threshold: Mapped[float] = mapped_column(Float, server_default="0.5")
    """Mutuality policy: a member at or above this reciprocity (0..1) is `reciprocal`."""
    near_limit_ratio: Mapped[float] = mapped_column(Float, server_default="0.1")
    """Mutuality policy: a balance within this fraction (0..1) of a limit is near it."""
    dormant_after_days: Mapped[int] = mapped_column(Integer, server_default="90")
    """Mutuality policy: a member with no exchange for this many days is dormant."""
    levy_rate_ppm: Mapped[int | None] = mapped_column(Integer)
    """Levy into @commons, in parts per million of each exchange's amount; null: no levy."""
    levy_minimum: Mapped[int | None] = mapped_column(BigInteger)
    """The smallest levy taken from an exchange (minor units)."""
    levy_paid_by: Mapped[str | None] = mapped_column(String(16))
    """Who pays the levy: `provider` (receives amount - levy) or `receiver` (pays amount + levy)."""
    created_at: Mapped[datetime]
    """When the community was created (UTC)."""
    updated_at: Mapped[datetime]
    """When the community was last changed (UTC)."""


class LedgerHead(Base):
    """The tip of a community's ledger: the row every posting locks to assign `seq` and extend
    the hash chain, so postings in one community are serialized and gap-free."""

    __tablename__ = "ledger_heads"
    __table_args__ = (
        CheckConstraint("last_seq >= 0", name="last_seq_nonnegative"),
        CheckConstraint(
            "counted_volume >= 0 AND counted_exchanges >= 0", name="counted_nonnegative"
        ),
        CheckConstraint("last_event_id >= 0", name="last_event_id_nonnegative"),
    )

    community_id: Mapped[str] = mapped_column(SLUG, ForeignKey("communities.id"), primary_key=True)
    """The community whose ledger this is."""
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    """`seq` of the latest completed exchange (0 before the first)."""
    last_hash: Mapped[str] = mapped_column(HASH)
    """`hash` of the latest completed exchange (before the first, `ledger.chain.GENESIS_HASH`,
    which creating the community writes)."""
    last_created_at: Mapped[datetime | None]
    """`created_at` of the latest exchange; later ones never get an earlier time."""
    counted_volume: Mapped[int] = mapped_column(Figure(), default=0, server_default="0")
    """Mutuality figure: sum of amounts of counted exchanges (not reversed, not reversals)."""
    counted_exchanges: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Mutuality figure: number of counted exchanges."""
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Id of the community's latest event: events are numbered under this row's lock, so their
    ids follow commit order without gaps."""


class Account(Base):
    """The ledger side of a member, or a system account such as `@commons`.

    The database itself keeps the balance inside the limits (invariant 4), counting what pending
    exchanges have reserved.
    """

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind IN ('member', 'system')", name="kind_known"),
        CheckConstraint("(kind = 'system') = (id LIKE '@%')", name="system_ids_start_with_at"),
        CheckConstraint("lower_limit <= 0", name="lower_limit_nonpositive"),
        CheckConstraint("upper_limit IS NULL OR upper_limit >= 0", name="upper_limit_nonnegative"),
        CheckConstraint(
            "reserved_debit >= 0 AND reserved_credit >= 0", name="reservations_nonnegative"
        ),
        CheckConstraint("balance - reserved_debit >= lower_limit", name="within_lower_limit"),
        CheckConstraint(
            "upper_limit IS NULL OR balance + reserved_credit <= upper_limit",
            name="within_upper_limit",
        ),
        CheckConstraint(
            f"balance >= {-MAX_BALANCE} AND balance + reserved_credit <= {MAX_BALANCE}",
            name="balance_bounded",
        ),
        CheckConstraint(
            "given >= 0 AND received >= 0 AND exchange_count >= 0 AND partner_count >= 0",
            name="figures_nonnegative",
        ),
    )

    community_id: Mapped[str] = mapped_column(SLUG, ForeignKey("communities.id"), primary_key=True)
    """The community the account belongs to."""
    id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The member's id, or `@name` for a system account."""
    kind: Mapped[str] = mapped_column(String(16))
    """`member` or `system`."""
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    """Sum of the account's entries, minor units; positive = has given more than received."""
    lower_limit: Mapped[int] = mapped_column(BigInteger)
    """The lowest balance allowed (<= 0, minor units)."""
    upper_limit: Mapped[int | None] = mapped_column(BigInteger)
    """The highest balance allowed (>= 0, minor units); null = no cap."""
    reserved_debit: Mapped[int] = mapped_column(BigInteger, default=0)
    """What pending exchanges will take from the balance (>= 0)."""
    reserved_credit: Mapped[int] = mapped_column(BigInteger, default=0)
    """What pending exchanges will add to the balance (>= 0)."""
    given: Mapped[int] = mapped_column(Figure(), default=0, server_default="0")
    """Mutuality figure: sum of amounts of counted exchanges this account provided (reversed
    exchanges and reversals are not counted)."""
    received: Mapped[int] = mapped_column(Figure(), default=0, server_default="0")
    """Mutuality figure: sum of amounts of counted exchanges this account received."""
    exchange_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Mutuality figure: counted exchanges this account took part in."""
    partner_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Mutuality figure: distinct counterparties over counted exchanges."""
    last_exchange_at: Mapped[datetime | None]
    """When the account last took part in a completed exchange (for dormancy)."""
    created_at: Mapped[datetime]
    """When the account was opened (UTC)."""


class Member(Base):
    """A person or organization taking part in one community."""

    __tablename__ = "members"
    __table_args__ = (
        ForeignKeyConstraint(["community_id", "id"], ["accounts.community_id", "accounts.id"]),
        CheckConstraint("kind IN ('person', 'organization')", name="kind_known"),
        CheckConstraint("status IN ('active', 'suspended', 'closed')", name="status_known"),
    )

    community_id: Mapped[str] = mapped_column(SLUG, ForeignKey("communities.id"), primary_key=True)
    """The member's community."""
    id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """Slug unique in the community; also the id of the member's account."""
    name: Mapped[str] = mapped_column(String(200))
    """Display name."""
    kind: Mapped[str] = mapped_column(String(16))
    """`person` or `organization`."""
    status: Mapped[str] = mapped_column(String(16), default="active")
    """`active`, `suspended` (no new exchanges) or `closed` (balance 0, for good)."""
    created_at: Mapped[datetime]
    """When the member joined (UTC)."""
    updated_at: Mapped[datetime]
    """When the member was last changed (UTC)."""


class PairFlow(Base):
    """What two accounts gave each other over counted exchanges, kept up to date by posting so
    the mutuality report never scans the whole history. `a` < `b`."""

    __tablename__ = "pair_flows"
    __table_args__ = (
        ForeignKeyConstraint(["community_id", "a"], ["accounts.community_id", "accounts.id"]),
        ForeignKeyConstraint(["community_id", "b"], ["accounts.community_id", "accounts.id"]),
        CheckConstraint("a < b", name="ordered"),
        CheckConstraint(
            "a_to_b >= 0 AND b_to_a >= 0 AND exchanges >= 0", name="figures_nonnegative"
        ),
        # PostgreSQL only: SQLite cannot subtract figures past 64 bits exactly (the full audit
        # checks the pair flows against the exchanges on both).
        CheckConstraint(
            "imbalance = a_to_b - b_to_a OR imbalance = b_to_a - a_to_b", name="imbalance_is_net"
        ).ddl_if(dialect="postgresql"),
        Index(None, "community_id", "imbalance"),
        Index(None, "community_id", "b"),
    )

    community_id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The community of both accounts."""
    a: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The account whose id sorts first."""
    b: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The account whose id sorts second."""
    a_to_b: Mapped[int] = mapped_column(Figure())
    """Amounts `a` provided to `b` (minor units)."""
    b_to_a: Mapped[int] = mapped_column(Figure())
    """Amounts `b` provided to `a` (minor units)."""
    exchanges: Mapped[int] = mapped_column(BigInteger)
    """Counted exchanges between them; 0 means they are no longer partners."""
    imbalance: Mapped[int] = mapped_column(Figure())
    """|a_to_b - b_to_a|, indexed so the most imbalanced pairs are one index scan away."""


class ApiKey(Base):
    """A bearer token's record: only the SHA-256 of the token is kept."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'treasurer', 'app', 'auditor')", name="role_known"),
        CheckConstraint("(role = 'admin') = (community_id IS NULL)", name="only_admin_is_global"),
    )

    id: Mapped[str] = mapped_column(KEY_ID, primary_key=True)
    """Public identifier of the key (safe to show and log)."""
    token_hash: Mapped[str] = mapped_column(HASH, unique=True)
    """Hex SHA-256 of the bearer token."""
    prefix: Mapped[str] = mapped_column(String(16))
    """The token's first characters, to recognise it in listings."""
    role: Mapped[str] = mapped_column(String(16))
    """`admin`, `treasurer`, `app` or `auditor`."""
    community_id: Mapped[str | None] = mapped_column(SLUG, ForeignKey("communities.id"))
    """The one community the key may see; null for admin keys."""
    label: Mapped[str | None] = mapped_column(String(200))
    """Free text saying who or what holds the key."""
    created_at: Mapped[datetime]
    """When the key was made (UTC)."""
    created_by: Mapped[str | None] = mapped_column(KEY_ID)
    """Id of the key that made it; null when made from the command line."""
    revoked_at: Mapped[datetime | None]
    """When the key was revoked; a revoked key authenticates nothing."""


class Exchange(Base):
    """A completed exchange: `provider` gave `amount` worth to `receiver`. Append-only."""

    __tablename__ = "exchanges"
    __table_args__ = (
        UniqueConstraint("community_id", "seq"),
        UniqueConstraint("community_id", "external_id"),
        UniqueConstraint("community_id", "reverses"),
        Index(None, "community_id", "intertrade_id", unique=True),
        ForeignKeyConstraint(
            ["community_id", "provider"], ["accounts.community_id", "accounts.id"]
        ),
        ForeignKeyConstraint(
            ["community_id", "receiver"], ["accounts.community_id", "accounts.id"]
        ),
        ForeignKeyConstraint(
            ["community_id", "reverses"], ["exchanges.community_id", "exchanges.id"]
        ),
        CheckConstraint("seq > 0", name="seq_positive"),
        CheckConstraint(f"amount > 0 AND amount <= {MAX_AMOUNT}", name="amount_range"),
        CheckConstraint("provider <> receiver", name="distinct_parties"),
        CheckConstraint("length(description) >= 1", name="description_nonempty"),
        CheckConstraint(
            "(levy_amount IS NULL) = (levy_paid_by IS NULL) AND "
            "(levy_amount IS NULL OR levy_amount > 0)",
            name="levy_consistent",
        ),
        Index(None, "community_id", "created_at"),
    )

    community_id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The community whose ledger records the exchange."""
    id: Mapped[str] = mapped_column(EXCHANGE_ID, primary_key=True)
    """UUID of the exchange."""
    seq: Mapped[int] = mapped_column(BigInteger)
    """Position in the community's ledger: 1, 2, 3... gap-free, in commit order."""
    provider: Mapped[str] = mapped_column(SLUG)
    """Account that gave the service or resource; its entry is +amount."""
    receiver: Mapped[str] = mapped_column(SLUG)
    """Account that received it; its entry is -amount."""
    amount: Mapped[int] = mapped_column(BigInteger)
    """Value exchanged, minor units, 1..10^15."""
    description: Mapped[str] = mapped_column(String(500))
    """What was exchanged (for a reversal: the reason)."""
    category: Mapped[str | None] = mapped_column(String(100))
    """Optional free classification (e.g. `gardening`)."""
    external_id: Mapped[str | None] = mapped_column(String(200))
    """The posting app's own id; unique in the community, a permanent guard against doubles."""
    occurred_at: Mapped[datetime | None]
    """When the exchange happened, as the app says (UTC)."""
    created_at: Mapped[datetime]
    """When it was recorded (UTC, microseconds); never earlier than the previous exchange's."""
    reverses: Mapped[str | None] = mapped_column(EXCHANGE_ID)
    """Id of the exchange this one reverses; an exchange is reversed at most once."""
    intertrade_id: Mapped[str | None] = mapped_column(EXCHANGE_ID)
    """The intertrade this exchange is one side of (`intertrades.id`); hashed when set."""
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONDocument)
    """The app's JSON object (<= 4 KiB), stored as given, not hashed."""
    levy_amount: Mapped[int | None] = mapped_column(BigInteger)
    """The levy paid into @commons with this exchange (minor units; its entry is hashed)."""
    levy_paid_by: Mapped[str | None] = mapped_column(String(16))
    """`provider` or `receiver`: who paid the levy."""
    created_by: Mapped[str | None] = mapped_column(KEY_ID, ForeignKey("api_keys.id"))
    """Id of the API key that posted it."""
    prev_hash: Mapped[str] = mapped_column(HASH)
    """`hash` of the previous exchange in the community (64 zeros for seq 1)."""
    hash: Mapped[str] = mapped_column(HASH)
    """sha256_hex(prev_hash + canonical bytes of this exchange and its entries)."""


class Entry(Base):
    """One posting of an exchange to one account. Append-only."""

    __tablename__ = "entries"
    __table_args__ = (
        UniqueConstraint("community_id", "account_id", "seq"),
        ForeignKeyConstraint(
            ["community_id", "exchange_id"], ["exchanges.community_id", "exchanges.id"]
        ),
        ForeignKeyConstraint(
            ["community_id", "account_id"], ["accounts.community_id", "accounts.id"]
        ),
        CheckConstraint("amount <> 0", name="amount_nonzero"),
    )

    community_id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The community of the exchange."""
    exchange_id: Mapped[str] = mapped_column(EXCHANGE_ID, primary_key=True)
    """The exchange the entry belongs to."""
    account_id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The account posted to."""
    seq: Mapped[int] = mapped_column(BigInteger)
    """The exchange's `seq` (copied here so balances as of any seq are one index probe)."""
    amount: Mapped[int] = mapped_column(BigInteger)
    """Signed change to the account, minor units: +amount for the provider, -amount for the
    receiver."""
    balance_after: Mapped[int] = mapped_column(BigInteger)
    """The account's balance right after this entry, in commit order."""


class IdempotencyRecord(Base):
    """The stored first response to a POST made with an `Idempotency-Key`.

    Written in the same transaction as the change it answers for, so neither exists without the
    other. `community_id` is '' for requests outside any community (e.g. creating admin keys).
    """

    __tablename__ = "idempotency_records"
    __table_args__ = (Index(None, "created_at"),)

    community_id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The community the request was about ('' for global requests)."""
    api_key_id: Mapped[str] = mapped_column(KEY_ID, ForeignKey("api_keys.id"), primary_key=True)
    """Keys are scoped to the API key that sent them."""
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    """The client's `Idempotency-Key` header."""
    request_hash: Mapped[str] = mapped_column(HASH)
    """SHA-256 of method, path and canonical JSON body: a reused key must carry the same body."""
    status_code: Mapped[int] = mapped_column(Integer)
    """HTTP status of the first response."""
    content_type: Mapped[str] = mapped_column(String(100))
    """Content type of the first response."""
    response_body: Mapped[str] = mapped_column(Text)
    """Body of the first response, replayed byte for byte."""
    created_at: Mapped[datetime]
    """When the first response was given; records live at least 24 h."""


class AuditCheckpoint(Base):
    """How far a community's ledger has been fully verified: every exchange up to `seq` was
    re-hashed and checked, and `hash` is the chain's hash at `seq`. Later checks start here."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (CheckConstraint("seq >= 0", name="seq_nonnegative"),)

    community_id: Mapped[str] = mapped_column(
        SLUG, ForeignKey("ledger_heads.community_id"), primary_key=True
    )
    """The community whose ledger was verified."""
    seq: Mapped[int] = mapped_column(BigInteger)
    """The last exchange the full audit verified."""
    hash: Mapped[str] = mapped_column(HASH)
    """The chain's hash at `seq` (64 zeros for 0)."""
    checked_at: Mapped[datetime]
    """When the full audit ran (UTC)."""


class PendingExchange(Base):
    """A proposed exchange waiting for the other side: it reserves its amount (the receiver's
    `reserved_debit`, the provider's `reserved_credit`) until it is accepted, rejected, cancelled
    or expires. Accepting records an exchange with the same id in the ledger."""

    __tablename__ = "pending_exchanges"
    __table_args__ = (
        UniqueConstraint("community_id", "external_id"),
        ForeignKeyConstraint(
            ["community_id", "provider"], ["accounts.community_id", "accounts.id"]
        ),
        ForeignKeyConstraint(
            ["community_id", "receiver"], ["accounts.community_id", "accounts.id"]
        ),
        CheckConstraint(f"amount > 0 AND amount <= {MAX_AMOUNT}", name="amount_range"),
        CheckConstraint("provider <> receiver", name="distinct_parties"),
        CheckConstraint("length(description) >= 1", name="description_nonempty"),
        CheckConstraint("initiated_by IN ('provider', 'receiver')", name="initiator_known"),
        CheckConstraint(
            "status IN ('pending', 'completed', 'rejected', 'cancelled', 'expired')",
            name="status_known",
        ),
        CheckConstraint(
            "(levy_amount IS NULL) = (levy_paid_by IS NULL) AND "
            "(levy_amount IS NULL OR levy_amount > 0)",
            name="levy_consistent",
        ),
        CheckConstraint("expires_at > created_at", name="expires_after_creation"),
        Index(None, "community_id", "status", "expires_at"),
    )

    community_id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The community of the proposal."""
    id: Mapped[str] = mapped_column(EXCHANGE_ID, primary_key=True)
    """UUID; the completed exchange gets the same id."""
    provider: Mapped[str] = mapped_column(SLUG)
    """Account that will give; reserved credit until settled."""
    receiver: Mapped[str] = mapped_column(SLUG)
    """Account that will receive; reserved debit until settled."""
    amount: Mapped[int] = mapped_column(BigInteger)
    """Value, minor units, 1..10^15."""
    description: Mapped[str] = mapped_column(String(500))
    category: Mapped[str | None] = mapped_column(String(100))
    external_id: Mapped[str | None] = mapped_column(String(200))
    """The app's own id; unique in the community across proposals and exchanges."""
    occurred_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONDocument)
    levy_amount: Mapped[int | None] = mapped_column(BigInteger)
    """The levy fixed when proposed (and reserved with the amount)."""
    levy_paid_by: Mapped[str | None] = mapped_column(String(16))
    initiated_by: Mapped[str] = mapped_column(String(16))
    """`provider` or `receiver`: who proposed (and may cancel); the other side accepts or
    rejects."""
    status: Mapped[str] = mapped_column(String(16))
    """`pending`, then `completed`, `rejected`, `cancelled` or `expired`."""
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    """When the reservation lapses if nobody settled it."""
    resolved_at: Mapped[datetime | None]
    """When it left `pending`."""
    created_by: Mapped[str | None] = mapped_column(KEY_ID, ForeignKey("api_keys.id"))


class Event(Base):
    """The outbox: one row per state change, written in the same transaction as the change.
    Ids count up per community in commit order, so a reader that remembers the last id it saw
    misses nothing and sees nothing twice."""

    __tablename__ = "events"

    community_id: Mapped[str] = mapped_column(
        SLUG, ForeignKey("ledger_heads.community_id"), primary_key=True
    )
    """The community the event belongs to."""
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """1, 2, 3... per community, in commit order."""
    type: Mapped[str] = mapped_column(String(40))
    """e.g. `exchange.completed`, `member.updated`."""
    created_at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    """The resource as it was right after the change."""


INSTANCE_SCOPE = ""
"""The `audit_log.community_id` of changes that belong to no community (admin keys)."""


class AuditLogEntry(Base):
    """One change that is not an exchange — communities, members, limits, status, API keys,
    reversals — with who made it and the values before and after. Written in the same transaction
    as the change; append-only (triggers refuse UPDATE and DELETE on both databases)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint("id > 0", name="id_positive"),
        CheckConstraint('"before" IS NOT NULL OR "after" IS NOT NULL', name="says_what_changed"),
        Index(None, "community_id", "action", "id"),
        Index(None, "community_id", "target", "id"),
    )

    community_id: Mapped[str] = mapped_column(SLUG, primary_key=True)
    """The community the change belongs to; '' for instance-wide changes (admin keys)."""
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """1, 2, 3... per community (and for the instance), gap-free, in commit order."""
    at: Mapped[datetime]
    """When the change was made (UTC)."""
    actor_key_id: Mapped[str | None] = mapped_column(KEY_ID, ForeignKey("api_keys.id"))
    """Id of the API key that made the change; null when made from the command line."""
    action: Mapped[str] = mapped_column(String(40))
    """What was done, `<resource>.<verb>`: e.g. `member.updated`, `api_key.revoked`."""
    target: Mapped[str] = mapped_column(String(100))
    """Id of the resource changed: a community, member, API key or (reversed) exchange."""
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    """The changed fields as they were; null for a creation."""
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    """The changed fields as they became (for a creation, the whole new resource)."""


class Link(Base):
    """A trading link between two communities: `rate_a` minor units of `a`'s unit are worth
    `rate_b` of `b`'s, and each community's clearing account for the link (`@link:<other>`) may
    go down to minus its cap. A global table: a link spans two communities (design §7)."""

    __tablename__ = "links"
    __table_args__ = (
        CheckConstraint("a <> b", name="distinct_communities"),
        CheckConstraint(
            "low < high AND ((a = low AND b = high) OR (a = high AND b = low))",
            name="pair_is_a_and_b",
        ),
        UniqueConstraint("low", "high"),
        CheckConstraint(
            f"rate_a > 0 AND rate_a <= {MAX_AMOUNT} AND rate_b > 0 AND rate_b <= {MAX_AMOUNT}",
            name="rate_range",
        ),
        CheckConstraint(
            f"a_cap >= 0 AND a_cap <= {MAX_BALANCE} AND b_cap >= 0 AND b_cap <= {MAX_BALANCE}",
            name="caps_range",
        ),
        CheckConstraint("status IN ('active', 'suspended', 'closed')", name="status_known"),
    )

    id: Mapped[str] = mapped_column(EXCHANGE_ID, primary_key=True)
    """UUID of the link."""
    a: Mapped[str] = mapped_column(SLUG, ForeignKey("communities.id"))
    b: Mapped[str] = mapped_column(SLUG, ForeignKey("communities.id"))
    low: Mapped[str] = mapped_column(SLUG)
    """The smaller of `a` and `b`: with `high`, one link per pair whichever way it was named."""
    high: Mapped[str] = mapped_column(SLUG)
    rate_a: Mapped[int] = mapped_column(BigInteger)
    rate_b: Mapped[int] = mapped_column(BigInteger)
    a_cap: Mapped[int] = mapped_column(BigInteger)
    """How far `a`'s clearing account may go below zero: `a`'s net exports to `b`."""
    b_cap: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="active")
    """`active`; `suspended` (no new intertrades, history kept); `closed` (deleted with history)."""
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Intertrade(Base):
    """One exchange across a link, recorded as one exchange in each community in one
    transaction. Append-only: a reversal is a new intertrade naming the one it `reverses`."""

    __tablename__ = "intertrades"
    __table_args__ = (
        UniqueConstraint("reverses"),
        ForeignKeyConstraint(
            ["provider_community", "provider_exchange_id"],
            ["exchanges.community_id", "exchanges.id"],
        ),
        ForeignKeyConstraint(
            ["receiver_community", "receiver_exchange_id"],
            ["exchanges.community_id", "exchanges.id"],
        ),
        CheckConstraint("provider_community <> receiver_community", name="two_communities"),
        CheckConstraint(
            f"provider_amount > 0 AND provider_amount <= {MAX_AMOUNT} AND "
            f"receiver_amount > 0 AND receiver_amount <= {MAX_AMOUNT}",
            name="amounts_range",
        ),
        CheckConstraint("rate_a > 0 AND rate_b > 0", name="rate_positive"),
        CheckConstraint("amount_in IN ('provider', 'receiver')", name="amount_in_known"),
        Index(None, "link_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(EXCHANGE_ID, primary_key=True)
    link_id: Mapped[str] = mapped_column(EXCHANGE_ID, ForeignKey("links.id"))
    provider_community: Mapped[str] = mapped_column(SLUG, ForeignKey("communities.id"))
    provider: Mapped[str] = mapped_column(SLUG)
    """The member who gave, in the provider's community (+provider_amount)."""
    provider_amount: Mapped[int] = mapped_column(BigInteger)
    provider_exchange_id: Mapped[str] = mapped_column(EXCHANGE_ID)
    receiver_community: Mapped[str] = mapped_column(SLUG, ForeignKey("communities.id"))
    receiver: Mapped[str] = mapped_column(SLUG)
    """The member who received, in the receiver's community (-receiver_amount)."""
    receiver_amount: Mapped[int] = mapped_column(BigInteger)
    receiver_exchange_id: Mapped[str] = mapped_column(EXCHANGE_ID)
    amount_in: Mapped[str] = mapped_column(String(16))
    """Which side's amount the request gave; the other was converted (round half to even)."""
    rate_a: Mapped[int] = mapped_column(BigInteger)
    """The link's rate when this was recorded (a later rate applies to later intertrades)."""
    rate_b: Mapped[int] = mapped_column(BigInteger)
    reverses: Mapped[str | None] = mapped_column(EXCHANGE_ID, ForeignKey("intertrades.id"))
    description: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[str | None] = mapped_column(KEY_ID, ForeignKey("api_keys.id"))
    created_at: Mapped[datetime]
