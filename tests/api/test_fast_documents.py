"""The fast paths that build JSON by hand must say exactly what the schemas say."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from protocoop.ledger.chain import ChainedExchange, ChainEntry, canonical_bytes
from protocoop.ledger.queries import document, public
from protocoop.ledger.records import PostedExchange

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
amounts = st.integers(-(10**18), 10**18)


@settings(max_examples=300, deadline=None)
@given(
    description=text,
    category=st.none() | text,
    created_at=moments,
    seq=st.none() | st.integers(1, 2**62),
    entries=st.lists(st.tuples(text, amounts, amounts), max_size=3),
    levy=st.none() | st.integers(1, 10**15),
    pending=st.booleans(),
    metadata=st.none() | st.dictionaries(text, st.integers() | text | st.booleans(), max_size=3),
)
def test_exchange_document_built_by_hand_equals_the_schema_rendering(
    description: str,
    category: str | None,
    created_at: datetime,
    seq: int | None,
    entries: list[tuple[str, int, int]],
    levy: int | None,
    pending: bool,
    metadata: dict[str, object] | None,
) -> None:
    posted = PostedExchange(
        community="riverside",
        id="3f0c2a9e-0000-4000-8000-000000000000",
        status="pending" if pending else "completed",
        provider="alice",
        receiver="bob",
        amount=7,
        description=description,
        category=category,
        external_id=None,
        occurred_at=created_at,
        created_at=created_at,
        metadata=metadata,
        levy_amount=levy,
        levy_paid_by="provider" if levy else None,
        seq=seq,
        entries=tuple(ChainEntry(*entry) for entry in entries),
        prev_hash=None if pending else "0" * 64,
        hash=None if pending else "f" * 64,
        initiated_by="receiver" if pending else None,
        expires_at=created_at + timedelta(days=1) if pending and created_at.year < 9999 else None,
    )
    assert document(posted) == public(posted).model_dump(mode="json")


@settings(max_examples=500, deadline=None)
@given(
    community=text,
    description=text,
    category=st.none() | text,
    created_at=moments,
    entries=st.lists(st.tuples(text, amounts, amounts), max_size=3),
)
def test_canonical_bytes_are_what_the_readme_recipe_computes(
    community: str,
    description: str,
    category: str | None,
    created_at: datetime,
    entries: list[tuple[str, int, int]],
) -> None:
    exchange = ChainedExchange(
        community=community,
        seq=1,
        id="x",
        provider="alice",
        receiver="bob",
        amount=5,
        description=description,
        category=category,
        external_id=None,
        reverses=None,
        created_at=created_at,
        entries=tuple(ChainEntry(*entry) for entry in entries),
    )
    recipe = {
        "community": community,
        "seq": 1,
        "id": "x",
        "provider": "alice",
        "receiver": "bob",
        "amount": 5,
        "description": description,
        "category": category,
        "external_id": None,
        "reverses": None,
        "created_at": (
            f"{created_at.year:04d}-{created_at.month:02d}-{created_at.day:02d}T"
            f"{created_at.hour:02d}:{created_at.minute:02d}:{created_at.second:02d}."
            f"{created_at.microsecond:06d}Z"
        ),
        "entries": sorted(
            ({"account": a, "amount": m, "balance_after": b} for a, m, b in entries),
            key=lambda e: e["account"],
        ),
    }
    expected = json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_bytes(exchange) == expected.encode()
