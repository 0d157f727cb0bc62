"""The installed package (what the image runs) holds every module the sources have.

Tests import from the editable install, which finds any folder; `pip install .` (the
Dockerfile) ships only the packages pyproject.toml lists, so a new subpackage missing there
works in every test and breaks the image (`make compose-test` found `client.cli` so).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_python_package_in_the_sources_is_listed_for_installation():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    locations = {ROOT / path: name for name, path in setuptools["package-dir"].items()}
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        folder = init.parent
        if any(
            part.startswith(".") or part in ("tests", "bench")
            for part in folder.relative_to(ROOT).parts
        ):
            continue
        for base, name in locations.items():
            if folder.is_relative_to(base):
                found.add(".".join([name, *folder.relative_to(base).parts]))
                break
        else:
            found.add(".".join(folder.relative_to(ROOT).parts))
    missing = sorted(found - listed)
    # One installed name: bench/ and tests/ run from a checkout, never installed.
    assert {name.split(".")[0] for name in listed} == {"aggregator"}
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
