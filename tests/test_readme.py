"""The README's set-up commands and its three opening examples stay true (each is executed here)."""

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


@pytest.mark.real_model
def test_readme_attach_example_runs(capsys):
    exec(compile(python_blocks()[0], str(README), "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.strip().splitlines()
    seeds = [int(line.split()[0]) for line in lines]
    assert len(seeds) == 4 and len(set(seeds)) == 4  # four rows, four RSPs


@pytest.mark.real_model
def test_readme_generate_example_runs(smollm2, monkeypatch, capsys):
    import rsp.generation

    monkeypatch.setattr(rsp.generation, "load_for_engine", lambda *a, **k: smollm2)  # reuse the loaded model
    exec(compile(python_blocks()[1], str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert len(re.findall(r"arith-\S+ \d/4 correct, pass@2 = \d\.\d\d \[\d+, \d+, \d+, \d+\]", out)) == 2


@pytest.mark.vllm
def test_readme_vllm_example_runs(capsys):
    from conftest import require_vllm

    require_vllm()
    exec(compile(python_blocks()[2], str(README), "exec"), {"__name__": "readme"})
    texts = eval(capsys.readouterr().out.strip().splitlines()[-1])  # the printed list
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
