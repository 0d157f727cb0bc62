"""The docs against what needs no server: the options of `--help`, links and their headings,
and the reading of the examples that tests/integration/test_docs.py runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import doc_examples

ROOT = doc_examples.ROOT
# The OpenTelemetry logs page comes with the OTLP face (DESIGN: "OTLP logs face").
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(page: Path) -> str:
    """`page` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of the page's headings."""
    made: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in made:
            n += 1
            anchor = f"{slug}-{n}"
        made.add(anchor)
    return made


def test_every_relative_link_leads_to_a_file_and_a_heading_that_exist():
    broken = []
    for page in doc_examples.pages():
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = set(LINK.findall(prose(ROOT / "README.md")))
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages <= {target.partition("#")[0] for target in linked}


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first = readme.index("```sh")
    assert readme[first:].splitlines()[1].startswith("make run")
    assert readme[first:].splitlines()[2].startswith("make test")
    assert "```mermaid" in readme


def test_every_server_option_is_documented_with_its_variable_and_default():
    done = subprocess.run(
        [sys.executable, "-m", "server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    # One entry per option: a line "  --flag ..." and the lines indented under it.
    entries = re.split(r"\n(?=  -)", done.stdout.split("\noptions:\n", 1)[1])
    options = []
    for entry in entries:
        text = " ".join(entry.split())
        found = re.search(r"\[env ([A-Z_]+)\] \(default: ([^)]*)\)$", text)
        if found:
            options.append((text.split()[0].rstrip(","), *found.groups()))
    assert len(options) >= 35
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`--"):
            for flag in re.findall(r"`(--[a-z-]+)`", cells[0]):
                rows[flag] = cells
    for flag, variable, default in options:
        assert flag in rows, f"{flag} is not in docs/configuration.md"
        assert f"`{variable}`" in rows[flag][1], flag
        shown = rows[flag][2]
        if default in ("None", "False"):
            assert shown.startswith(("unset", "off", "`--")), (flag, shown)
        else:
            assert shown.startswith(f"`{default.removesuffix('.0')}`"), (flag, default, shown)


def test_steps_split_code_from_what_it_prints():
    steps = doc_examples.steps(
        [
            "curl -s localhost:8000/health",
            '# → {"status":"ok"}',
            "# a plain comment",
            "x=1",
            "print(x)  # → 1",
            "# → 2",
        ]
    )
    assert [(step.code, step.shown) for step in steps] == [
        (["curl -s localhost:8000/health"], ['{"status":"ok"}']),
        (["# a plain comment", "x=1", "print(x)"], ["1", "2"]),
    ]


@pytest.mark.parametrize(
    ("shown", "printed", "found"),
    [
        (["a b", "c"], "a   b\nx\nc\n", True),  # spaces are one; lines between are allowed
        (["c", "a b"], "a b\nc\n", False),  # order counts
        (['{"uptime":…,"n":1}'], '{"uptime":3.2,"n":1}', True),
        (['{"uptime":…,"n":1}'], '{"uptime":3.2,"n":2}', False),  # the rest must match
        (["ok"], "not ok", False),  # a whole line, not a part of one
    ],
)
def test_shown_lines_match_whole_printed_lines_in_order(shown, printed, found):
    assert (doc_examples.missing(shown, printed) is None) is found


def test_examples_are_rewritten_to_the_test_servers_ports():
    text = "curl localhost:8000/x; AggregatorClient('127.0.0.1:50051'); .venv/bin/python -m client"
    assert doc_examples.localized(text, {"http": 1, "grpc": 2}, "/py") == (
        "curl localhost:1/x; AggregatorClient('127.0.0.1:2'); /py -m client"
    )


def test_a_mark_before_anything_but_a_sh_or_python_block_is_an_error(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(f"{doc_examples.MARK}\n```json\n{{}}\n```\n")
    with pytest.raises(ValueError, match="must precede a sh or python block"):
        doc_examples.examples(page)
