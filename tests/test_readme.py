"""The README's set-up commands and Python example stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_names_exactly_the_two_setup_scripts():
    text = README.read_text()
    bash_blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert bash_blocks[:2] == ["bash scripts/main.sh\n", "bash scripts/test.sh\n"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


@pytest.mark.real_model
def test_readme_python_example_runs(smollm2, monkeypatch, capsys):
    import rsp

    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[0]
    monkeypatch.setattr(rsp, "load_model", lambda *a, **k: smollm2)  # reuse the session's loaded model
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert re.search(r"arith-\S+ \d/4 correct, pass@2 = \d\.\d\d", out)
