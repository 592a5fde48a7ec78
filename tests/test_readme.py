"""The README's Python snippets run as written (except those marked as needing the Hub)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN_MARK = "<!-- not run by the tests"


def python_snippets() -> list[tuple[int, str]]:
    text = README.read_text()
    snippets = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        preceding = text[: match.start()].rstrip().splitlines()[-1] if match.start() else ""
        if not preceding.startswith(NOT_RUN_MARK):
            line = text[: match.start()].count("\n") + 1
            snippets.append((line, match.group(1)))
    return snippets


def test_readme_has_runnable_snippets():
    assert len(python_snippets()) >= 1


@pytest.mark.parametrize("line,code", python_snippets(), ids=lambda value: f"line{value}" if isinstance(value, int) else "")
def test_readme_snippet_runs(line, code, tmp_path, monkeypatch, fresh_accelerate_state):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text()
