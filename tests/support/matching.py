"""Expectations built from what a client SENT, not from what the server answered.

A load test that compares the ledger with the server's own 201 answers cannot notice a result
handed to the wrong request (inside a group commit, say): the ledger and the answers would agree
with each other and both be wrong. These helpers derive every expected field, entry and balance
from the request bodies, so that each answer can be matched to its own request and the ledger to
the requests that were acknowledged.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PPM = 1_000_000
COMMONS = "@commons"


@dataclass(frozen=True)
class LevyPolicy:
    """A community's levy as the test configured it (the API's `policy.levy`)."""

    rate_ppm: int
    minimum: int
    paid_by: str

    def on(self, amount: int) -> int:
        """The levy on `amount`, as the policy states it: rate rounded half up, at least the
        minimum, at most the amount."""
        proportional = (amount * self.rate_ppm + PPM // 2) // PPM
        return min(amount, max(self.minimum, proportional))

    def as_json(self) -> dict[str, Any]:
        return {"rate_ppm": self.rate_ppm, "minimum": self.minimum, "paid_by": self.paid_by}


def expected_levy(body: dict[str, Any], policy: LevyPolicy | None) -> dict[str, Any] | None:
    """The `levy` field an exchange of `body` must carry under `policy`."""
    if policy is None or body["provider"].startswith("@") or body["receiver"].startswith("@"):
        return None
    amount = policy.on(body["amount"])
    return {"amount": amount, "paid_by": policy.paid_by} if amount else None


def expected_entries(body: dict[str, Any], policy: LevyPolicy | None) -> dict[str, int]:
    """Account -> amount of the entries an exchange of `body` posts under `policy`."""
    provider, receiver, amount = body["provider"], body["receiver"], body["amount"]
    levy = expected_levy(body, policy)
    entries: dict[str, int] = defaultdict(int)
    entries[receiver] -= amount
    entries[provider] += amount
    if levy is not None:
        entries[COMMONS] += levy["amount"]
        entries[provider if levy["paid_by"] == "provider" else receiver] -= levy["amount"]
    return {account: value for account, value in entries.items() if value}


def answer_mismatches(
    body: dict[str, Any],
    document: dict[str, Any],
    *,
    community: str,
    status: str,
    policy: LevyPolicy | None,
) -> list[str]:
    """How `document` (an exchange as answered or listed) differs from what `body` asked for in
    `community`: parties, amount, description, external id, status, levy and, once completed,
    entries. Empty when it is this request's exchange."""
    expected = {
        "community": community,
        "provider": body["provider"],
        "receiver": body["receiver"],
        "amount": body["amount"],
        "description": body["description"],
        "external_id": body.get("external_id"),
        "status": status,
        "levy": expected_levy(body, policy),
    }
    problems = [
        f"{name}: sent {value!r}, answered {document.get(name)!r}"
        for name, value in expected.items()
        if document.get(name) != value
    ]
    if status == "completed":
        entries = {e["account"]: e["amount"] for e in document["entries"]}
        if len(entries) != len(document["entries"]) or entries != expected_entries(body, policy):
            problems.append(
                f"entries: expected {expected_entries(body, policy)}, got {document['entries']}"
            )
        if sum(entries.values()) != 0:
            problems.append(f"entries do not sum to 0: {document['entries']}")
    return problems


def replay_bodies(bodies: Iterable[dict[str, Any]], policy: LevyPolicy | None) -> dict[str, int]:
    """Balances (non-zero only) from the requests of completed exchanges."""
    balances: dict[str, int] = defaultdict(int)
    for body in bodies:
        for account, value in expected_entries(body, policy).items():
            balances[account] += value
    return {account: value for account, value in balances.items() if value}


def expected_reservations_from_bodies(
    bodies: Iterable[dict[str, Any]], policy: LevyPolicy | None
) -> dict[str, tuple[int, int]]:
    """(reserved_debit, reserved_credit) per account that still-pending proposals of `bodies`
    hold: what their entries would take and add."""
    held: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for body in bodies:
        for account, value in expected_entries(body, policy).items():
            held[account][0 if value < 0 else 1] += abs(value)
    return {account: (debit, credit) for account, (debit, credit) in held.items()}


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>[0-9.e+-]+)$")


def group_commit_sizes(metrics_text: str) -> tuple[int, int]:
    """(groups recorded, groups of exactly one request) from `/metrics`'
    `protocoop_group_commit_requests` histogram."""
    groups = single = 0
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        name, labels = match["name"], match["labels"] or ""
        if name == "protocoop_group_commit_requests_count":
            groups += int(float(match["value"]))
        elif name == "protocoop_group_commit_requests_bucket" and 'le="1.0"' in labels:
            single += int(float(match["value"]))
    return groups, single
