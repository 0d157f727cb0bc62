"""The examples of the README and docs/ that a `<!-- doctest -->` line marks, and what they
say they print (docs/development.md, "The documentation is tested").

In a marked block, `# → TEXT` (alone on its line, or after code) is a line the code before it
prints; `…` stands for any text and runs of spaces count as one. The lines shown must appear
in that order; lines the page leaves out may come between them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[1]
MARK = "<!-- doctest -->"
SHOWN = "# →"
LANGUAGES = ("sh", "python")
# What the pages name, and what the test serves on instead (rewritten in code and output).
DOCUMENTED_PORTS = {"http": 8000, "grpc": 50051}
DOCUMENTED_PYTHON = ".venv/bin/python"


def pages() -> list[Path]:
    """The README and every page of docs/, in reading order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Step:
    """Code, and the lines the page says it prints."""

    code: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)


@dataclass
class Example:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    steps: list[Step]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def code(self) -> str:
        return "\n".join(line for step in self.steps for line in step.code) + "\n"

    @property
    def shown(self) -> list[str]:
        return [line for step in self.steps for line in step.shown]


def examples(page: Path) -> list[Example]:
    """The marked blocks of `page`, in order."""
    lines = page.read_text().splitlines()
    found = []
    for number, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        fence = number + 1
        language = lines[fence].removeprefix("```").strip() if fence < len(lines) else ""
        if not lines[fence].startswith("```") or language not in LANGUAGES:
            raise ValueError(f"{page.name}:{fence + 1}: {MARK} must precede a sh or python block")
        end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
        found.append(Example(page, fence + 1, language, steps(lines[fence + 1 : end])))
    return found


def steps(block: list[str]) -> list[Step]:
    """A block cut after each run of `# →` lines: each step's code and what it prints."""
    parts = [Step()]
    for line in block:
        code, marker, shown = line.partition(SHOWN)
        if parts[-1].shown and (code.strip() or not marker):
            parts.append(Step())
        if code.strip() or not marker:
            parts[-1].code.append(code.rstrip() if marker else line)
        if marker:
            parts[-1].shown.append(shown.strip())
    return [step for step in parts if step.code or step.shown]


def localized(text: str, ports: dict[str, int], python: str) -> str:
    """`text` with the documented ports replaced by `ports` and the documented interpreter
    by `python`."""
    for name, documented in DOCUMENTED_PORTS.items():
        for host in ("localhost", "127.0.0.1"):
            text = text.replace(f"{host}:{documented}", f"{host}:{ports[name]}")
    return text.replace(DOCUMENTED_PYTHON, python)


def _normal(line: str) -> str:
    return " ".join(line.split())


def _pattern(shown: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in _normal(shown).split("…")))


def missing(shown: list[str], printed: str) -> str | None:
    """None when every line of `shown` is printed, in order; else which one is not."""
    lines = [_normal(line) for line in printed.splitlines() if line.strip()]
    at = 0
    for expected in shown:
        pattern = _pattern(expected)
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return f"not printed (in this order): {expected!r}"
        at += 1
    return None
