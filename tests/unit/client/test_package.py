"""What the client package promises as a whole: no server dependencies, an exception for every
problem code the server writes, and a synchronous client that is exactly the generated one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import protocoop.errors as server_errors
from protocoop.client.errors import BY_CODE

ROOT = Path(__file__).resolve().parents[3]
SERVER_ONLY = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "psycopg",
    "alembic",
    "uvicorn",
    "jinja2",
    "typer",
)


def test_importing_the_client_loads_none_of_the_servers_dependencies() -> None:
    probe = (
        "import json, sys; import protocoop.client; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", probe], text=True))
    assert "httpx" in loaded
    assert not set(SERVER_ONLY) & set(loaded)


def test_every_problem_code_the_server_writes_has_its_exception() -> None:
    codes = {
        cls.code
        for cls in vars(server_errors).values()
        if isinstance(cls, type) and issubclass(cls, server_errors.ProblemError)
    }
    assert codes - {"bad_request"} <= set(BY_CODE)
    for code, cls in BY_CODE.items():
        assert cls.code == code


def test_the_sync_client_is_the_one_generated_from_the_async_one() -> None:
    check = subprocess.run(
        [sys.executable, "scripts/unasync_client.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
