"""Imports cost what the docs say: `rsp.core` is torch only, `import rsp` and `rsp --help` load no engine, no
transformers, no optional extra; every public name of the lazy package root still resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import rsp

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("transformers", "trl", "peft", "vllm", "lm_eval", "datasets", "matplotlib", "fastapi")


def loaded_after(code: str) -> set[str]:
    """The top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('--modules--', *sorted({{m.split('.')[0] for m in sys.modules}}))"
    return set(run(probe).split("--modules--", 1)[1].split())


def run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout


def test_rsp_core_loads_torch_and_nothing_heavier():
    loaded = loaded_after("import rsp.core")
    assert "torch" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("code", ["import rsp", "import rsp.cli; rsp.cli.main(['--help'])"])
def test_import_rsp_and_the_usage_load_neither_torch_nor_transformers(code):
    loaded = loaded_after(code)
    assert not loaded & {"torch", *HEAVY}, sorted(loaded & {"torch", *HEAVY})


@pytest.mark.slow  # a fresh interpreter that imports the registry
def test_rsp_methods_does_not_import_the_controls_or_the_integrations():
    out = run("import rsp.methods, sys; print(sorted(m for m in sys.modules if m.startswith('rsp.')))")
    assert "rsp.baselines" not in out and "rsp.integrations" not in out, out


def test_every_public_name_of_the_root_resolves_to_the_object_its_module_defines():
    import importlib

    for name in rsp.__all__:
        value = getattr(rsp, name)
        module = importlib.import_module(rsp._EXPORTS[name])
        assert value is getattr(module, name), name
    assert sorted(rsp.__all__) == sorted(rsp._EXPORTS) and set(rsp.__all__) <= set(dir(rsp))


def test_attach_stays_the_function_after_its_module_is_imported():
    """A submodule named like a root function would replace it on the package once imported."""
    import rsp.engines.hook

    assert callable(rsp.attach) and rsp.attach is rsp.engines.hook.attach


def test_every_rsp_name_the_docs_use_resolves():
    """`rsp.X` and `rsp.pkg.X` in README.md and docs/*.md: an attribute of the package, or a module."""
    import importlib

    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    names = set(re.findall(r"`(?:python -m )?(rsp(?:\.[A-Za-z_]\w*)+)", text))
    names -= {"rsp.length", "rsp.method", "rsp.options"}  # fields of a server request's `rsp` object
    missing = []
    for dotted in sorted(names):
        parts = dotted.split(".")
        # the longest importable module prefix, then attributes
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            missing.append(dotted)
    assert not missing, missing


@pytest.mark.slow  # a fresh interpreter that imports TRL: about 10 s
def test_rsp_train_leaves_trl_alone_and_the_trainer_is_a_plain_class_of_the_trl_integration():
    assert not loaded_after("import rsp.train, rsp.train.run") & {"trl", "vllm"}
    pytest.importorskip("trl")
    import trl

    from rsp.integrations.trl import RSPGRPOTrainer

    assert RSPGRPOTrainer.__qualname__ == "RSPGRPOTrainer"  # defined at module level, not in a factory
    assert RSPGRPOTrainer.__module__ == "rsp.integrations.trl" and issubclass(RSPGRPOTrainer, trl.GRPOTrainer)
