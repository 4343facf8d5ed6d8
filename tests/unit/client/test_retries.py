"""When the client sends a call again, with what, and when it gives up: against httpx's
MockTransport, so each answer the server could give is scripted exactly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from protocoop.client import (
    AsyncClient,
    Client,
    LimitExceeded,
    RetryPolicy,
    Unavailable,
    Unreachable,
)
from protocoop.client.protocol import Call, retry_wait

FAST = RetryPolicy(total_s=2.0, first_delay_s=0.001, max_delay_s=0.01)

EXCHANGE: dict[str, Any] = {
    "id": "0b9e5c1e-4a5b-4a4e-9a57-3f6f1c1d2e3f",
    "seq": 1,
    "community": "riverside",
    "provider": "alice",
    "receiver": "bob",
    "amount": 150,
    "description": "Gardening",
    "category": None,
    "external_id": None,
    "occurred_at": "2026-12-07T10:00:00.000000Z",
    "created_at": "2026-12-07T10:00:00.000000Z",
    "status": "completed",
    "reverses": None,
    "reversed_by": None,
    "intertrade_id": None,
    "metadata": None,
    "entries": [
        {"account": "bob", "amount": -150, "balance_after": -150},
        {"account": "alice", "amount": 150, "balance_after": 150},
    ],
    "prev_hash": "0" * 64,
    "hash": "f" * 64,
}


def problem(status: int, code: str, **fields: Any) -> httpx.Response:
    body = {"type": f"https://protocoop.dev/problems/{code}", "title": code, "status": status}
    return httpx.Response(
        status,
        json={**body, "detail": f"{code}!", "code": code, **fields},
        headers={"Content-Type": "application/problem+json"},
    )


class Script:
    """A server that answers each request with the next scripted step (a response, or an
    exception to raise as the transport), and remembers what it was sent."""

    def __init__(self, *steps: httpx.Response | Exception) -> None:
        self.steps: Iterator[httpx.Response | Exception] = iter(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = next(self.steps)
        if isinstance(step, Exception):
            raise step
        return step

    @property
    def keys(self) -> list[str | None]:
        return [request.headers.get("Idempotency-Key") for request in self.requests]


def post_with(script: Script, policy: RetryPolicy = FAST, **kwargs: Any) -> Any:
    with Client("http://ledger", "token", retry=policy, transport=httpx.MockTransport(script)) as c:
        return c.exchanges.post(
            "riverside", provider="alice", receiver="bob", amount=150, description="x", **kwargs
        )


def test_a_post_carries_a_new_idempotency_key_and_its_json_body() -> None:
    script = Script(httpx.Response(201, json=EXCHANGE))
    exchange = post_with(script)
    assert exchange.entries[0].balance_after == -150
    (request,) = script.requests
    assert len(str(request.headers["Idempotency-Key"])) == 36  # a UUID
    assert request.headers["Authorization"] == "Bearer token"
    assert json.loads(request.content) == {
        "provider": "alice",
        "receiver": "bob",
        "amount": 150,
        "description": "x",
    }


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset mid-answer"),
        httpx.ReadTimeout("no answer"),
    ],
    ids=["connect", "reset", "timeout"],
)
def test_a_transport_failure_is_retried_with_the_same_key(failure: Exception) -> None:
    script = Script(failure, failure, httpx.Response(201, json=EXCHANGE))
    assert post_with(script).id == EXCHANGE["id"]
    assert len(set(script.keys)) == 1
    assert len(script.keys) == 3


@pytest.mark.parametrize(
    "answer",
    [
        problem(503, "unavailable"),
        problem(409, "request_in_progress"),
        problem(429, "rate_limited", retry_after=0),
    ],
    ids=["unavailable", "in-progress", "rate-limited"],
)
def test_answers_that_say_try_again_are_retried_with_the_same_key(answer: httpx.Response) -> None:
    script = Script(answer, httpx.Response(201, json=EXCHANGE))
    assert post_with(script, idempotency_key="mine").id == EXCHANGE["id"]
    assert script.keys == ["mine", "mine"]


def test_a_refusal_is_raised_at_once_with_its_fields() -> None:
    script = Script(
        problem(
            409,
            "limit_exceeded",
            member="bob",
            limit="lower",
            limit_value=-2000,
            balance=-1900,
            attempted=200,
            reserved=0,
        )
    )
    with pytest.raises(LimitExceeded) as refused:
        post_with(script)
    assert len(script.requests) == 1
    error = refused.value
    assert (error.status, error.member, error.limit) == (409, "bob", "lower")
    assert (error.limit_value, error.balance, error.attempted, error.reserved) == (
        -2000,
        -1900,
        200,
        0,
    )
    assert error.detail == "limit_exceeded!"


def test_the_retry_budget_bounds_the_total_time() -> None:
    never = RetryPolicy(total_s=0.2, first_delay_s=0.01, max_delay_s=0.05)
    script = Script(*[httpx.ConnectError("down")] * 1000)
    with pytest.raises(Unreachable) as gave_up:
        post_with(script, never, idempotency_key="keep-me")
    assert gave_up.value.idempotency_key == "keep-me"  # to try again later, safely
    assert 2 < len(script.requests) < 100

    busy = Script(*[problem(503, "unavailable")] * 1000)
    with pytest.raises(Unavailable):
        post_with(busy, never)


def test_a_patch_is_not_resent_when_it_may_have_reached_the_server() -> None:
    script = Script(httpx.ReadError("reset"), httpx.Response(200, json={}))
    transport = httpx.MockTransport(script)
    client = Client("http://ledger", "t", retry=FAST, transport=transport)
    with client, pytest.raises(Unreachable):
        client.members.update("riverside", "bob", name="Bob")
    assert len(script.requests) == 1


def test_a_patch_that_never_reached_the_server_is_sent_again() -> None:
    member = {
        "id": "bob",
        "name": "Bob",
        "kind": "person",
        "status": "active",
        "balance": 0,
        "lower_limit": -100,
        "upper_limit": None,
        "created_at": "2026-12-07T10:00:00Z",
    }
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json=member))
    with Client("http://ledger", "t", retry=FAST, transport=httpx.MockTransport(script)) as client:
        updated = client.members.update("riverside", "bob", upper_limit=None)
    assert updated.upper_limit is None
    assert [json.loads(r.content) for r in script.requests] == [{"upper_limit": None}] * 2


def test_retry_after_from_the_server_sets_the_wait() -> None:
    call = Call("GET", "/x")
    limited = problem(429, "rate_limited")
    limited.headers["Retry-After"] = "3"
    assert retry_wait(call, limited) == 3.0
    assert retry_wait(call, problem(409, "limit_exceeded")) is None
    assert retry_wait(call, httpx.Response(200, json={})) is None


def test_lists_follow_next_cursor_until_it_is_null() -> None:
    def pages(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        following = {None: ("a", "c1"), "c1": ("b", "c2"), "c2": ("c", None)}
        item, next_cursor = following[cursor]
        return httpx.Response(
            200, json={"items": [{**EXCHANGE, "id": item}], "next_cursor": next_cursor}
        )

    with Client("http://ledger", "t", transport=httpx.MockTransport(pages)) as client:
        assert [x.id for x in client.exchanges.list("riverside", page_size=1)] == ["a", "b", "c"]


def run_async(scenario: Callable[[AsyncClient], Any], script: Script) -> Any:
    async def main() -> Any:
        transport = httpx.MockTransport(script)
        async with AsyncClient("http://ledger", "t", retry=FAST, transport=transport) as client:
            return await scenario(client)

    return asyncio.run(main())


def test_the_async_client_retries_the_same_way() -> None:
    script = Script(
        httpx.ConnectError("down"),
        problem(409, "request_in_progress"),
        httpx.Response(201, json=EXCHANGE),
    )

    async def post(client: AsyncClient) -> Any:
        return await client.exchanges.post(
            "riverside", provider="alice", receiver="bob", amount=150, description="x"
        )

    assert run_async(post, script).seq == 1
    assert len(script.keys) == 3
    assert len(set(script.keys)) == 1
