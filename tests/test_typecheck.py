"""Type-checks the public API: runs ``mypy --strict`` on typecheck_api.py (a few seconds)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (dev extra)"
)
def test_public_api_passes_mypy_strict() -> None:
    path = TESTS / "typecheck_api.py"
    # From the project root, so that mypy reads the [tool.mypy] section of pyproject.toml.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(path)],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
