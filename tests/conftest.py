"""Hooks for every test (unit and integration): the --compose option, no skips in CI."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compose",
        action="store_true",
        help="run the tests marked compose (a real Docker engine; `make compose-test`)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The Compose stack has its own entry point (`make compose-test`, a step of CI) that
    # provides the Docker engine: elsewhere its tests are deselected, never skipped.
    if not config.getoption("--compose"):
        compose = [item for item in items if item.get_closest_marker("compose")]
        if compose:
            config.hook.pytest_deselected(items=compose)
            items[:] = [item for item in items if not item.get_closest_marker("compose")]
    # CI must never skip silently: a skip there is a failure of the setup.
    if os.environ.get("CI"):
        for item in items:
            if item.get_closest_marker("skip") or item.get_closest_marker("skipif"):
                raise pytest.UsageError(f"{item.nodeid} would be skipped in CI")
