"""The tree's habits (#17): `ruff format` leaves it unchanged and mypy passes with the project's settings.

scripts/test.sh runs the same checks before pytest; these tests make a plain `pytest` run report them too.
mypy comes with the `dev` extra (scripts/env.sh installs it); without it the test fails rather than skips.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATTED = ["."]  # the whole tree (git-ignored paths aside): Python files and the code blocks in Markdown


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_format_leaves_the_tree_unchanged():
    assert importlib.util.find_spec("ruff") is not None, (
        "ruff is not installed in this environment: install the dev extra (scripts/env.sh does)"
    )
    result = _run([sys.executable, "-m", "ruff", "format", "--check", *FORMATTED])
    assert result.returncode == 0, (
        "ruff format --check would reformat (run `ruff format .`):\n" + result.stdout + result.stderr
    )


def test_mypy_passes():
    assert importlib.util.find_spec("mypy") is not None, (
        "mypy is not installed in this environment: install the dev extra (scripts/env.sh does)"
    )
    # No arguments: the files and settings come from [tool.mypy] in pyproject.toml.
    result = _run([sys.executable, "-m", "mypy"])
    assert result.returncode == 0, "mypy reports errors:\n" + result.stdout + result.stderr
