"""The README's Python blocks run as written; every `paper-repro` command the docs name exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from paper_repro import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "notebooks").glob("*.ipynb"))]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("i", range(len(_python_blocks((ROOT / "README.md").read_text()))))
def test_readme_python_block_runs(i, tmp_path):
    code = _python_blocks((ROOT / "README.md").read_text())[i]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_named_command_exists():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    known = set(sub.choices)
    named = set()
    for p in DOCS:
        # a command is `paper-repro X` in code: after a backtick, bin/, or at a line's start
        named |= set(re.findall(r"(?:`|bin/|^|\"|\$ )paper-repro ([a-z][a-z-]+)",
                                p.read_text(), re.M))
    missing = sorted(named - known)
    assert not missing, f"docs name commands that do not exist: {missing}"


def test_docs_do_not_point_outside_the_repository():
    for p in [*DOCS, *sorted((ROOT / "paper_repro").rglob("*.py")),
              *sorted((ROOT / "benchmarks").glob("*.py")), ROOT / "Makefile"]:
        text = p.read_text()
        assert "SCIENCE.md" not in text and "../shared" not in text, p


def test_every_test_the_docs_name_exists():
    """``tests/test_x.py::name`` (and ``::other`` after it) in the docs names a real test."""
    missing, seen = [], 0
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"tests/(test_\w+)\.py((?:::\w+)?(?:`, `::\w+)*)", text):
            path = ROOT / "tests" / f"{m.group(1)}.py"
            names = re.findall(r"::(\w+)", m.group(2))
            seen += 1
            if not path.exists():
                missing.append(f"{doc.name}: {path.name}")
                continue
            src = path.read_text()
            missing += [f"{doc.name}: {path.name}::{n}" for n in names
                        if not re.search(rf"^def {n}\b", src, re.M)]
    assert seen > 20 and not missing, missing
