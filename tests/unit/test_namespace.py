"""One installed name: the runtime imports as aggregator.*, and `python -m server` in a
checkout delegates to it without importing any module twice under two names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def imported_modules(*args: str) -> list[str]:
    """Module names a `python -X importtime ARGS --help` run imports, from the repo root."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m")
    return re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, re.M)


def test_python_m_server_and_client_import_each_module_once_under_aggregator():
    for package in ("server", "client"):
        modules = imported_modules("-m", package)
        assert f"aggregator.{package}.main" in modules or f"aggregator.{package}.cli" in modules
        # Only the checkout's thin package goes by the bare name (its __main__ runs as __main__).
        bare = [m for m in modules if re.match(r"(server|storage|client|bench)(\.|$)", m)]
        assert bare == [package], bare
