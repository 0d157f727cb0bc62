"""The README's and docs' examples, run as a reader runs them, print what the pages say.

Each page's marked examples (tests/doc_examples.py) run in page order against a server
process of their own on an empty database: each `sh` block in a fresh `bash -e -o pipefail`,
each `python` block in a fresh interpreter, both from the repository root. The server listens
on free ports; the examples' ports (8000, 50051) are rewritten to them, `AGGREGATOR_TARGET`
points the command line client there, and `.venv/bin/python` is this interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import doc_examples
from tests.support import ServerProcess

pytestmark = pytest.mark.integration

PAGES = [page for page in doc_examples.pages() if doc_examples.examples(page)]
BETWEEN_STEPS = 'printf "\\n"'  # a step's last line may lack its newline (curl's answers do)


def local(text: str, server: ServerProcess) -> str:
    """`text` as it reads against `server` (its ports, this interpreter)."""
    ports = {"http": server.http_port, "grpc": server.port}
    return doc_examples.localized(text, ports, sys.executable)


def run(example: doc_examples.Example, server: ServerProcess) -> str:
    """Run `example` against `server`; what it printed on stdout."""
    if example.language == "sh":
        steps = ["\n".join(step.code) + "\n" + BETWEEN_STEPS for step in example.steps]
        command = ["bash", "-e", "-o", "pipefail", "-c", local("\n".join(steps), server)]
    else:
        command = [sys.executable, "-c", local(example.code, server)]
    done = subprocess.run(
        command,
        cwd=doc_examples.ROOT,
        env={**os.environ, "AGGREGATOR_TARGET": server.target},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"{example.where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_example_of_the_page_prints_what_the_page_shows(db_url: str, page: Path):
    server = ServerProcess(db_url, http=True).start()
    try:
        for example in doc_examples.examples(page):
            printed = run(example, server)
            shown = [local(line, server) for line in example.shown]
            assert shown, f"{example.where}: an example shows no output to check"
            problem = doc_examples.missing(shown, printed)
            assert problem is None, f"{example.where}: {problem}\nit printed:\n{printed}"
    finally:
        assert server.stop() == 0


def test_the_readme_and_the_api_pages_have_examples_that_run():
    names = {page.name for page in PAGES}
    assert {"README.md", "http-api.md", "grpc-api.md", "client.md"} <= names
