"""Small helpers for the ledger tests: post exchanges and read the ledger back through the API."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from tests.support.api import Api, every_item

C = "/v1/communities/riverside"
EXCHANGES = f"{C}/exchanges"
BATCH = f"{C}/exchanges:batch"
GENESIS = "0" * 64


def exchange(provider: str, receiver: str, amount: int, **fields: Any) -> dict[str, Any]:
    """The body of `POST .../exchanges`: `provider` gave `receiver` something worth `amount`."""
    return {
        "provider": provider,
        "receiver": receiver,
        "amount": amount,
        "description": fields.pop("description", f"{provider} helped {receiver}"),
        **fields,
    }


def post(api: Api, provider: str, receiver: str, amount: int, **fields: Any) -> Any:
    """Post one exchange and return the HTTP response."""
    headers = fields.pop("headers", None)
    return api.post(EXCHANGES, json=exchange(provider, receiver, amount, **fields), headers=headers)


def posted(api: Api, provider: str, receiver: str, amount: int, **fields: Any) -> dict[str, Any]:
    """Post one exchange that must be recorded; returns the exchange document."""
    response = post(api, provider, receiver, amount, **fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


def reverse(api: Api, exchange_id: str, reason: str = "posted by mistake", **kwargs: Any) -> Any:
    return api.post(f"{EXCHANGES}/{exchange_id}/reverse", json={"reason": reason}, **kwargs)


def all_exchanges(api: Api, **params: Any) -> list[dict[str, Any]]:
    """Every exchange in the community (following the cursor), in the order the API gives."""
    return every_item(api.get, EXCHANGES, **params)


def balances(api: Api) -> dict[str, int]:
    """Every account's balance now (member and system accounts), by account id."""
    result: dict[str, int] = {}
    params: dict[str, Any] = {"limit": 1000}
    while True:
        response = api.get(f"{C}/balances", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        result.update({item["account"]: item["balance"] for item in page["items"]})
        if page["next_cursor"] is None:
            return result
        params = {"limit": 1000, "cursor": page["next_cursor"]}


def balance(api: Api, member: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"{C}/members/{member}/balance", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def ledger_state(api: Api) -> tuple[dict[str, int], int]:
    """(balances, number of exchanges): what a refusal must leave untouched."""
    return balances(api), len(all_exchanges(api))


def audit(api: Api) -> dict[str, Any]:
    response = api.get(f"{C}/audit")
    assert response.status_code == 200, response.text
    return dict(response.json())


def set_member(api: Api, member: str, **fields: Any) -> dict[str, Any]:
    response = api.patch(f"{C}/members/{member}", json=fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert `response` is the RFC 9457 problem `code` with `status`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = dict(response.json())
    assert body["code"] == code, body
    assert body["status"] == status
    return body


def forged_cursor(position: dict[str, Any]) -> str:
    """A cursor the API never gave out but shaped like its own (base64 of a JSON object): what a
    client that tampers with an opaque cursor would send."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


# --- the hash chain, as a reader of docs/design.md would recompute it -----------------------


def canonical_time(value: str) -> str:
    """An RFC 3339 time from the API as the chain writes it: UTC, microseconds, `Z`."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def recompute_hash(prev_hash: str, document: dict[str, Any]) -> str:
    """sha256_hex(prev_hash + canonical JSON of the exchange) from an API exchange document."""
    covered = {
        "community": document["community"],
        "seq": document["seq"],
        "id": document["id"],
        "provider": document["provider"],
        "receiver": document["receiver"],
        "amount": document["amount"],
        "description": document["description"],
        "category": document["category"],
        "external_id": document["external_id"],
        "reverses": document["reverses"],
        "created_at": canonical_time(document["created_at"]),
        "entries": [
            {"account": e["account"], "amount": e["amount"], "balance_after": e["balance_after"]}
            for e in sorted(document["entries"], key=lambda e: e["account"])
        ],
    }
    canonical = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev_hash.encode() + canonical.encode("utf-8")).hexdigest()
