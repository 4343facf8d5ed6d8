"""The client, asynchronous in `_async/client.py` and synchronous in `_sync/client.py`. The
second is generated from the first by `make client` (unasync turns `async def` into `def`, drops
`await` and `Async` from names): edit `_async/client.py`, then regenerate.

Every method is one API route of docs/design.md §2 under the API's own names; results are the
API's response documents (`protocoop.*.schemas`), amounts are integers, and a refusal raises the
`protocoop.client.errors` class of its code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from time import monotonic
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from protocoop.audit_log.schemas import AuditLogEntryPublic
from protocoop.balances.schemas import (
    AccountBalance,
    BalancePublic,
    Statement,
    StatementLine,
    TrialBalance,
)
from protocoop.client.errors import Unreachable
from protocoop.client.protocol import (
    UNSET,
    USER_AGENT,
    Call,
    ModelT,
    RetryPolicy,
    Unset,
    body,
    ensure_success,
    parsed,
    patch_body,
    post,
    query,
    retries_transport_error,
    retry_wait,
    unreachable,
)
from protocoop.communities.schemas import CommunityPublic
from protocoop.events.schemas import EventPage, EventPublic
from protocoop.keys.schemas import ApiKeyCreated, ApiKeyPublic
from protocoop.ledger.schemas import BatchPublic, ExchangeCreate, ExchangePublic
from protocoop.links.schemas import IntertradePublic, LinkPublic
from protocoop.members.schemas import MemberPublic
from protocoop.mutuality.schemas import AuditReport, MemberMutualityPublic, MutualityPublic

Party = Literal["provider", "receiver"]

PAGE_SIZE = 100
LONG_POLL_MARGIN_S = 10.0
"""A long poll's HTTP timeout is its `wait` plus this much."""


def _segment(value: str) -> str:
    return quote(value, safe="")


def _community(community: str) -> str:
    return f"/v1/communities/{_segment(community)}"


