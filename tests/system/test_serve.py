"""`protocoop serve` really serves: on a SQLite file that does not exist yet it migrates, becomes
ready, and answers `/docs` and `/openapi.json`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

PROTOCOOP = Path(sys.executable).parent / "protocoop"
READY_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_ready(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"protocoop serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"protocoop serve was not ready within {READY_TIMEOUT_S}s:\n{log.read_text()}")


@pytest.mark.slow
def test_serve_migrates_a_new_sqlite_file_and_serves_the_docs(tmp_path: Path) -> None:
    database = tmp_path / "data" / "protocoop.db"
    database.parent.mkdir()
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env["PROTOCOOP_DATABASE_URL"] = f"sqlite:///{database}"
    log = tmp_path / "serve.log"

    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(PROTOCOOP), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        assert not database.exists()
        _wait_until_ready(base_url, server, log)
        assert database.exists()

        docs = httpx.get(f"{base_url}/docs", timeout=10)
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")
        assert "swagger" in docs.text.lower()

        openapi = httpx.get(f"{base_url}/openapi.json", timeout=10)
        assert openapi.status_code == 200
        document = openapi.json()
        assert document["info"]["title"] == "protocoop"
        assert {"/v1/communities", "/v1/api-keys", "/readyz"} <= set(document["paths"])

        assert httpx.get(f"{base_url}/healthz", timeout=10).json() == {"status": "ok"}
        unauthenticated = httpx.get(f"{base_url}/v1/communities", timeout=10)
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["content-type"].startswith("application/problem+json")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    # a graceful shutdown (uvicorn re-raises SIGTERM once it has finished, so -15 is normal)
    assert server.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


@pytest.mark.slow
def test_serve_on_a_database_never_migrated_says_to_run_db_upgrade(
    backend: str, empty_database_url: str, tmp_path: Path
) -> None:
    """At start, in its log; then every API request is 503 with that advice and no advice to
    retry (retrying cannot help), and `/readyz` is not ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env["PROTOCOOP_DATABASE_URL"] = empty_database_url
    env["PROTOCOOP_AUTO_MIGRATE"] = "false"
    if backend == "sqlite":
        Path(make_url(empty_database_url).database or "").touch()  # a database, no schema
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(PROTOCOOP), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert "the database schema is not migrated: run protocoop db upgrade" in log.read_text()

        assert httpx.get(f"{base_url}/readyz", timeout=10).status_code == 503
        token = "pcp_" + "x" * 43
        for method, path in (
            ("GET", "/v1/communities"),
            ("POST", "/v1/communities/riverside/exchanges"),
        ):
            response = httpx.request(
                method,
                f"{base_url}{path}",
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"},
                json={"provider": "alice", "receiver": "bob", "amount": 1, "description": "x"},
                timeout=10,
            )
            assert response.status_code == 503, response.text
            problem = response.json()
            assert problem["code"] == "unavailable"
            assert "not migrated" in problem["detail"]
            assert "protocoop db upgrade" in problem["detail"]
            assert "retry" not in problem["detail"].lower()
            assert "retry-after" not in response.headers
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
