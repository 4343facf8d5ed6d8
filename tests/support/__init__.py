"""Helpers the tests share (no tests here). Their asserts are rewritten by pytest, so a failing
check inside a helper explains itself like one in a test."""

import pytest

pytest.register_assert_rewrite(
    "tests.support.api",
    "tests.support.checks",
    "tests.support.databases",
    "tests.support.faults",
    "tests.support.ledger",
    "tests.support.live_server",
    "tests.support.matching",
    "tests.support.private_postgres",
    "tests.support.workflows",
)
