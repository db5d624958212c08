"""`rsp sweep`: grid layout, interrupted sweeps resume without recomputing finished cells, report files."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from rsp import methods as methods_mod
from rsp.baselines import sweep as sweep_mod
from rsp.baselines.cli import parse_sweep, sweep_main
from rsp.baselines.soft_prompt import save_soft_prompt
from rsp.baselines.sweep import Cell, SweepConfig, run_sweep
from rsp.evaluation import ConfigError, EvalConfig
from rsp.models import load_model
from rsp.runio import RunDirError, read_jsonl_records


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32")


def _sweep(model_dir, **kw) -> SweepConfig:
    base = EvalConfig(model=str(model_dir), limit=2, n=3, max_new_tokens=4, batch_size=6, dtype="float32")
    grid = dict(methods=("temperature", "rsp"), rsp_lengths=(1, 2), temperatures=(0.0, 1.0))
    grid.update(kw)
    return SweepConfig(base=base, **grid)


class CountingGenerate:
    """Counts generate calls and optionally raises after `fail_after` of them (a simulated crash)."""

    def __init__(self, model, fail_after: int | None = None) -> None:
        self.model, self.inner, self.fail_after, self.calls = model, model.generate, fail_after, 0

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __enter__(self):
        self.model.generate = self
        return self

    def __exit__(self, *exc):
        del self.model.generate


def test_default_grid_has_greedy_rsp_and_one_baseline_per_temperature():
    cells = SweepConfig().cells()
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 4 * (1 + 6)
    assert "rsp_T0_L4_a1" in names  # greedy + RSP
    assert [c.name for c in cells if c.method == "temperature"] == [
        "temperature_T0",
        "temperature_T0.3",
        "temperature_T0.7",
        "temperature_T1",
    ]
    greedy_base = next(c for c in cells if c.name == "temperature_T0")
    assert greedy_base.replicate and greedy_base.eval_config(EvalConfig(), 16, {}).n == 1
    assert not any(c.replicate for c in cells if c.method == "rsp")  # fresh RSPs make greedy attempts differ


def test_axes_a_method_does_not_read_are_collapsed(tmp_path):
    save_soft_prompt(tmp_path / "sp.safetensors", torch.zeros(3, 8), "after_generation_prompt", {})
    cfg = SweepConfig(
        base=EvalConfig(method_options={"soft_prompt": str(tmp_path / "sp.safetensors")}),
        methods=("rsp-fixed", "embed-noise", "token-rows", "soft-prompt"),
        rsp_lengths=(1, 2),
        rsp_scales=(0.5, 1.0),
        temperatures=(0.0,),
    )
    names = [c.name for c in cfg.cells()]
    assert names == [
        "temperature_T0",
        "rsp-fixed_T0_L1_a0.5",
        "rsp-fixed_T0_L1_a1",
        "rsp-fixed_T0_L2_a0.5",
        "rsp-fixed_T0_L2_a1",
        "embed-noise_T0",
        "token-rows_T0_L1",
        "token-rows_T0_L2",
        "soft-prompt_T0_L3",
    ]
    cells = {c.name: c for c in cfg.cells()}
    assert cells["rsp-fixed_T0_L1_a1"].replicate and not cells["token-rows_T0_L1"].replicate
    options = cfg.base.method_options
    assert cells["token-rows_T0_L1"].eval_config(cfg.base, 16, options).method_options == {}
    assert cells["soft-prompt_T0_L3"].eval_config(cfg.base, 16, options).method_options == options


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_recomputing_finished_cells(
    tmp_path, tiny_model_dir, tiny_loaded, monkeypatch
):
    cfg = _sweep(tiny_model_dir)
    with CountingGenerate(tiny_loaded.model) as full:
        run_sweep(cfg, tmp_path / "full", lm=tiny_loaded, progress=False)
    assert full.calls == 6  # 6 cells x one batch each (2 problems x 3 attempts fit one batch of 6)

    with CountingGenerate(tiny_loaded.model, fail_after=4), pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "part", lm=tiny_loaded, progress=False)
    cells_dir = tmp_path / "part" / "cells"
    finished = sorted(p.name for p in cells_dir.iterdir() if (p / "samples.jsonl").is_file())
    assert len(finished) == 4
    mtimes = {name: (cells_dir / name / "samples.jsonl").stat().st_mtime_ns for name in finished}

    with CountingGenerate(tiny_loaded.model) as resumed:
        result = run_sweep(cfg, tmp_path / "part", lm=tiny_loaded, progress=False)
    assert resumed.calls == full.calls - 4
    assert sorted(result.skipped) == finished and len(result.ran) == 2
    assert {n: (cells_dir / n / "samples.jsonl").stat().st_mtime_ns for n in finished} == mtimes
    for cell in result.cells:  # resumed output is identical to the uninterrupted sweep
        a = read_jsonl_records(tmp_path / "full" / "cells" / cell.name / "samples.jsonl")
        b = read_jsonl_records(cells_dir / cell.name / "samples.jsonl")
        assert [r["completion"] for r in a] == [r["completion"] for r in b]

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished sweep must not load the model")

    monkeypatch.setattr(sweep_mod, "Generator", no_loading)
    again = run_sweep(cfg, tmp_path / "part", lm=None, progress=False)
    assert again.ran == [] and len(again.skipped) == 6


@pytest.mark.slow
def test_report_pairs_each_cell_with_temperature_only_at_its_temperature(
    tmp_path, tiny_model_dir, tiny_loaded
):
    result = run_sweep(_sweep(tiny_model_dir), tmp_path, lm=tiny_loaded, progress=False)
    rows = {r["cell"]: r for r in result.rows}
    greedy = read_jsonl_records(tmp_path / "cells" / "temperature_T0" / "samples.jsonl")
    assert len(greedy) == 2  # one greedy attempt per problem, counted for all 3
    assert rows["temperature_T0"]["problems"] == 2 and rows["temperature_T0"]["delta accuracy"] is None
    r = rows["rsp_T1_L2_a1"]
    expected = r["accuracy"]["mean"] - rows["temperature_T1"]["accuracy"]["mean"]
    assert r["delta accuracy"]["mean"] == pytest.approx(expected)
    for key in ("accuracy", "pass@1", "pass@3", "maj@3"):
        assert key in r
    table = (tmp_path / "sweep.md").read_text()
    assert "rsp_T0_L1_a1" in table and "Δ accuracy" in table
    with open(tmp_path / "sweep.csv") as f:
        table_rows = list(csv.DictReader(f))
    assert len(table_rows) == 6 and "alpha" not in table_rows[0]
    assert {r["rsp_scale"] for r in table_rows} == {"", "1.0"}  # the baseline has no scale
    assert "| rsp_scale |" in (tmp_path / "sweep.md").read_text()
    for name in ("passk_rsp.png", "passk_temperature.png", "heatmap_rsp_a1.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0


@pytest.mark.slow
def test_extending_the_grid_keeps_finished_cells_but_changing_the_base_is_refused(
    tmp_path, tiny_model_dir, tiny_loaded
):
    run_sweep(
        _sweep(tiny_model_dir, rsp_lengths=(1,), temperatures=(1.0,)),
        tmp_path,
        lm=tiny_loaded,
        progress=False,
    )
    with CountingGenerate(tiny_loaded.model) as counter:
        result = run_sweep(
            _sweep(tiny_model_dir, rsp_lengths=(1, 2), temperatures=(1.0,)),
            tmp_path,
            lm=tiny_loaded,
            progress=False,
        )
    assert counter.calls == 1 and result.ran == ["rsp_T1_L2_a1"]
    other = _sweep(tiny_model_dir)
    other.base.n = 5
    with pytest.raises(RunDirError, match="n: 3 -> 5"):
        run_sweep(other, tmp_path, lm=tiny_loaded, progress=False)


def test_bad_grids_and_flags_get_clear_errors(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"rsp_lengths \(--rsp-lengths\) must all be >= 1"):
        _sweep(tiny_model_dir, rsp_lengths=(0, 4)).validate()
    with pytest.raises(ConfigError, match="soft_prompt=PATH"):
        _sweep(tiny_model_dir, methods=("soft-prompt",)).validate()
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        _sweep(tiny_model_dir, methods=("nope",)).validate()
    with pytest.raises(ConfigError, match="use --rsp-lengths"):
        sweep_main(["--out", "x", "--rsp-length", "4"])
    with pytest.raises(
        ConfigError, match="not --temperature;"
    ):  # not taken for an abbreviated --temperatures
        sweep_main(["--out", "x", "--temperature=0.5"])
    with pytest.raises(ValueError, match=r"rsp_lengths \(--rsp-lengths\) expects int"):
        sweep_main(["--out", "x", "--rsp-lengths", "1,two"])


# --------------------------------------------------------------------------- registry facts drive the grid


def test_the_registry_facts_decide_the_axes_and_the_greedy_replication(monkeypatch):
    from rsp.core.injection import NoInjection

    def build(lm, config):
        return NoInjection(config.position)

    spec = methods_mod.Method(
        "probe", "test method", build, uses_length=False, uses_scale=False, per_attempt=False, options=()
    )
    monkeypatch.setitem(methods_mod._REGISTRY, "probe", spec)
    cfg = SweepConfig(
        methods=("probe",), rsp_lengths=(1, 2, 4), rsp_scales=(0.5, 1.0), temperatures=(0.0, 1.0)
    )
    probe = [c for c in cfg.cells() if c.method == "probe"]
    assert [c.name for c in probe] == ["probe_T0", "probe_T1"]  # one cell whatever the L and scale grids say
    assert [c.replicate for c in probe] == [True, False]  # the same injection every attempt: greedy runs once
    monkeypatch.setitem(methods_mod._REGISTRY, "probe", replace(spec, uses_length=True, per_attempt=True))
    probe = [c for c in cfg.cells() if c.method == "probe"]
    assert [c.name for c in probe] == [f"probe_T{t}_L{L}" for t in (0, 1) for L in (1, 2, 4)]
    assert not any(c.replicate for c in probe)
    monkeypatch.setitem(methods_mod._REGISTRY, "probe", replace(spec, uses_scale=True))
    assert [c.name for c in cfg.cells() if c.method == "probe"][:2] == ["probe_T0_a0.5", "probe_T0_a1"]


def test_cells_carry_only_the_method_options_their_method_reads():
    options = {"noise_alpha": 3, "soft_prompt": "x.safetensors", "rsp_scale": 2.0, "other": 1}
    base = EvalConfig(method_options=options)
    assert Cell("embed-noise", 0.7).eval_config(base, 4, options).method_options == {"noise_alpha": 3}
    assert Cell("rsp-scaled", 0.7, 4, 1.0).eval_config(base, 4, options).method_options == {}  # grid axis
    assert Cell("rsp", 0.7, 4, 1.0).eval_config(base, 4, options).method_options == {}


# ------------------------------------------------------------------------------------------ rsp sweep flags


def test_config_file_plus_one_flag_equals_the_flags_alone(tmp_path):
    (tmp_path / "sweep.yaml").write_text(
        "model: tiny\ntask: arith\nlimit: 4\nn: 8\nmethods: [temperature, rsp, rsp-fixed]\n"
        "rsp_lengths: [1, 4]\nrsp_scales: [0.5, 1.0]\ntemperatures: [0.0, 0.7]\n"
        "rsp_position: end_of_user_turn\nmethod_options: {noise_alpha: 3}\nout: runs/s\n"
    )
    from_file = parse_sweep(["--config", str(tmp_path / "sweep.yaml"), "--n", "16"])
    flags = parse_sweep(
        [
            *("--model", "tiny", "--task", "arith", "--limit", "4", "--n", "16"),
            *("--methods", "temperature,rsp,rsp-fixed", "--rsp-lengths", "1,4", "--rsp-scales", "0.5", "1.0"),
            *("--temperatures", "0,0.7", "--rsp-position", "end_of_user_turn"),
            *("--method-option", "noise_alpha=3", "--out", "runs/s"),
        ]
    )
    assert from_file == flags
    base, grid, output = flags
    assert (base.n, base.methods, base.rsp_position) == (
        16,
        ("temperature", "rsp", "rsp-fixed"),
        "end_of_user_turn",
    )
    assert (grid.rsp_lengths, grid.rsp_scales, grid.temperatures) == ((1, 4), (0.5, 1.0), (0.0, 0.7))
    assert output.out == "runs/s"
    sweep = SweepConfig.from_configs(base, grid)
    assert sweep.methods == ("temperature", "rsp", "rsp-fixed") and sweep.rsp_scales == (0.5, 1.0)
    assert "methods" not in sweep.identity() and sweep.identity()["rsp_position"] == "end_of_user_turn"
