"""scripts/ensure-citus and the Citus tests when Citus is missing and cannot be built: the
tests skip and say why, except in CI, where they fail.

A PostgreSQL whose library and extension folders hold no Citus is stood in for by a
`pg_config` (first on PATH) that names empty folders; CITUS_SOURCE_DIR names a folder
without the source.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[3]
ENSURE_CITUS = REPO / "scripts" / "ensure-citus"


@pytest.fixture
def without_citus(tmp_path: Path) -> dict[str, str]:
    """An environment in which Citus is not installed and its source is nowhere."""
    for folder in ("bin", "lib", "share/extension", "no-source"):
        (tmp_path / folder).mkdir(parents=True)
    pg_config = tmp_path / "bin" / "pg_config"
    pg_config.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  --pkglibdir) echo {tmp_path / 'lib'} ;;\n"
        f"  --sharedir) echo {tmp_path / 'share'} ;;\n"
        "  --version) echo 'PostgreSQL 15.18' ;;\n"
        "  *) exit 1 ;;\n"
        "esac\n"
    )
    pg_config.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    env["CITUS_SOURCE_DIR"] = str(tmp_path / "no-source")
    return env


def run_citus_test(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One Citus test in a pytest of its own, with `env`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/integration/citus/test_publish.py",
            "-k",
            "cluster_is_a_coordinator",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ensure_citus_reports_a_missing_source_without_building(without_citus):
    assert subprocess.run([ENSURE_CITUS, "--check"], env=without_citus).returncode == 1
    missing = subprocess.run([ENSURE_CITUS], env=without_citus, capture_output=True, text=True)
    assert missing.returncode == 2
    assert "source (citus-13.2.2.tar.gz) was not found" in missing.stderr
    assert without_citus["CITUS_SOURCE_DIR"] in missing.stderr


def test_citus_tests_skip_saying_why_when_citus_cannot_be_installed(without_citus):
    result = run_citus_test(without_citus)
    assert "1 skipped" in result.stdout, result.stdout
    assert "source (citus-13.2.2.tar.gz) was not found" in result.stdout


def test_in_ci_the_citus_tests_fail_instead_of_skipping(without_citus):
    result = run_citus_test({**without_citus, "CI": "true"})
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout and "skipped" not in result.stdout
    assert "source (citus-13.2.2.tar.gz) was not found" in result.stdout