class AsyncClient:
    """A client of one protocoop server under one API key.

    Give it the server's address and an API key's token, and close it when done: use it in a
    `with` block (`async with` for the asynchronous client). Every POST carries an
    Idempotency-Key (pass `idempotency_key=` to choose it) and is retried under the same key
    after a transport error, a `503`, a `409 request_in_progress` or a `429`, for at most
    `retry.total_s` seconds; reads are retried the same way. See `RetryPolicy`.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
            timeout=timeout_s,
            transport=transport,
        )
        self.communities = AsyncCommunities(self)
        self.members = AsyncMembers(self)
        self.exchanges = AsyncExchanges(self)
        self.intertrades = AsyncIntertrades(self)
        self.links = AsyncLinks(self)
        self.balances = AsyncBalances(self)
        self.statements = AsyncStatements(self)
        self.reports = AsyncReports(self)
        self.events = AsyncEvents(self)
        self.keys = AsyncKeys(self)
        self.audit_log = AsyncAuditLog(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> httpx.Response:
        """Send `call` until it has a final answer (see `RetryPolicy`) and return that answer,
        success or refusal. Raises `Unreachable` when none came within the budget."""
        deadline = monotonic() + self.retry.total_s
        delays = self.retry.delays()
        while True:
            failed: httpx.TransportError | None = None
            answer: httpx.Response | None = None
            try:
                answer = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    content=call.content(),
                    headers=call.headers(),
                    timeout=call.timeout_s or httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as error:
                if not retries_transport_error(call, error):
                    raise Unreachable(
                        f"{call.method} {call.path}: {error!r}; the outcome is unknown",
                        idempotency_key=call.idempotency_key,
                    ) from error
                failed, wait = error, next(delays)
            else:
                server_wait = retry_wait(call, answer)
                if server_wait is None:
                    return answer
                wait = server_wait or next(delays)
            if monotonic() + wait > deadline:
                raise unreachable(call, failed, answer) from failed
            await asyncio.sleep(wait)

    async def fetch(self, call: Call, model: type[ModelT]) -> ModelT:
        """Send `call` and read its answer as `model` (a refusal raises its exception)."""
        return parsed(await self.send(call), model)

    async def items(
        self, path: str, item: type[ModelT], params: Mapping[str, str] | None = None
    ) -> AsyncIterator[ModelT]:
        """Every item of a list, page after page, following `next_cursor` until it is null."""
        page_params = dict(params or {})
        while True:
            answer = await self.send(Call("GET", path, params=page_params))
            ensure_success(answer)
            page = answer.json()
            for raw in page["items"]:
                yield item.model_validate(raw)
            if page.get("next_cursor") is None:
                return
            page_params["cursor"] = page["next_cursor"]


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class AsyncCommunities(_Resource):
    async def create(
        self,
        id: str,
        *,
        name: str,
        unit: Mapping[str, Any],
        default_lower_limit: int | Unset = UNSET,
        default_upper_limit: int | Unset | None = UNSET,
        policy: Mapping[str, Any] | Unset = UNSET,
        idempotency_key: str | None = None,
    ) -> CommunityPublic:
        """`POST /v1/communities` (admin). `unit` is `{code, name, scale}`."""
        spec = patch_body(
            id=id,
            name=name,
            unit=unit,
            default_lower_limit=default_lower_limit,
            default_upper_limit=default_upper_limit,
            policy=policy,
        )
        return await self._client.fetch(
            post("/v1/communities", spec, idempotency_key), CommunityPublic
        )

    async def get(self, community: str) -> CommunityPublic:
        return await self._client.fetch(Call("GET", _community(community)), CommunityPublic)

    def list(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[CommunityPublic]:
        """Every community the key sees (an admin: all; any other key: its own)."""
        return self._client.items("/v1/communities", CommunityPublic, query(limit=page_size))

    async def update(
        self,
        community: str,
        *,
        name: str | Unset = UNSET,
        default_lower_limit: int | Unset = UNSET,
        default_upper_limit: int | Unset | None = UNSET,
        status: Literal["active", "suspended"] | Unset = UNSET,
        policy: Mapping[str, Any] | Unset = UNSET,
    ) -> CommunityPublic:
        """`PATCH /v1/communities/{c}`: only the fields given change (None: no upper limit)."""
        changes = patch_body(
            name=name,
            default_lower_limit=default_lower_limit,
            default_upper_limit=default_upper_limit,
            status=status,
            policy=policy,
        )
        return await self._client.fetch(
            Call("PATCH", _community(community), body=changes), CommunityPublic
        )


class AsyncMembers(_Resource):
    async def create(
        self,
        community: str,
        id: str,
        *,
        name: str,
        kind: str | Unset = UNSET,
        lower_limit: int | Unset = UNSET,
        upper_limit: int | Unset | None = UNSET,
        idempotency_key: str | None = None,
    ) -> MemberPublic:
        """A new member; limits left out take the community's defaults (None: no upper limit)."""
        spec = patch_body(
            id=id, name=name, kind=kind, lower_limit=lower_limit, upper_limit=upper_limit
        )
        return await self._client.fetch(
            post(f"{_community(community)}/members", spec, idempotency_key), MemberPublic
        )

    async def get(self, community: str, member: str) -> MemberPublic:
        path = f"{_community(community)}/members/{_segment(member)}"
        return await self._client.fetch(Call("GET", path), MemberPublic)

    def list(
        self, community: str, *, status: str | None = None, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[MemberPublic]:
        return self._client.items(
            f"{_community(community)}/members",
            MemberPublic,
            query(status=status, limit=page_size),
        )

    async def update(
        self,
        community: str,
        member: str,
        *,
        name: str | Unset = UNSET,
        status: Literal["active", "suspended", "closed"] | Unset = UNSET,
        lower_limit: int | Unset = UNSET,
        upper_limit: int | Unset | None = UNSET,
    ) -> MemberPublic:
        """`PATCH .../members/{m}`: only the fields given change (None: no upper limit)."""
        changes = patch_body(
            name=name, status=status, lower_limit=lower_limit, upper_limit=upper_limit
        )
        path = f"{_community(community)}/members/{_segment(member)}"
        return await self._client.fetch(Call("PATCH", path, body=changes), MemberPublic)


class AsyncExchanges(_Resource):
    async def post(
        self,
        community: str,
        *,
        provider: str,
        receiver: str,
        amount: int,
        description: str,
        category: str | None = None,
        external_id: str | None = None,
        occurred_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ExchangePublic:
        """Record an exchange: the provider's balance goes up by `amount`, the receiver's down.
        Exactly once, under `idempotency_key` (a new UUID when not given), however often it is
        retried."""
        spec = body(
            provider=provider,
            receiver=receiver,
            amount=amount,
            description=description,
            category=category,
            external_id=external_id,
            occurred_at=occurred_at,
            metadata=metadata,
        )
        return await self._client.fetch(
            post(f"{_community(community)}/exchanges", spec, idempotency_key), ExchangePublic
        )

    async def propose(
        self,
        community: str,
        *,
        provider: str,
        receiver: str,
        amount: int,
        description: str,
        initiated_by: Party = "provider",
        expires_in: int | None = None,
        category: str | None = None,
        external_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ExchangePublic:
        """A proposal (`pending: true`): its amount is reserved until the other side accepts or
        rejects it, the initiator cancels it, or it expires after `expires_in` seconds."""
        spec = body(
            provider=provider,
            receiver=receiver,
            amount=amount,
            description=description,
            category=category,
            external_id=external_id,
            metadata=metadata,
            pending=True,
            initiated_by=initiated_by,
            expires_in=expires_in,
        )
        return await self._client.fetch(
            post(f"{_community(community)}/exchanges", spec, idempotency_key), ExchangePublic
        )

    async def batch(
        self,
        community: str,
        exchanges: Sequence[ExchangeCreate | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> BatchPublic:
        """Up to 1000 exchanges in order, all or nothing (a refusal's `index` names the item)."""
        items = [
            x.model_dump(mode="json", exclude_unset=True) if isinstance(x, BaseModel) else dict(x)
            for x in exchanges
        ]
        path = f"{_community(community)}/exchanges:batch"
        return await self._client.fetch(
            post(path, {"exchanges": items}, idempotency_key), BatchPublic
        )

    async def _settle(
        self, community: str, exchange_id: str, action: str, idempotency_key: str | None
    ) -> ExchangePublic:
        path = f"{_community(community)}/exchanges/{_segment(exchange_id)}/{action}"
        return await self._client.fetch(post(path, None, idempotency_key), ExchangePublic)

    async def accept(
        self, community: str, exchange_id: str, *, idempotency_key: str | None = None
    ) -> ExchangePublic:
        """Record a proposal now (the counterparty accepts it)."""
        return await self._settle(community, exchange_id, "accept", idempotency_key)

    async def reject(
        self, community: str, exchange_id: str, *, idempotency_key: str | None = None
    ) -> ExchangePublic:
        """The counterparty declines a proposal; its reservation is released."""
        return await self._settle(community, exchange_id, "reject", idempotency_key)

    async def cancel(
        self, community: str, exchange_id: str, *, idempotency_key: str | None = None
    ) -> ExchangePublic:
        """The initiator withdraws a proposal; its reservation is released."""
        return await self._settle(community, exchange_id, "cancel", idempotency_key)

    async def reverse(
        self,
        community: str,
        exchange_id: str,
        *,
        reason: str,
        idempotency_key: str | None = None,
    ) -> ExchangePublic:
        """Record the reversing exchange (treasurer); the original then shows `reversed_by`."""
        path = f"{_community(community)}/exchanges/{_segment(exchange_id)}/reverse"
        return await self._client.fetch(
            post(path, {"reason": reason}, idempotency_key), ExchangePublic
        )

    async def get(self, community: str, exchange_id: str) -> ExchangePublic:
        path = f"{_community(community)}/exchanges/{_segment(exchange_id)}"
        return await self._client.fetch(Call("GET", path), ExchangePublic)

    def list(
        self,
        community: str,
        *,
        member: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[ExchangePublic]:
        """Exchanges in `seq` order (proposals with `status=`), every page."""
        params = query(
            member=member,
            status=status,
            since=since,
            until=until,
            after_seq=after_seq,
            limit=page_size,
        )
        return self._client.items(f"{_community(community)}/exchanges", ExchangePublic, params)


class AsyncIntertrades(_Resource):
    async def post(
        self,
        community: str,
        *,
        provider: str,
        receiver: str,
        amount: int,
        description: str,
        amount_in: Party = "provider",
        idempotency_key: str | None = None,
    ) -> IntertradePublic:
        """An exchange across a link: `provider` is `<community>/<member>` of the other
        community, `receiver` a member of this one; `amount` is in `amount_in`'s unit."""
        spec = body(
            provider=provider,
            receiver=receiver,
            amount=amount,
            amount_in=amount_in,
            description=description,
        )
        return await self._client.fetch(
            post(f"{_community(community)}/intertrades", spec, idempotency_key),
            IntertradePublic,
        )

    async def get(self, community: str, intertrade_id: str) -> IntertradePublic:
        path = f"{_community(community)}/intertrades/{_segment(intertrade_id)}"
        return await self._client.fetch(Call("GET", path), IntertradePublic)

    async def reverse(
        self,
        community: str,
        intertrade_id: str,
        *,
        reason: str,
        idempotency_key: str | None = None,
    ) -> IntertradePublic:
        path = f"{_community(community)}/intertrades/{_segment(intertrade_id)}/reverse"
        return await self._client.fetch(
            post(path, {"reason": reason}, idempotency_key), IntertradePublic
        )


class AsyncLinks(_Resource):
    async def create(
        self,
        *,
        a: str,
        b: str,
        rate: Mapping[str, int],
        a_cap: int,
        b_cap: int,
        idempotency_key: str | None = None,
    ) -> LinkPublic:
        """A link between communities `a` and `b` (admin): `rate` is `{a, b}` units."""
        spec = {"a": a, "b": b, "rate": dict(rate), "a_cap": a_cap, "b_cap": b_cap}
        return await self._client.fetch(post("/v1/links", spec, idempotency_key), LinkPublic)

    async def get(self, link_id: str) -> LinkPublic:
        return await self._client.fetch(Call("GET", f"/v1/links/{_segment(link_id)}"), LinkPublic)

    def list(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[LinkPublic]:
        return self._client.items("/v1/links", LinkPublic, query(limit=page_size))

    async def update(
        self,
        link_id: str,
        *,
        rate: Mapping[str, int] | Unset = UNSET,
        a_cap: int | Unset = UNSET,
        b_cap: int | Unset = UNSET,
        status: Literal["active", "suspended"] | Unset = UNSET,
    ) -> LinkPublic:
        changes = patch_body(rate=rate, a_cap=a_cap, b_cap=b_cap, status=status)
        call = Call("PATCH", f"/v1/links/{_segment(link_id)}", body=changes)
        return await self._client.fetch(call, LinkPublic)

    async def delete(self, link_id: str) -> None:
        ensure_success(await self._client.send(Call("DELETE", f"/v1/links/{_segment(link_id)}")))


class AsyncBalances(_Resource):
    async def get(
        self,
        community: str,
        member: str,
        *,
        as_of: datetime | None = None,
        as_of_seq: int | None = None,
    ) -> BalancePublic:
        """A member's (or `@commons`') balance now, or at a past time or ledger position."""
        path = f"{_community(community)}/members/{_segment(member)}/balance"
        params = query(as_of=as_of, as_of_seq=as_of_seq)
        return await self._client.fetch(Call("GET", path, params=params), BalancePublic)

    def list(self, community: str, *, page_size: int = PAGE_SIZE) -> AsyncIterator[AccountBalance]:
        """Every account's balance, all at the first page's `as_of_seq`."""
        return self._client.items(
            f"{_community(community)}/balances", AccountBalance, query(limit=page_size)
        )


class AsyncStatements(_Resource):
    async def get(
        self,
        community: str,
        member: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Statement:
        """One page of a member's statement for `[since, until)`, with opening and closing."""
        path = f"{_community(community)}/members/{_segment(member)}/statement"
        params = query(since=since, until=until, limit=limit, cursor=cursor)
        return await self._client.fetch(Call("GET", path, params=params), Statement)

    def lines(
        self,
        community: str,
        member: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[StatementLine]:
        """Every line of the statement for `[since, until)`, page after page."""
        path = f"{_community(community)}/members/{_segment(member)}/statement"
        return self._client.items(
            path, StatementLine, query(since=since, until=until, limit=page_size)
        )


class AsyncReports(_Resource):
    async def trial_balance(self, community: str) -> TrialBalance:
        path = f"{_community(community)}/trial-balance"
        return await self._client.fetch(Call("GET", path), TrialBalance)

    async def audit(self, community: str) -> AuditReport:
        """Invariants 1 to 5 recomputed from the entries, and the whole chain re-hashed."""
        return await self._client.fetch(Call("GET", f"{_community(community)}/audit"), AuditReport)

    async def mutuality(
        self, community: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> MutualityPublic:
        """Does mutuality hold: the verdict, its checks and the indicators for the window."""
        call = Call(
            "GET", f"{_community(community)}/mutuality", params=query(since=since, until=until)
        )
        return await self._client.fetch(call, MutualityPublic)

    async def member_mutuality(
        self,
        community: str,
        member: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> MemberMutualityPublic:
        path = f"{_community(community)}/members/{_segment(member)}/mutuality"
        call = Call("GET", path, params=query(since=since, until=until))
        return await self._client.fetch(call, MemberMutualityPublic)


class AsyncEvents(_Resource):
    async def page(
        self, community: str, *, after: int = 0, limit: int | None = None, wait: float = 0
    ) -> EventPage:
        """`GET .../events`: the events after `after`; with `wait`, held until one arrives."""
        call = Call(
            "GET",
            f"{_community(community)}/events",
            params=query(after=after, limit=limit, wait=wait or None),
            timeout_s=wait + LONG_POLL_MARGIN_S if wait else None,
        )
        return await self._client.fetch(call, EventPage)

    async def follow(
        self,
        community: str,
        *,
        after: int = 0,
        wait: float = 30,
        limit: int = PAGE_SIZE,
        until_caught_up: bool = False,
    ) -> AsyncIterator[EventPublic]:
        """Every event after position `after`, in commit order, each once, long-polling for
        more (`wait` seconds a request). Stop by leaving the loop; `until_caught_up` stops by
        itself once no more are waiting.

        The position is the app's to keep: after handling an event, store its `id`, and start
        again from the stored id. Stored in the same transaction as what handling the event
        changed, every event takes effect exactly once, across restarts of the app and the
        server (docs/client.md shows how)."""
        position = after
        while True:
            batch = await self.page(
                community, after=position, limit=limit, wait=0 if until_caught_up else wait
            )
            for event in batch.items:
                yield event
                position = event.id
            if until_caught_up and len(batch.items) < limit:
                return


class AsyncKeys(_Resource):
    async def create(
        self,
        *,
        role: Literal["admin", "treasurer", "app", "auditor"],
        community: str | None = None,
        label: str | None = None,
        idempotency_key: str | None = None,
    ) -> ApiKeyCreated | ApiKeyPublic:
        """A new API key. Its `token` is in the first answer only: a replay of the same call
        (a retry) answers `ApiKeyPublic`, without it."""
        spec = body(role=role, community=community, label=label)
        answer = await self._client.send(post("/v1/api-keys", spec, idempotency_key))
        ensure_success(answer)
        document = answer.json()
        if "token" in document:
            return ApiKeyCreated.model_validate(document)
        return ApiKeyPublic.model_validate(document)

    def list(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[ApiKeyPublic]:
        return self._client.items("/v1/api-keys", ApiKeyPublic, query(limit=page_size))

    async def revoke(self, key_id: str) -> None:
        """Revoke a key: from the next request on, it gets `401` everywhere."""
        call = Call("DELETE", f"/v1/api-keys/{_segment(key_id)}")
        ensure_success(await self._client.send(call))


class AsyncAuditLog(_Resource):
    def list(
        self,
        *,
        community: str | None = None,
        action: str | None = None,
        target: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[AuditLogEntryPublic]:
        """Who changed what: one community's log, or (admin) the instance's."""
        path = f"{_community(community)}/audit-log" if community else "/v1/audit-log"
        params = query(action=action, target=target, limit=page_size)
        return self._client.items(path, AuditLogEntryPublic, params)
