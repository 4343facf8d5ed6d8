"""`/metrics` counts what posting decided: exchanges recorded, and refusals by their problem
code, as the writer decided them (on SQLite and PostgreSQL)."""

from __future__ import annotations

import re

from tests.support.api import Api
from tests.support.ledger import post, posted, problem


def counter(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of `/metrics`, 0 when it has not been counted yet."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_refusals_are_counted_by_their_problem_code_and_exchanges_by_their_number(
    api: Api, keys: dict[str, str]
) -> None:
    admin, app = api.as_(keys["admin"]), api.as_(keys["app"])
    before = admin.get("/metrics").text
    posted(app, "alice", "bob", 5)
    for _ in range(2):
        problem(post(app, "alice", "bob", 1_000), 409, "limit_exceeded")

    after = admin.get("/metrics").text
    refused = "protocoop_posts_refused_total"
    assert (
        counter(after, refused, 'code="limit_exceeded"')
        - counter(before, refused, 'code="limit_exceeded"')
        == 2
    )
    recorded = "protocoop_exchanges_recorded_total"
    assert counter(after, recorded) - counter(before, recorded) == 1
