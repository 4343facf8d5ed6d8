"""The hash chain (invariant 5): anyone can recompute it to prove no history was altered.

The canonical bytes of an exchange are the UTF-8 JSON, with sorted keys and no whitespace, of
`{community, seq, id, provider, receiver, amount, description, category, external_id, reverses,
created_at, entries}`, where `created_at` is RFC 3339 UTC with microseconds and a `Z`, and
`entries` is `[{account, amount, balance_after}]` sorted by account.
`hash = sha256_hex(prev_hash + canonical)`; the first exchange's `prev_hash` is 64 zeros.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson

from protocoop.clock import rfc3339

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One posting as recorded (every field of it is covered by the chain)."""

    account: str
    amount: int
    """Signed change, minor units."""
    balance_after: int
    """The account's balance right after this entry."""


@dataclass(frozen=True, slots=True)
class ChainedExchange:
    """The fields of an exchange the chain covers (metadata and occurred_at are not covered)."""

    community: str
    seq: int
    id: str
    provider: str
    receiver: str
    amount: int
    description: str
    category: str | None
    external_id: str | None
    reverses: str | None
    created_at: datetime
    entries: tuple[ChainEntry, ...]
    intertrade_id: str | None = None
    """Covered only when set: an exchange that is no intertrade hashes as it did before links."""


def canonical_bytes(exchange: ChainedExchange) -> bytes:
    """The exchange as the exact bytes that are hashed."""
    document = {
        "community": exchange.community,
        "seq": exchange.seq,
        "id": exchange.id,
        "provider": exchange.provider,
        "receiver": exchange.receiver,
        "amount": exchange.amount,
        "description": exchange.description,
        "category": exchange.category,
        "external_id": exchange.external_id,
        "reverses": exchange.reverses,
        "created_at": rfc3339(exchange.created_at),
        "entries": [
            {"account": e.account, "amount": e.amount, "balance_after": e.balance_after}
            for e in sorted(exchange.entries, key=lambda e: e.account)
        ],
    }
    if exchange.intertrade_id is not None:
        document["intertrade_id"] = exchange.intertrade_id
    # Byte for byte what json.dumps(document, sort_keys=True, separators=(",", ":"),
    # ensure_ascii=False).encode() gives (a test checks it), only faster.
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, exchange: ChainedExchange) -> str:
    """`sha256_hex(prev_hash + canonical bytes)`: the exchange's link in the chain."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_bytes(exchange)).hexdigest()


def verify_chain(
    links: Iterable[tuple[ChainedExchange, str, str]],
    *,
    start_seq: int = 0,
    start_hash: str = GENESIS_HASH,
) -> Iterator[tuple[int, str, str]]:
    """Walk `(exchange, prev_hash, hash)` in seq order, starting after `start_seq` whose hash is
    `start_hash`, and yield `(seq, code, detail)` for every link that does not hold: a gap in
    `seq`, a `prev_hash` that is not the previous exchange's hash, or a hash that does not match
    the exchange's contents."""
    expected_prev = start_hash
    expected_seq = start_seq + 1
    for exchange, prev_hash, stored_hash in links:
        if exchange.seq != expected_seq:
            yield exchange.seq, "seq_gap", f"seq {exchange.seq} found where {expected_seq} was due"
            expected_seq = exchange.seq
        if prev_hash != expected_prev:
            yield exchange.seq, "broken_link", "prev_hash is not the previous exchange's hash"
        if chain_hash(prev_hash, exchange) != stored_hash:
            yield exchange.seq, "hash_mismatch", "hash does not match the exchange's contents"
        expected_prev = stored_hash
        expected_seq += 1
