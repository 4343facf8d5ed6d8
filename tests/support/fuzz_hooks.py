"""Schemathesis hooks for tests/system/test_fuzz.py (loaded by the `schemathesis` command it
runs, through the `hooks` setting of the generated config file; settings come in environment
variables).

- The keys the fuzzer authenticates with are never revoked: a `DELETE /v1/api-keys/{key_id}` of one
  of them is sent for a key that does not exist instead (the fuzzer would lock itself out).
- Operations that document a `text/csv` answer are asked for CSV every other valid request.
- Generated Idempotency-Keys repeat a lot ("0", "00"), so most writes would only test key reuse
  (`422 idempotency_key_reused`, tested elsewhere): every other valid request gets a fresh one.
- `wait` (long polling of the event feed) is capped at 1 s: the fuzzer is not testing patience.
- Every other valid exchange posted (alone, in a batch, or proposed) carries metadata the API must
  refuse or keep exactly: integers at and past 64 bits, nesting at and past the 32-level bound.
  Its answer must be documented, never a 5xx.
  (List cursors are forged through the `cursors` dictionary of tests/system/test_fuzz.py.)
- Every answer's status is appended to a file, for the test's summary and its checks that the
  fuzzer reached real resources.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import uuid
from typing import Any

import schemathesis

SPARED_KEYS = set(filter(None, os.environ.get("PROTOCOOP_FUZZ_SPARED_KEYS", "").split(",")))
CSV_OPERATIONS = set(filter(None, os.environ.get("PROTOCOOP_FUZZ_CSV_OPERATIONS", "").split(";")))
ANSWERS = os.environ.get("PROTOCOOP_FUZZ_ANSWERS")
MISSING_KEY = "key_0000000000000000"
MAX_WAIT_S = 1

EXCHANGE_POSTS = {
    "POST /v1/communities/{community_id}/exchanges",
    "POST /v1/communities/{community_id}/exchanges:batch",
}


def _nested(levels: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for _ in range(levels - 1):
        document = {"a": document}
    return document


def _nested_lists(levels: int) -> list[Any]:
    document: list[Any] = []
    for _ in range(levels - 1):
        document = [document]
    return document


ODD_METADATA: list[dict[str, Any]] = [
    {"n": 2**63 - 1, "m": -(2**63)},
    {"n": 2**63},
    {"n": [-(2**63) - 1]},
    {"n": 10**40},
    _nested(32),
    _nested(33),
    _nested(300),
    {"a": _nested_lists(40)},
]
"""Metadata at and past what the API takes (64-bit integers, 32 levels)."""

_calls = itertools.count()
_odd = itertools.cycle(ODD_METADATA)
_lock = threading.Lock()


def _label(case: schemathesis.Case) -> str:
    return f"{case.operation.method.upper()} {case.operation.path}"


def _is_positive(case: schemathesis.Case) -> bool:
    # Editing a negative case makes schemathesis revalidate it, and a request meant to go without
    # a required header (the key) would then be sent with it.
    return case.meta is None or not case.meta.generation.mode.is_negative


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    label = _label(case)
    path_parameters = case.path_parameters or {}
    if label == "DELETE /v1/api-keys/{key_id}" and path_parameters.get("key_id") in SPARED_KEYS:
        path_parameters["key_id"] = MISSING_KEY
    if label in CSV_OPERATIONS and _is_positive(case) and next(_calls) % 2:
        case.headers = {**(case.headers or {}), "Accept": "text/csv"}
    if "Idempotency-Key" in (case.headers or {}) and _is_positive(case) and next(_calls) % 2:
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    if label in EXCHANGE_POSTS and _is_positive(case) and next(_calls) % 2:
        _give_odd_metadata(case.body)
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > MAX_WAIT_S:
        case.query["wait"] = MAX_WAIT_S


def _give_odd_metadata(body: Any) -> None:
    """Put the next odd metadata into an exchange body, or the first item of a batch's."""
    if isinstance(body, dict) and isinstance(body.get("exchanges"), list) and body["exchanges"]:
        body = body["exchanges"][0]
    if isinstance(body, dict):
        body["metadata"] = next(_odd)


@schemathesis.hook
def after_call(
    context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response
) -> None:
    if ANSWERS is None or case.method.upper() != case.operation.method.upper():
        return  # not a probe with a method the operation does not have
    line = json.dumps({"operation": _label(case), "status": response.status_code})
    with _lock, open(ANSWERS, "a", encoding="utf-8") as answers:
        answers.write(line + "\n")
