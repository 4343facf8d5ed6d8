"""A stateful property test: random exchanges, batches, reversals, limit and status changes go
through the API, and an in-memory model predicts every answer. After every step every balance
must equal the model's, sum to zero and lie within its limits, and `seq` must be gap-free; the
audit must pass every few steps and at the end, where the whole chain is also recomputed.

Each example runs on a fresh database: the test installs a factory (`FRESH_LEDGER`) that the
machine calls in `__init__`, then runs the machine with `run_state_machine_as_test`.
"""

from __future__ import annotations

import functools
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from protocoop.app import create_app
from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database
from tests.support.api import Api, create_community, create_member, make_key
from tests.support.databases import truncate_postgres
from tests.support.ledger import BATCH, EXCHANGES, GENESIS, C, all_exchanges, recompute_hash

MEMBERS = ("ann", "ben", "cat", "dev")
ACCOUNTS = (*MEMBERS, "@commons")
DEFAULT_LOWER = -100
AUDIT_EVERY = 10


@dataclass
class FreshLedger:
    """An API (as admin) over a new, empty, migrated database, and how to let it go."""

    api: Api
    close: Callable[[], None]


FRESH_LEDGER: Callable[[], FreshLedger] | None = None
"""Set by the test before running the machine: makes one fresh ledger per example."""


def serve(database_url: str, on_close: Callable[[], None] = lambda: None) -> FreshLedger:
    """An app and client over `database_url`, with a community of MEMBERS. (SQLite runs with
    `synchronous=NORMAL` here: this test is about bookkeeping, not surviving power cuts.)"""
    config = Settings(  # type: ignore[call-arg]
        database_url=database_url, auto_migrate=False, sqlite_synchronous="NORMAL", _env_file=None
    )
    db = Database(config, pooled=False)
    try:
        admin = make_key(db, Role.ADMIN)
    finally:
        db.dispose()
    client = TestClient(create_app(config), raise_server_exceptions=False)
    client.__enter__()
    api = Api(client, admin)
    create_community(api, "riverside", default_lower_limit=DEFAULT_LOWER)
    for member in MEMBERS:
        create_member(api, "riverside", member)

    def close() -> None:
        client.__exit__(None, None, None)
        on_close()

    return FreshLedger(api, close)


@dataclass
class Recorded:
    """The model of one recorded exchange."""

    id: str
    provider: str
    receiver: str
    amount: int
    reverses: str | None = None
    reversed_by: str | None = None


@dataclass
class Refusal:
    """A predicted refusal; `members` holds every account the problem may name (when two
    accounts fail the same check, which one the ledger names is its own business)."""

    status: int
    code: str
    members: frozenset[str] = frozenset()
    index: int | None = None


@dataclass
class Model:
    """What the ledger should hold."""

    balances: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCOUNTS, 0))
    lower: dict[str, int] = field(
        default_factory=lambda: {**dict.fromkeys(MEMBERS, DEFAULT_LOWER), "@commons": 0}
    )
    upper: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(ACCOUNTS))
    status: dict[str, str] = field(default_factory=lambda: dict.fromkeys(MEMBERS, "active"))
    exchanges: list[Recorded] = field(default_factory=list)

    def refusal(self, postings: list[tuple[str, int]], pending: dict[str, int]) -> Refusal | None:
        """The limit refusal for `postings` on top of `pending`, if any posting breaks a limit."""
        breaking = set()
        for account, amount in postings:
            after = self.balances[account] + pending.get(account, 0) + amount
            upper = self.upper[account]
            if (amount < 0 and after < self.lower[account]) or (
                amount > 0 and upper is not None and after > upper
            ):
                breaking.add(account)
        return Refusal(409, "limit_exceeded", frozenset(breaking)) if breaking else None

    def check_exchange(
        self, provider: str, receiver: str, amount: int, pending: dict[str, int]
    ) -> Refusal | None:
        if provider == receiver:
            return Refusal(422, "same_member")
        inactive = {a for a in (receiver, provider) if self.status.get(a, "active") != "active"}
        if inactive:
            return Refusal(409, "member_inactive", frozenset(inactive))
        return self.refusal([(receiver, -amount), (provider, amount)], pending)

    def apply(self, postings: list[tuple[str, int]]) -> None:
        for account, amount in postings:
            self.balances[account] += amount


accounts = st.sampled_from(ACCOUNTS)
amounts = st.integers(min_value=1, max_value=120)
two_accounts = st.permutations(ACCOUNTS).map(lambda order: (order[0], order[1]))


