"""Fuzzing: schemathesis sends generated requests — valid ones, and invalid ones on purpose — to
every operation of a real `protocoop serve`, read from its live `/openapi.json`, as a key of every
role (admin, and the treasurer, app and auditor of a community with members and exchanges, so that
paths reach real resources); list cursors are often forged ones and exchange metadata often odd
(tests/support/fuzz_hooks.py). No answer may be a 5xx; every answer must have a documented status,
content type (`application/problem+json` for problems, `text/csv` when asked for where documented),
headers and body schema; invalid input must be refused; a request without the key gets 401; a
method a path does not have gets 405 with `Allow`. Afterwards every community's audit is ok and
`protocoop check` passes.

Each backend's test starts one server and runs the `schemathesis` command once per role (the
reports of the runs that failed are the failure message), with tests/support/fuzz_hooks.py. The
short pass CI runs: examples, coverage (admin only) and fuzzing phases, `PROTOCOOP_FUZZ_EXAMPLES`
(default 10) generated requests per operation. `make fuzz` (`PROTOCOOP_FUZZ=long`) runs a long
pass: coverage for every role, the stateful phase, 300 examples.
`PROTOCOOP_FUZZ_SEED` replays a run (schemathesis prints its seed).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocoop.auth.roles import Role
from tests.support.api import every_item
from tests.support.databases import BACKENDS
from tests.support.live_server import LiveServer, protocoop_command, serving

# Not exclusive: nothing here measures time. Each backend's roles and the audit after them share
# one server, in order, inside one test, so `make test`'s parallel pass may run it on any worker.
pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

LONG = os.environ.get("PROTOCOOP_FUZZ", "") == "long"
EXAMPLES = int(os.environ.get("PROTOCOOP_FUZZ_EXAMPLES", "300" if LONG else "10"))
SEED = os.environ.get("PROTOCOOP_FUZZ_SEED")
RUN_TIMEOUT_S = 4 * 3600 if LONG else 900
HOOKS = Path(__file__).resolve().parents[1] / "support" / "fuzz_hooks.py"
COMMUNITY = "riverside"
ROLES = [role.value for role in Role]
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
]
"""No 5xx; documented status, content type, headers and schema; invalid input refused; 401
without the key; 405 with `Allow` for other methods; (stateful) deleted things stay deleted and
created ones can be read."""
CSV = "text/csv"


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(position: dict[str, Any]) -> str:
    return _cursor(json.dumps(position).encode())


FORGED_CURSORS = [
    _cursor(b"[" * 1536),  # deeper than the JSON parser's stack, as long as a cursor may be
    _cursor(b'{"after_seq":' + b"9" * 400 + b"}"),
    _position({"after_time": "2026-01-01T00:00:00", "after_id": "x"}),  # a naive time
    _position({"after_time": "2026-01-01", "after_id": "x"}),  # a date
    _position({"after_time": "9999-12-31T23:59:59-05:00", "after_id": "x"}),
    _position({"after_seq": 2**64}),
    _position({"after_seq": True}),
    _position({"from_seq": 5, "to_seq": 1, "after_seq": 3}),  # a window that ends before it starts
    _position({"as_of_seq": 10**6, "after": "a"}),
    _position({"after": ["a"]}),
    _position({"before": 1e308}),
]
"""Cursors no list gave out, shaped to reach what a cursor's contents could break."""


