"""`protocoop.client` against a real `protocoop serve`, on SQLite and PostgreSQL: every method
an app, treasurer or auditor uses, pagination over several pages, the event consumer resuming
from a stored position, and the typed exception of each refusal.

One server per backend serves the whole module; each test makes its own community.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from protocoop.client import (
    AlreadyExists,
    AsyncClient,
    BalanceNotZero,
    Client,
    DuplicateExternalId,
    Forbidden,
    IdempotencyKeyReused,
    InvalidState,
    LimitBelowBalance,
    LimitExceeded,
    MemberInactive,
    NotFound,
    RetryPolicy,
    SameMember,
    Unauthorized,
    ValidationFailed,
)
from protocoop.keys.schemas import ApiKeyCreated
from tests.support.databases import BACKENDS
from tests.support.live_server import LiveServer, serving

UNIT = {"code": "HOUR", "name": "hour", "scale": 2}
MEMBERS = ["alice", "bob", "carol", "dave", "erin"]


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp(f"client-{request.param}")
    with serving(str(request.param), workdir, request) as live:
        yield live


@pytest.fixture
def admin(server: LiveServer) -> Iterator[Client]:
    with Client(server.base_url, server.admin_token) as client:
        yield client


class Community:
    """A fresh community with five members (limits -1000..1000) and a key of each role."""

    def __init__(self, server: LiveServer, admin: Client) -> None:
        self.id = f"coop-{secrets.token_hex(4)}"
        self.server = server
        admin.communities.create(
            self.id,
            name="Riverside",
            unit=UNIT,
            default_lower_limit=-1000,
            default_upper_limit=1000,
        )
        for member in MEMBERS:
            admin.members.create(self.id, member, name=member.title())
        self.tokens: dict[str, str] = {}
        for role in ("treasurer", "app", "auditor"):
            key = admin.keys.create(role=role, community=self.id)
            assert isinstance(key, ApiKeyCreated)
            self.tokens[role] = key.token

    def client(self, role: str) -> Client:
        return Client(self.server.base_url, self.tokens[role])


@pytest.fixture
def coop(server: LiveServer, admin: Client) -> Community:
    return Community(server, admin)


def test_communities_members_and_keys_round_trip(
    server: LiveServer, admin: Client, coop: Community
) -> None:
    assert admin.communities.get(coop.id).unit.scale == 2
    assert coop.id in {c.id for c in admin.communities.list(page_size=1)}
    renamed = admin.communities.update(coop.id, name="Riverside Timebank", default_upper_limit=None)
    assert (renamed.name, renamed.default_upper_limit) == ("Riverside Timebank", None)

    with coop.client("treasurer") as treasurer:
        # Five members, two to a page: the iterator follows the cursor over three pages.
        assert [m.id for m in treasurer.members.list(coop.id, page_size=2)] == sorted(MEMBERS)
        assert treasurer.members.get(coop.id, "alice").lower_limit == -1000
        changed = treasurer.members.update(coop.id, "alice", lower_limit=-500, upper_limit=None)
        assert (changed.lower_limit, changed.upper_limit) == (-500, None)
        suspended = treasurer.members.update(coop.id, "erin", status="suspended")
        assert suspended.status == "suspended"
        assert [m.id for m in treasurer.members.list(coop.id, status="suspended")] == ["erin"]

        key = treasurer.keys.create(role="app", community=coop.id, label="shop")
        assert isinstance(key, ApiKeyCreated)
        assert key.id in {k.id for k in treasurer.keys.list()}
        with Client(server.base_url, key.token) as shop:
            assert shop.balances.get(coop.id, "bob").balance == 0
            treasurer.keys.revoke(key.id)
            with pytest.raises(Unauthorized):
                shop.balances.get(coop.id, "bob")

        actions = {entry.action for entry in treasurer.audit_log.list(community=coop.id)}
        assert {"community.updated", "member.created", "member.updated"} <= actions
        revoked = treasurer.audit_log.list(community=coop.id, action="api_key.revoked")
        assert [entry.target for entry in revoked] == [key.id]
    # Keys that concern no community (admin keys) are in the instance's log.
    operator = admin.keys.create(role="admin", label="operator")
    assert operator.id in {entry.target for entry in admin.audit_log.list(action="api_key.created")}


def test_posting_reading_and_reporting(coop: Community) -> None:
    with coop.client("app") as app, coop.client("treasurer") as treasurer:
        first = app.exchanges.post(
            coop.id,
            provider="alice",
            receiver="bob",
            amount=150,
            description="Gardening",
            category="garden",
            external_id="job-1",
            metadata={"hours": 1.5},
            idempotency_key="garden-1",
        )
        assert [(e.account, e.amount) for e in first.entries] == [("bob", -150), ("alice", 150)]
        # The same call again (an app retrying by hand) is answered, not recorded twice.
        again = app.exchanges.post(
            coop.id,
            provider="alice",
            receiver="bob",
            amount=150,
            description="Gardening",
            category="garden",
            external_id="job-1",
            metadata={"hours": 1.5},
            idempotency_key="garden-1",
        )
        assert again.id == first.id
        batch = app.exchanges.batch(
            coop.id,
            [
                {"provider": "bob", "receiver": "carol", "amount": 40, "description": "Bread"},
                {"provider": "carol", "receiver": "dave", "amount": 25, "description": "Soup"},
                {"provider": "dave", "receiver": "alice", "amount": 10, "description": "Tea"},
            ],
        )
        assert [x.seq for x in batch.exchanges] == [2, 3, 4]

        reversal = treasurer.exchanges.reverse(coop.id, batch.exchanges[2].id, reason="Mistake")
        assert reversal.reverses == batch.exchanges[2].id
        assert app.exchanges.get(coop.id, batch.exchanges[2].id).reversed_by == reversal.id

        ledger = list(app.exchanges.list(coop.id, page_size=2))
        assert [x.seq for x in ledger] == [1, 2, 3, 4, 5]
        assert [x.seq for x in app.exchanges.list(coop.id, member="carol")] == [2, 3]
        assert [x.seq for x in app.exchanges.list(coop.id, after_seq=3)] == [4, 5]

        bob = app.balances.get(coop.id, "bob")
        assert (bob.balance, bob.available_to_spend, bob.unit.code) == (-110, 890, "HOUR")
        assert app.balances.get(coop.id, "bob", as_of_seq=1).balance == -150
        before = datetime.now(UTC) - timedelta(days=1)
        assert app.balances.get(coop.id, "alice", as_of=before).balance == 0
        accounts = list(treasurer.balances.list(coop.id, page_size=2))
        assert {a.account: a.balance for a in accounts if a.balance} == {
            "alice": 150,
            "bob": -110,
            "carol": -15,
            "dave": -25,
        }
        assert sum(a.balance for a in accounts) == 0

        statement = app.statements.get(coop.id, "bob")
        assert (statement.opening_balance, statement.closing_balance) == (0, -110)
        lines = list(app.statements.lines(coop.id, "dave", page_size=1))
        assert [line.balance_after for line in lines] == [-25, -15, -25]

        assert treasurer.reports.trial_balance(coop.id).sum == 0
        audit = treasurer.reports.audit(coop.id)
        assert (audit.ok, audit.checked_exchanges) == (True, 5)
        report = treasurer.reports.mutuality(coop.id)
        assert report.holds is True
        assert report.indicators.exchanges == 3  # the reversed one and its reversal do not count
        mine = treasurer.reports.member_mutuality(coop.id, "alice")
        assert (mine.given, mine.received) == (150, 0)


def test_proposals_are_accepted_rejected_and_cancelled(coop: Community) -> None:
    with coop.client("app") as app:
        proposal = app.exchanges.propose(
            coop.id,
            provider="alice",
            receiver="bob",
            amount=150,
            description="Cooking",
            initiated_by="receiver",
            expires_in=3600,
        )
        assert (proposal.status, proposal.seq) == ("pending", None)
        assert app.balances.get(coop.id, "bob").reserved_debit == 150
        accepted = app.exchanges.accept(coop.id, proposal.id)
        assert (accepted.status, accepted.seq) == ("completed", 1)
        assert app.balances.get(coop.id, "bob").reserved_debit == 0

        declined = app.exchanges.propose(
            coop.id, provider="carol", receiver="dave", amount=5, description="Soup"
        )
        assert app.exchanges.reject(coop.id, declined.id).status == "rejected"
        withdrawn = app.exchanges.propose(
            coop.id, provider="carol", receiver="dave", amount=5, description="Soup"
        )
        assert app.exchanges.cancel(coop.id, withdrawn.id).status == "cancelled"
        assert [x.id for x in app.exchanges.list(coop.id, status="rejected")] == [declined.id]
        with pytest.raises(InvalidState) as refused:
            app.exchanges.accept(coop.id, declined.id)
        assert refused.value.current_status == "rejected"


def test_links_and_intertrades(server: LiveServer, admin: Client, coop: Community) -> None:
    other = Community(server, admin)
    link = admin.links.create(a=coop.id, b=other.id, rate={"a": 1, "b": 2}, a_cap=500, b_cap=500)
    assert link.id in {x.id for x in admin.links.list()}
    assert admin.links.get(link.id).rate.b == 2

    with coop.client("treasurer") as treasurer:
        trade = treasurer.intertrades.post(
            coop.id,
            provider=f"{other.id}/alice",
            receiver="bob",
            amount=100,
            amount_in="receiver",
            description="Repair",
        )
        assert (trade.receiver.amount, trade.provider.amount) == (100, 200)
        assert treasurer.intertrades.get(coop.id, trade.id).link == link.id
        assert treasurer.balances.get(coop.id, "bob").balance == -100
        undone = treasurer.intertrades.reverse(coop.id, trade.id, reason="Returned")
        assert undone.reverses == trade.id
        assert treasurer.balances.get(coop.id, "bob").balance == 0

    assert admin.links.update(link.id, a_cap=800).a_cap == 800
    assert admin.links.update(link.id, status="suspended").status == "suspended"
    created = admin.audit_log.list(community=coop.id, action="link.created")
    assert [entry.target for entry in created] == [link.id]
    admin.links.delete(link.id)  # it carried an intertrade: kept, closed, with its history
    assert admin.links.get(link.id).status == "closed"
    unused = admin.links.create(
        a=coop.id, b=Community(server, admin).id, rate={"a": 1, "b": 1}, a_cap=1, b_cap=1
    )
    admin.links.delete(unused.id)
    with pytest.raises(NotFound):
        admin.links.get(unused.id)


def test_every_refusal_raises_its_typed_exception(server: LiveServer, coop: Community) -> None:
    with coop.client("app") as app, coop.client("treasurer") as treasurer:
        with pytest.raises(LimitExceeded) as limit:
            app.exchanges.post(
                coop.id, provider="alice", receiver="bob", amount=1001, description="Too much"
            )
        refused = limit.value
        assert (refused.status, refused.member, refused.limit) == (409, "bob", "lower")
        assert (refused.limit_value, refused.balance, refused.attempted) == (-1000, 0, 1001)
        assert refused.reserved == 0

        with pytest.raises(LimitExceeded) as in_batch:
            app.exchanges.batch(
                coop.id,
                [
                    {"provider": "alice", "receiver": "bob", "amount": 600, "description": "a"},
                    {"provider": "alice", "receiver": "bob", "amount": 600, "description": "b"},
                ],
            )
        assert in_batch.value.index == 1

        with pytest.raises(SameMember):
            app.exchanges.post(coop.id, provider="bob", receiver="bob", amount=1, description="x")
        with pytest.raises(ValidationFailed) as invalid:
            app.exchanges.post(coop.id, provider="bob", receiver="alice", amount=0, description="x")
        assert any("amount" in error["loc"] for error in invalid.value.errors)
        with pytest.raises(NotFound):
            app.balances.get(coop.id, "nobody")
        with pytest.raises(NotFound):
            app.exchanges.get(coop.id, "not-an-exchange")

        app.exchanges.post(
            coop.id, provider="alice", receiver="bob", amount=5, description="x", external_id="e1"
        )
        with pytest.raises(DuplicateExternalId) as duplicate:
            app.exchanges.post(
                coop.id,
                provider="alice",
                receiver="bob",
                amount=5,
                description="y",
                external_id="e1",
            )
        assert duplicate.value.exchange_id

        app.exchanges.post(
            coop.id,
            provider="carol",
            receiver="dave",
            amount=5,
            description="x",
            idempotency_key="k",
        )
        with pytest.raises(IdempotencyKeyReused):
            app.exchanges.post(
                coop.id,
                provider="carol",
                receiver="dave",
                amount=6,
                description="x",
                idempotency_key="k",
            )

        with pytest.raises(LimitBelowBalance) as below:
            treasurer.members.update(coop.id, "bob", lower_limit=-1)
        assert (below.value.member, below.value.balance) == ("bob", -5)
        with pytest.raises(BalanceNotZero):
            treasurer.members.update(coop.id, "bob", status="closed")
        treasurer.members.update(coop.id, "erin", status="suspended")
        with pytest.raises(MemberInactive):
            app.exchanges.post(coop.id, provider="erin", receiver="bob", amount=1, description="x")
        with pytest.raises(AlreadyExists):
            treasurer.members.create(coop.id, "alice", name="Alice again")

    with coop.client("auditor") as auditor, pytest.raises(Forbidden):
        auditor.exchanges.post(coop.id, provider="alice", receiver="bob", amount=1, description="x")
    with Client(server.base_url, "pcp_not-a-key", retry=RetryPolicy(total_s=0)) as stranger:
        with pytest.raises(Unauthorized) as unknown:
            stranger.balances.get(coop.id, "alice")
        assert unknown.value.status == 401


def test_the_event_consumer_resumes_from_the_stored_position(
    coop: Community, tmp_path: Path
) -> None:
    position_file = tmp_path / "position.json"

    def stored() -> int:
        return int(json.loads(position_file.read_text())["after"]) if position_file.exists() else 0

    def handle(seen: list[str], event_type: str, event_id: int) -> None:
        seen.append(event_type)
        position_file.write_text(json.dumps({"after": event_id}))

    with coop.client("app") as app:
        for n in range(3):
            app.exchanges.post(
                coop.id, provider="alice", receiver="bob", amount=1, description=f"{n}"
            )
        first_run: list[str] = []
        for event in app.events.follow(coop.id, after=stored(), until_caught_up=True, limit=2):
            handle(first_run, event.type, event.id)
        assert first_run.count("exchange.completed") == 3
        assert first_run.count("member.created") == len(MEMBERS)

    # The app restarts (a new client), and trading went on meanwhile.
    with coop.client("app") as app:
        for n in range(2):
            app.exchanges.post(
                coop.id, provider="bob", receiver="carol", amount=1, description=f"{n}"
            )
        resumed: list[int] = []
        for event in app.events.follow(coop.id, after=stored(), until_caught_up=True):
            resumed.append(event.id)
            position_file.write_text(json.dumps({"after": event.id}))
        assert len(resumed) == 2
        assert resumed[0] == len(first_run) + 1
        assert resumed == list(range(resumed[0], resumed[0] + 2))

        # Following live: the long poll is answered by the next exchange, not by the wait's end.
        arrived: list[str] = []

        def consume() -> None:
            with coop.client("app") as consumer:
                for event in consumer.events.follow(coop.id, after=stored(), wait=20):
                    arrived.append(event.type)
                    return

        reader = threading.Thread(target=consume)
        reader.start()
        app.exchanges.post(coop.id, provider="carol", receiver="dave", amount=1, description="live")
        reader.join(timeout=15)
        assert not reader.is_alive()
        assert arrived == ["exchange.completed"]


def test_the_async_client_does_what_the_sync_one_does(server: LiveServer, coop: Community) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.base_url, coop.tokens["app"]) as app:
            posted = await app.exchanges.post(
                coop.id, provider="alice", receiver="bob", amount=7, description="Async"
            )
            assert posted.seq == 1
            listed = [x.id async for x in app.exchanges.list(coop.id, page_size=1)]
            assert listed == [posted.id]
            assert (await app.balances.get(coop.id, "bob")).balance == -7
            members = [m.id async for m in app.members.list(coop.id, page_size=2)]
            assert members == sorted(MEMBERS)
            with pytest.raises(LimitExceeded):
                await app.exchanges.post(
                    coop.id, provider="alice", receiver="bob", amount=5000, description="No"
                )
            types = [e.type async for e in app.events.follow(coop.id, until_caught_up=True)]
            assert types[-1] == "exchange.completed"

    asyncio.run(scenario())


def load_example() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / "timebank.py"
    spec = importlib.util.spec_from_file_location("timebank_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_example_app_records_each_session_once_and_notes_each_event_once(
    coop: Community, tmp_path: Path
) -> None:
    example = load_example()
    garden = example.Session("job-1", "alice", "bob", 120, "Gardening")
    with coop.client("app") as app:
        assert example.record(app, coop.id, garden) == "job-1: recorded as #1"
        # Run again (the site re-sends its log): answered from the key, nothing recorded twice.
        assert example.record(app, coop.id, garden) == "job-1: recorded as #1"
        too_much = example.Session("job-2", "carol", "dave", 5000, "A year of soup")
        assert "dave would pass the lower limit -1000" in example.record(app, coop.id, too_much)

        notebook = example.Notebook(tmp_path / "notes.db")
        assert example.catch_up(app, coop.id, notebook) == len(MEMBERS) + 1
        notebook.close()
        app.exchanges.post(coop.id, provider="bob", receiver="alice", amount=30, description="Tea")
        reopened = example.Notebook(tmp_path / "notes.db")  # the app restarted
        assert example.catch_up(app, coop.id, reopened) == 1
        assert reopened.notes()[-2:] == ["exchange.completed: Gardening", "exchange.completed: Tea"]
        reopened.close()
        assert [x.description for x in app.exchanges.list(coop.id)] == ["Gardening", "Tea"]


def test_the_readmes_python_walk_runs_as_written(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    walk = readme.split("### The same walk from Python", 1)[1].split("```python\n", 1)[1]
    code = walk.split("```", 1)[0].replace("http://127.0.0.1:8000", server.base_url)
    exec(compile(code, "README.md", "exec"), {"token": server.admin_token})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "-200"
    assert printed[1].endswith("alice -200 -200")
    assert printed[-2:] == ["bob lower -2000", "True"]