@st.composite
def batch_items(draw: st.DrawFn) -> tuple[str, str, int]:
    """Mostly a small exchange between two accounts; sometimes one that is likely refused."""
    kind = draw(st.sampled_from(["small"] * 8 + ["large", "same"]))
    provider, receiver = draw(two_accounts)
    if kind == "same":
        receiver = provider
    amount = draw(amounts if kind == "large" else st.integers(min_value=1, max_value=40))
    return provider, receiver, amount


def step(method: Callable[..., None]) -> Callable[..., None]:
    """Mark the machine broken when a step fails, so that teardown only closes the ledger and the
    step's own failure is the one reported."""

    @functools.wraps(method)
    def guarded(self: LedgerMachine, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except BaseException:
            self.broken = True
            raise

    return guarded


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert FRESH_LEDGER is not None, "the test sets FRESH_LEDGER before running the machine"
        self.ledger = FRESH_LEDGER()
        self.api = self.ledger.api
        self.model = Model()
        self.steps = 0
        self.broken = False

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.check_whole_history()
        finally:
            self.ledger.close()

    # --- rules -------------------------------------------------------------------------------

    @rule(provider=accounts, receiver=accounts, amount=amounts, keyed=st.booleans())
    @step
    def post_exchange(self, provider: str, receiver: str, amount: int, keyed: bool) -> None:
        body = {"provider": provider, "receiver": receiver, "amount": amount, "description": "x"}
        headers = {"Idempotency-Key": str(uuid.uuid4())} if keyed else {}
        response = self.api.post(EXCHANGES, json=body, headers=headers)
        if keyed:  # a retry is answered the same, byte for byte, and records nothing more
            retry = self.api.post(EXCHANGES, json=body, headers=headers)
            assert (retry.status_code, retry.content) == (response.status_code, response.content)

        expected = self.model.check_exchange(provider, receiver, amount, {})
        if expected is not None:
            self.assert_refused(response, expected)
            return
        assert response.status_code == 201, response.text
        self.record(response.json())

    @rule(batch=st.lists(batch_items(), min_size=1, max_size=6))
    @step
    def post_batch(self, batch: list[tuple[str, str, int]]) -> None:
        body = [
            {"provider": p, "receiver": r, "amount": a, "description": "b"} for p, r, a in batch
        ]
        response = self.api.post(BATCH, json={"exchanges": body})

        pending: dict[str, int] = {}
        for index, (provider, receiver, amount) in enumerate(batch):
            expected = self.model.check_exchange(provider, receiver, amount, pending)
            if expected is not None:
                expected.index = index
                self.assert_refused(response, expected)
                return
            for account, change in ((receiver, -amount), (provider, amount)):
                pending[account] = pending.get(account, 0) + change
        assert response.status_code == 201, response.text
        for document in response.json()["exchanges"]:
            self.record(document)

    @precondition(lambda self: bool(self.model.exchanges))
    @rule(pick=st.integers(min_value=0, max_value=10**6), any_exchange=st.integers(0, 3))
    @step
    def reverse(self, pick: int, any_exchange: int) -> None:
        """Reverse an exchange not yet reversed, or (one time in four) any exchange."""
        candidates = [x for x in self.model.exchanges if x.reversed_by is None]
        if any_exchange == 0 or not candidates:
            candidates = self.model.exchanges
        original = candidates[pick % len(candidates)]
        response = self.api.post(f"{EXCHANGES}/{original.id}/reverse", json={"reason": "undo"})

        if original.reversed_by is not None:
            self.assert_refused(response, Refusal(409, "invalid_state"))
            return
        postings = [(original.receiver, original.amount), (original.provider, -original.amount)]
        expected = self.model.refusal(postings, {})
        if expected is not None:
            self.assert_refused(response, expected)
            return
        assert response.status_code == 201, response.text
        document = response.json()
        assert (document["provider"], document["receiver"]) == (
            original.receiver,
            original.provider,
        )
        assert document["reverses"] == original.id
        original.reversed_by = document["id"]
        self.record(document)

    @rule(
        member=st.sampled_from(MEMBERS),
        lower=st.integers(min_value=-150, max_value=0),
        upper=st.none() | st.integers(min_value=0, max_value=150),
    )
    @step
    def set_limits(self, member: str, lower: int, upper: int | None) -> None:
        response = self.api.patch(
            f"{C}/members/{member}", json={"lower_limit": lower, "upper_limit": upper}
        )
        balance = self.model.balances[member]
        if balance < lower or (upper is not None and balance > upper):
            self.assert_refused(response, Refusal(409, "limit_below_balance", frozenset({member})))
            return
        assert response.status_code == 200, response.text
        self.model.lower[member], self.model.upper[member] = lower, upper

    @rule(member=st.sampled_from(MEMBERS), status=st.sampled_from(["active", "suspended"]))
    @step
    def set_status(self, member: str, status: str) -> None:
        response = self.api.patch(f"{C}/members/{member}", json={"status": status})
        assert response.status_code == 200, response.text
        self.model.status[member] = status

    # --- checks ------------------------------------------------------------------------------

    def record(self, document: dict[str, Any]) -> None:
        event("recorded a reversal" if document["reverses"] else "recorded an exchange")
        assert document["seq"] == len(self.model.exchanges) + 1
        self.model.exchanges.append(
            Recorded(
                id=document["id"],
                provider=document["provider"],
                receiver=document["receiver"],
                amount=document["amount"],
                reverses=document["reverses"],
            )
        )
        postings = [
            (document["receiver"], -document["amount"]),
            (document["provider"], document["amount"]),
        ]
        self.model.apply(postings)
        entries = {e["account"]: (e["amount"], e["balance_after"]) for e in document["entries"]}
        assert entries == {
            account: (change, self.model.balances[account]) for account, change in postings
        }

    def assert_refused(self, response: Any, expected: Refusal) -> None:
        event(f"refused: {expected.code}{' in a batch' if expected.index is not None else ''}")
        assert response.status_code == expected.status, response.text
        body = response.json()
        assert body["code"] == expected.code, body
        if expected.members:
            assert body["member"] in expected.members, body
        if expected.index is not None:
            assert body["index"] == expected.index, body

    @invariant()
    @step
    def balances_match_the_model_sum_to_zero_and_stay_within_limits(self) -> None:
        page = self.api.get(f"{C}/balances", params={"limit": 1000}).json()
        assert page["as_of_seq"] == len(self.model.exchanges)  # seq is gap-free
        assert page["sum"] == 0
        listed = {item["account"]: item for item in page["items"]}
        assert {a: item["balance"] for a, item in listed.items()} == self.model.balances
        assert sum(self.model.balances.values()) == 0
        for account, item in listed.items():
            assert (item["lower_limit"], item["upper_limit"]) == (
                self.model.lower[account],
                self.model.upper[account],
            )
            assert item["lower_limit"] <= item["balance"]
            assert item["upper_limit"] is None or item["balance"] <= item["upper_limit"]

    @invariant()
    @step
    def audit_passes(self) -> None:
        self.steps += 1
        if self.steps % AUDIT_EVERY == 0:
            self.assert_audit_ok()

    def assert_audit_ok(self) -> None:
        report = self.api.get(f"{C}/audit").json()
        assert report["ok"] is True, report["problems"]
        assert report["checked_exchanges"] == len(self.model.exchanges)

    def check_whole_history(self) -> None:
        self.assert_audit_ok()
        documents = all_exchanges(self.api)
        assert [d["seq"] for d in documents] == list(range(1, len(self.model.exchanges) + 1))
        assert [
            (d["id"], d["provider"], d["receiver"], d["amount"], d["reverses"], d["reversed_by"])
            for d in documents
        ] == [
            (x.id, x.provider, x.receiver, x.amount, x.reverses, x.reversed_by)
            for x in self.model.exchanges
        ]
        prev_hash = GENESIS
        for document in documents:
            assert document["prev_hash"] == prev_hash
            assert recompute_hash(prev_hash, document) == document["hash"]
            prev_hash = document["hash"]


@pytest.fixture
def fresh_ledgers(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Install FRESH_LEDGER for the test's backend: a copy of the migrated SQLite template, or
    the session's PostgreSQL database emptied."""
    global FRESH_LEDGER
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")

        def fresh() -> FreshLedger:
            path = tmp_path / f"{uuid.uuid4().hex}.db"
            shutil.copyfile(template, path)

            def remove() -> None:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)

            return serve(f"sqlite:///{path}", remove)

    else:
        url: str = request.getfixturevalue("postgres_url")

        def fresh() -> FreshLedger:
            truncate_postgres(url)
            return serve(url)

    FRESH_LEDGER = fresh
    try:
        yield
    finally:
        FRESH_LEDGER = None


EXAMPLES = {"sqlite": 25, "postgresql": 8}
"""Examples per backend: PostgreSQL commits cost more, so it runs fewer to keep the suite quick."""


def test_ledger_behaves_like_its_model_under_random_operations(
    backend: str, fresh_ledgers: None
) -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=EXAMPLES[backend],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
