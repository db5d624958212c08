"""The README's set-up commands and its three opening examples stay true.

The first two examples (rsp.attach, rsp.generate) are executed where a user would run them, in a
venv that holds only the installed wheel (tests/test_packaging.py); the vLLM example runs here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_names_exactly_the_two_setup_scripts():
    text = README.read_text()
    bash_blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert bash_blocks[:2] == ["bash scripts/main.sh\n", "bash scripts/test.sh\n"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_readme_opens_with_attach_generate_and_vllm_examples():
    attach, generate, vllm = python_blocks()[:3]
    assert "rsp.attach(" in attach and "model.generate(**enc" in attach
    assert "rsp.generate(" in generate and "engine=" not in generate
    assert 'engine="vllm"' in vllm


@pytest.mark.vllm
def test_readme_vllm_example_runs(capsys):
    from conftest import require_vllm

    require_vllm()
    exec(compile(python_blocks()[2], str(README), "exec"), {"__name__": "readme"})
    texts = eval(capsys.readouterr().out.strip().splitlines()[-1])  # the printed list
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