def _admin(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.request(
            method, path, headers={"Authorization": f"Bearer {server.admin_token}"}, **kwargs
        )
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return response


@dataclass
class FuzzTarget:
    """A live server with a community to fuzz, a key of every role, and what the fuzzer saw."""

    server: LiveServer
    tokens: dict[str, str] = field(default_factory=dict)
    spared_keys: set[str] = field(default_factory=set)
    """Ids of the keys the fuzzer authenticates with: it must not revoke them."""
    csv_operations: set[str] = field(default_factory=set)
    """`METHOD /path` of the operations documenting a `text/csv` answer."""
    answers: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    """(role, operation, status) -> how many answers."""

    def arrange(self) -> None:
        """The community, a key of every role for it (and the server's admin key), and what the
        OpenAPI document says is CSV."""
        _admin(
            self.server,
            "POST",
            "/v1/communities",
            json={
                "id": COMMUNITY,
                "name": "Riverside",
                "unit": {"code": "HOUR", "name": "hour", "scale": 0},
                "default_lower_limit": -1000,
            },
        )
        self.tokens["admin"] = self.server.admin_token
        for role in ROLES:
            if role == "admin":
                continue
            key = _admin(
                self.server, "POST", "/v1/api-keys", json={"role": role, "community": COMMUNITY}
            ).json()
            self.tokens[role] = key["token"]
        listed = _admin(self.server, "GET", "/v1/api-keys", params={"limit": 1000}).json()
        self.spared_keys = {key["id"] for key in listed["items"]}
        document = httpx.get(f"{self.server.base_url}/openapi.json", timeout=30.0).json()
        self.csv_operations = {
            f"{method.upper()} {path}"
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if any(CSV in answer.get("content", {}) for answer in operation["responses"].values())
        }

    def resources_for(self, role: str) -> dict[str, list[Any]]:
        """Fresh members for `role`'s pass (earlier passes may have closed theirs), a completed
        and a pending exchange between them, and two keys it may revoke."""
        _admin(self.server, "PATCH", f"/v1/communities/{COMMUNITY}", json={"status": "active"})
        members = [f"{role}-{name}" for name in ("alice", "bob", "carol")]
        for member in members:
            _admin(
                self.server,
                "POST",
                f"/v1/communities/{COMMUNITY}/members",
                # Explicit limits: earlier passes may have changed the community's defaults.
                json={
                    "id": member,
                    "name": member.title(),
                    "lower_limit": -1000,
                    "upper_limit": None,
                },
            )
        exchanges = f"/v1/communities/{COMMUNITY}/exchanges"
        given = {"provider": members[0], "receiver": members[1], "amount": 5, "description": "x"}
        completed = _admin(self.server, "POST", exchanges, json=given).json()["id"]
        proposed = {**given, "receiver": members[2], "pending": True}
        pending = [_admin(self.server, "POST", exchanges, json=proposed).json()["id"]]
        pending.append(_admin(self.server, "POST", exchanges, json=proposed).json()["id"])
        keys = [
            _admin(
                self.server, "POST", "/v1/api-keys", json={"role": "app", "community": COMMUNITY}
            ).json()["id"]
            for _ in range(2)
        ]
        return {
            "communities": [COMMUNITY],
            "members": [*members, "@commons"],
            "exchanges": [completed, *pending],
            "keys": keys,
        }


def _config(target: FuzzTarget, role: str, resources: dict[str, list[Any]]) -> dict[str, Any]:
    """Schemathesis settings (its `schemathesis.toml`) for fuzzing as `role`."""
    members = {"dictionary": "members", "probability": 0.8}
    amounts = {"dictionary": "amounts", "probability": 0.8}
    settings: dict[str, Any] = {
        "headers": {"Authorization": f"Bearer {target.tokens[role]}"},
        "hooks": str(HOOKS),
        "workers": 1,
        "request-timeout": 60,
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "generation": {"max-examples": EXAMPLES},
        "phases": {
            "coverage": {"enabled": LONG or role == "admin"},
            "stateful": {"enabled": LONG},
        },
        "checks": {"enabled": False, **{check: {"enabled": True} for check in CHECKS}},
        "dictionaries": {
            **{name: {"values": values} for name, values in resources.items()},
            "amounts": {"values": [1, 2, 3, 5, 8]},
            "cursors": {"values": FORGED_CURSORS},
        },
        # Real resources most of the time, so that requests get past "not found"; generated
        # values the rest of the time.
        "parameters": {
            "path.community_id": {"dictionary": "communities", "probability": 0.9},
            "path.member_id": members,
            "path.exchange_id": {"dictionary": "exchanges", "probability": 0.8},
            "path.key_id": {"dictionary": "keys", "probability": 0.8},
            "query.member": {"dictionary": "members", "probability": 0.5},
            "query.cursor": {"dictionary": "cursors", "probability": 0.5},
            "body.community": {"dictionary": "communities", "probability": 0.5},
            "body.provider": members,
            "body.receiver": members,
            "body.amount": amounts,
            "body.exchanges[*].provider": members,
            "body.exchanges[*].receiver": members,
            "body.exchanges[*].amount": amounts,
        },
    }
    if SEED is not None:
        settings["seed"] = int(SEED)
    return settings


def _toml(value: Any) -> str:
    """`value` as a TOML value (strings, numbers, booleans, lists and tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: same escapes
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_operation_answers_as_documented_and_every_ledger_stays_whole(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`protocoop serve` on a fresh database; one `schemathesis run` as each role in turn; then
    every community's audit and `protocoop check`."""
    (workdir := tmp_path / "server").mkdir()
    with serving(backend, workdir, request) as server:
        target = FuzzTarget(server)
        target.arrange()
        failures = [
            failure
            for role in ROLES
            if (failure := _fuzz(target, role, tmp_path / role)) is not None
        ]
        assert not failures, "\n\n".join(failures)
        _assert_every_ledger_whole(target)


def _fuzz(target: FuzzTarget, role: str, workdir: Path) -> str | None:
    """One `schemathesis run` against the live document as `role`: its report if it failed."""
    server = target.server
    workdir.mkdir(parents=True)
    settings = _config(target, role, target.resources_for(role))
    config_file = workdir / "schemathesis.toml"
    config_file.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
    answers = workdir / "answers.jsonl"
    env = {
        **os.environ,
        "PROTOCOOP_FUZZ_SPARED_KEYS": ",".join(sorted(target.spared_keys)),
        "PROTOCOOP_FUZZ_CSV_OPERATIONS": ";".join(sorted(target.csv_operations)),
        "PROTOCOOP_FUZZ_ANSWERS": str(answers),
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--no-color",
            "--config-file",
            str(config_file),
            "run",
            f"{server.base_url}/openapi.json",
        ],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    (workdir / "schemathesis.out").write_text(run.stdout + run.stderr)
    print(f"\n[{server.backend}, {role}] schemathesis: {run.stdout[-1500:]}")
    if answers.exists():
        for line in answers.read_text().splitlines():
            answer = json.loads(line)
            target.answers[(role, answer["operation"], answer["status"])] += 1
    if run.returncode == 0:
        return None
    return f"schemathesis as {role}:\n{run.stdout}\n{run.stderr}"


def _assert_every_ledger_whole(target: FuzzTarget) -> None:
    """Every role got through, something was written, and the ledgers audit clean."""
    server = target.server
    summary = _summary(target.answers)
    print(f"\n[{server.backend}] answers by role and operation:\n{summary}")

    for role in ROLES:
        successes = sum(
            n
            for (r, operation, status), n in target.answers.items()
            if r == role and " /v1/" in operation and status < 300
        )
        assert successes, f"{role}: no request succeeded (is the key sent?)\n{summary}"
    changed = sum(
        n
        for (_, operation, status), n in target.answers.items()
        if not operation.startswith("GET ") and status < 300
    )
    assert changed, f"no write succeeded: the fuzzer never got past validation\n{summary}"

    communities = [
        community["id"]
        for community in every_item(partial(_admin, server, "GET"), "/v1/communities")
    ]
    broken = {}
    for community in communities:
        audit = _admin(server, "GET", f"/v1/communities/{community}/audit").json()
        if not audit["ok"]:
            broken[community] = audit["problems"]
    assert broken == {}

    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env.update(PROTOCOOP_DATABASE_URL=server.database_url, PROTOCOOP_AUTO_MIGRATE="false")
    check = subprocess.run(
        [*protocoop_command(), "check"],
        env=env,
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert check.returncode == 0, f"protocoop check:\n{check.stdout}\n{check.stderr}"
    assert len(check.stdout.splitlines()) >= len(communities)


def _summary(answers: Counter[tuple[str, str, int]]) -> str:
    by_operation: dict[tuple[str, str], Counter[int]] = {}
    for (role, operation, status), count in answers.items():
        by_operation.setdefault((role, operation), Counter())[status] += count
    return "\n".join(
        f"  {role:9} {operation:70} {dict(sorted(statuses.items()))}"
        for (role, operation), statuses in sorted(by_operation.items())
    )
