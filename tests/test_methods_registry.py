"""The method registry: one spec per method with the facts others ask, one-way imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rsp
from rsp import methods as methods_mod
from rsp.methods import (
    Method,
    RSPConfig,
    get_method,
    method_specs,
    register_method,
)

# name: (category, uses_length, uses_scale, per_attempt, option keys)
FACTS = {
    "temperature": ("baseline", False, False, False, ()),
    "rsp": ("rsp", True, True, True, ()),
    "rsp-fixed": ("control", True, True, False, ()),
    "rsp-shared": ("control", True, True, False, ()),
    "rsp-scaled": ("control", True, True, True, ("rsp_scale",)),
    "token-rows": ("control", True, False, True, ()),
    "token-string": ("control", True, False, True, ()),
    "mean-vector": ("control", True, False, False, ()),
    "embed-noise": ("control", False, False, True, ("noise_alpha",)),
    "soft-prompt": ("trained", False, False, False, ("soft_prompt", "soft_prompt_position")),
}


def test_every_method_is_a_spec_with_its_facts():
    specs = {m.name: m for m in method_specs()}
    assert set(FACTS) <= set(specs)
    for name, (category, uses_length, uses_scale, per_attempt, keys) in FACTS.items():
        m = specs[name]
        assert (m.category, m.uses_length, m.uses_scale, m.per_attempt, m.option_keys) == (
            category,
            uses_length,
            uses_scale,
            per_attempt,
            keys,
        ), name
        assert all(o.meaning for o in m.options or ())
    assert [o.key for o in specs["soft-prompt"].options or () if o.required] == ["soft_prompt"]
    with pytest.raises(AttributeError):
        specs["rsp"].uses_length = False  # type: ignore[misc]  (frozen)


def test_methods_module_never_imports_the_baselines():
    tree = ast.parse(Path(methods_mod.__file__).read_text())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [None])
    ]
    assert not [m for m in imported if m and m.startswith("rsp.baselines")], imported


@pytest.mark.slow
def test_the_controls_load_on_the_first_lookup_not_on_import():
    """`import rsp.methods` leaves the controls unimported; the first lookup imports them by name
    (`BUILTIN_PLUGINS`), so the registry is complete wherever it is read."""
    code = (
        "import rsp.methods as m, sys; "
        "print('rsp.baselines.controls' in sys.modules); "
        "print(','.join(m.method_names())); "
        "print('rsp.baselines.controls' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, names, after = out.splitlines()
    assert (before, after) == ("False", "True")
    assert set(FACTS) <= set(names.split(","))


@pytest.mark.slow  # a fresh interpreter
def test_a_method_registered_before_the_first_lookup_replaces_the_built_in_of_that_name():
    code = (
        "import rsp.methods as m; "
        "m.register_method('token-rows', 'mine')(lambda lm, o: None); "
        "print(m.get_method('token-rows').description)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "mine"


def test_rsp_config_is_one_class_in_every_public_place():
    from rsp.generation import RSPConfig as from_generation

    assert rsp.RSPConfig is from_generation is RSPConfig
    cfg = RSPConfig(length=2, method="rsp-fixed", method_options={"x": 1})
    assert cfg.method_options == {"x": 1} and cfg.key()[-1] == (("x", "1"),)


def test_unknown_method_and_bad_registrations_are_refused():
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods: embed-noise"):
        get_method("nope")
    with pytest.raises(ValueError, match="category"):
        register_method("x", "bad", category="other")(lambda lm, o: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'none' was renamed to 'temperature'"):
        methods_mod.register(Method("none", "clash", lambda lm, o: None))  # type: ignore[arg-type,return-value]


def test_a_registered_method_defaults_to_the_cautious_facts(monkeypatch):
    monkeypatch.setattr(methods_mod, "_REGISTRY", dict(methods_mod._REGISTRY))
    register_method("plugin", "third-party method")(lambda lm, o: None)  # type: ignore[arg-type,return-value]
    spec = get_method("plugin")
    assert (spec.uses_length, spec.uses_scale, spec.per_attempt, spec.options) == (True, True, True, None)
    assert spec.cell_options({"a": 1}) == {"a": 1}  # undeclared options: a sweep passes them all


def test_injects_nothing_is_the_baseline_or_a_length_method_at_length_zero():
    from rsp.methods import RSPConfig, get_method

    assert get_method("temperature").injects_nothing(RSPConfig(method="temperature", length=4))
    assert get_method("rsp").injects_nothing(RSPConfig(length=0))
    assert not get_method("rsp").injects_nothing(RSPConfig(length=1))
    # embed-noise perturbs the prompt's own rows: L=0 still injects
    assert not get_method("embed-noise").injects_nothing(RSPConfig(method="embed-noise", length=0))
