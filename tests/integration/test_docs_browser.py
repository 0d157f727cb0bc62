"""/docs renders in a real browser with nothing but loopback: Swagger UI's files are ours."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from tests.integration.conftest import server_config

pytestmark = pytest.mark.integration


def test_swagger_ui_shows_every_operation_offline(db_url, tmp_path):
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is needed (.ci/run installs it): apt-get install chromium"
    with Server(server_config(db_url, http_port=free_port())) as running:
        page = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                # Every name but loopback fails to resolve: a CDN asset could not load.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--virtual-time-budget=30000",  # let the page's scripts run to completion
                "--dump-dom",
                f"http://127.0.0.1:{running.http_port}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    # Swagger UI builds one block per operation from /openapi.json once its script has run.
    # (Swagger UI breaks long paths after each slash with <wbr>: /v1<wbr>/logs.)
    paths = re.findall(
        r'class="opblock-summary-path"[^>]*>(?:<[^>]*>)*([^<]+)', dom.replace("<wbr>", "")
    )
    methods = re.findall(r'class="opblock-summary-method">([A-Z]+)<', dom)
    assert {"/publish", "/events", "/stats", "/health", "/v1/logs"} <= set(paths), dom[-3000:]
    assert methods.count("POST") == 2 and methods.count("GET") == 4
    assert "cdn." not in dom
