"""The documents' recipes run as written, against a real `protocoop serve`: the hash-chain verifier
of docs/design.md §1."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.live_server import LiveServer, admin_call, create_tight_community

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def shell_block_containing(document: Path, marker: str) -> str:
    """The ```sh block of `document` that holds `marker`."""
    blocks = re.findall(r"```sh\n(.*?)```", document.read_text(encoding="utf-8"), flags=re.S)
    matching = [block for block in blocks if marker in block]
    assert len(matching) == 1, f"expected one ```sh block with {marker!r}, found {len(matching)}"
    return matching[0]


@pytest.mark.slow
def test_the_chain_verifier_follows_every_page_of_the_ledger(live_server: LiveServer) -> None:
    create_tight_community(live_server, "riverside", ["alice", "bob"], -10, 10)
    path = "/v1/communities/riverside/exchanges"
    pairs = [("alice", "bob"), ("bob", "alice")]
    admin_call(
        live_server,
        "POST",
        f"{path}:batch",
        json={
            "exchanges": [
                {"provider": p, "receiver": r, "amount": 1, "description": f"hour {n}"}
                for n, (p, r) in ((n, pairs[n % 2]) for n in range(1000))
            ]
        },
    )
    for n in range(5):
        provider, receiver = pairs[n % 2]
        admin_call(
            live_server,
            "POST",
            path,
            json={"provider": provider, "receiver": receiver, "amount": 2, "description": "ü"},
        )
    # Two intertrades: riverside's sides carry an intertrade_id, which the chain covers.
    create_tight_community(live_server, "hillside", ["hana"], -10, 10)
    link = {"a": "riverside", "b": "hillside", "rate": {"a": 1, "b": 1}, "a_cap": 5, "b_cap": 5}
    admin_call(live_server, "POST", "/v1/links", json=link)
    for provider, receiver_community, receiver in (
        ("hillside/hana", "riverside", "alice"),
        ("riverside/bob", "hillside", "hana"),
    ):
        body = {"provider": provider, "receiver": receiver, "amount": 1, "description": "bread"}
        admin_call(
            live_server, "POST", f"/v1/communities/{receiver_community}/intertrades", json=body
        )
    newest = admin_call(live_server, "GET", path, params={"limit": 1000, "after_seq": 1006})
    last_hash = newest.json()["items"][-1]["hash"]

    result = subprocess.run(
        ["bash", "-c", shell_block_containing(DESIGN, "chain verified")],
        env={**os.environ, "API": live_server.base_url, "TOKEN": str(live_server.admin_token)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"chain verified: 1007 exchanges, up to {last_hash}"
