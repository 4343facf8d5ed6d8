"""The Makefile's quick-start targets install what they need, and no more."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def planned_commands(target: str, venv: Path) -> str:
    """What `make TARGET` would run on a machine without a virtualenv (make's dry run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "--dry-run", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_make_run_installs_only_what_serving_needs(tmp_path: Path) -> None:
    commands = planned_commands("run", tmp_path / "venv")
    assert "pip install --quiet -e ." in commands
    assert "[dev]" not in commands
    assert "protocoop serve" in commands


def test_make_test_installs_the_development_tools(tmp_path: Path) -> None:
    commands = planned_commands("test", tmp_path / "venv")
    assert "-e '.[dev]'" in commands
    assert "pytest" in commands
