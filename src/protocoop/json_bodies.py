"""JSON request bodies are read strictly: an object that names a key twice is refused.

The standard parser keeps the last of repeated keys, so `{"amount": 1, "amount": 1000}` would be
read as 1000 by us and as 1 by a proxy, a log reader or a signature check that keeps the first.
Every route of the API reads its body through `StrictJSONRoute`; the check costs one `dict` per
JSON object, inside the one parse FastAPI does anyway.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a key named twice."""
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return members


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def loads_strict(body: bytes | str) -> Any:
    """`body` parsed as JSON, as `json.loads` does; a repeated key in any object raises
    ValueError. (One decoder for every body: building one per call would cost more than the
    check.)"""
    if isinstance(body, bytes | bytearray):
        body = body.decode(json.detect_encoding(body), "surrogatepass")
    return _DECODER.decode(body)


class StrictJSONRequest(Request):
    """A request whose `json()` refuses repeated keys (the unreadable-body answer: a 422)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = loads_strict(body)
            except _RepeatedKey as repeated:
                raise HTTPException(
                    400, f"the JSON body names the key {repeated.key!r} more than once"
                ) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """An API route that reads JSON bodies with `StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
