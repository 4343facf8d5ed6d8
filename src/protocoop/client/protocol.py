"""What both clients share, free of I/O: when to retry and after how long, how a call's
parameters become a request, and how an answer becomes a typed result or an exception.

The sync and async clients (`_sync/`, `_async/`) only send what this module builds and sleep
for as long as it says.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from protocoop.client.errors import ClientError, Unreachable, problem_error

ModelT = TypeVar("ModelT", bound=BaseModel)

USER_AGENT = "protocoop-client"


class Unset(Enum):
    """A field left out of a PATCH, as opposed to one set to null (e.g. "no upper limit")."""

    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True)
class RetryPolicy:
    """How long a call keeps trying for a final answer.

    A call is retried when it could not reach the server, or when the answer says trying again
    is safe: `503 unavailable`, `409 request_in_progress` (the first request with this key is still
    running) and `429 rate_limited` (after its `Retry-After`). A POST keeps its Idempotency-Key
    across the retries, so the server records it at most once. Waits grow from `first_delay_s`
    by `multiplier` up to `max_delay_s`, each drawn at random from its upper half (jitter, so
    that many clients do not retry in step), and the call gives up once `total_s` have passed.
    """

    total_s: float = 30.0
    first_delay_s: float = 0.05
    max_delay_s: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay_s
        while True:
            yield random.uniform(delay / 2, delay)
            delay = min(delay * self.multiplier, self.max_delay_s)


NO_RETRIES = RetryPolicy(total_s=0.0)

RETRYABLE_CODES = frozenset({"unavailable", "request_in_progress", "rate_limited"})


@dataclass(frozen=True)
class Call:
    """One API request as a call describes it; `idempotency_key` is set for every POST."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    body: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    timeout_s: float | None = None

    @property
    def replayable(self) -> bool:
        """Whether sending it twice is safe even when the first may have been carried out: a
        read, or a POST under its key. A PATCH or DELETE is retried only when it never reached
        the server (a connection refused) or the server says nothing was done (503)."""
        return self.method == "GET" or self.idempotency_key is not None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


def post(path: str, body: Mapping[str, Any] | None, idempotency_key: str | None) -> Call:
    """A POST under the caller's Idempotency-Key, or a new one (a UUID) for this call."""
    return Call("POST", path, body=body, idempotency_key=idempotency_key or str(uuid.uuid4()))


def retry_wait(call: Call, response: httpx.Response) -> float | None:
    """Seconds to wait before sending `call` again after `response` (None: it is final).
    `Retry-After` wins over the policy's own wait when the server gives one."""
    if response.status_code not in (409, 429, 503):
        return None
    code = _problem(response).get("code")
    if code not in RETRYABLE_CODES:
        return None
    if code == "request_in_progress" and not call.replayable:
        return None
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return 0.0  # the policy's next wait


def retries_transport_error(call: Call, error: httpx.TransportError) -> bool:
    """Whether to try again after `error`: always for a replayable call; otherwise only when the
    request certainly never reached the server."""
    return call.replayable or isinstance(error, httpx.ConnectError)


def unreachable(call: Call, error: Exception | None, response: httpx.Response | None) -> Exception:
    """What a call raises when the retry budget runs out: the last refusal, if there was one;
    else `Unreachable` with the key to retry with."""
    if response is not None:
        return failure(response)
    return Unreachable(
        f"{call.method} {call.path}: no answer within the retry budget ({error!r})",
        idempotency_key=call.idempotency_key,
    )


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def failure(response: httpx.Response) -> ClientError:
    """The exception for a refusal (any answer that is not 2xx)."""
    problem = _problem(response) or {
        "status": response.status_code,
        "detail": response.text[:500] or response.reason_phrase,
    }
    return problem_error(response.status_code, problem)


def parsed(response: httpx.Response, model: type[ModelT]) -> ModelT:
    """The answer as `model`, or the refusal's exception."""
    if not response.is_success:
        raise failure(response)
    return model.model_validate_json(response.content)


def ensure_success(response: httpx.Response) -> None:
    if not response.is_success:
        raise failure(response)


def query(**values: object) -> dict[str, str]:
    """Query parameters from a call's keyword arguments: None is left out, a time is written in
    RFC 3339 (it must carry an offset), a bool as `true`/`false`."""
    params: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            params[name] = timestamp(value)
        elif isinstance(value, bool):
            params[name] = "true" if value else "false"
        else:
            params[name] = str(value)
    return params


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC, as the API wants times: with seconds and an offset."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value!r} has no time zone: the API takes times with an offset")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def body(**values: object) -> dict[str, Any]:
    """A request body from keyword arguments: None and `UNSET` are left out, times written in
    RFC 3339 (use `patch_body` where null means something)."""
    return {
        name: timestamp(value) if isinstance(value, datetime) else value
        for name, value in values.items()
        if value is not None and value is not UNSET
    }


def patch_body(**values: object) -> dict[str, Any]:
    """A PATCH body: `UNSET` fields are left out, None is sent as null (it clears the field)."""
    return {name: value for name, value in values.items() if value is not UNSET}
