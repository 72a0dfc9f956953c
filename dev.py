#!/usr/bin/env python3
"""The two commands a newcomer runs; each sets up its own environment first.

    python3 dev.py demo     # the demo: a client surviving server restarts
    python3 dev.py test     # the whole test suite

Set-up: a virtual environment in .venv with this package installed in editable mode and
its extras. Extra arguments go to the demo or to pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = {"demo": "[cli]", "test": "[dev]"}  # dev includes cli


def set_up(extras: str) -> None:
    if not PYTHON.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.create(VENV, with_pip=True)
    subprocess.run(
        [
            str(PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--editable",
            f"{ROOT}{extras}",
        ],
        check=True,
    )


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in EXTRAS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, args = sys.argv[1], sys.argv[2:]
    set_up(EXTRAS[command])
    if command == "demo":
        argv = [str(PYTHON), "-m", "resilient_ws.tools", "demo", *args]
    else:
        argv = [str(PYTHON), "-m", "pytest", *args]
    return subprocess.run(argv, cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
