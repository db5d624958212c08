"""The map of issue #16: the script, the docs and the cell list agree; analysis and verdicts behave on
known data.

Why synthetic runs: a verdict rule is only trustworthy if it says "holds" for an effect that is there
and does not say it for an effect that is not; both are built here as run directories with known
per-problem success rates, read through the same code that reads the real map.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.findings import cells as C
from experiments.findings.analyse import Cell, evaluate_all, run_dir
from experiments.findings.cells import Step
from experiments.findings.plots import heatmap_values
from experiments.findings.report import build_report, doc_commands
from experiments.findings.select import SelectionError, screen_counts, solved_ids
from experiments.findings.verdicts import dapo_verdict, entropy_verdict, equivalence_verdict, family_verdict
from rsp.records import SAMPLES, SampleRecord, append_samples

pytestmark = pytest.mark.slow  # the harness of one study: in the full suite, out of the inner loop

REPO = Path(__file__).resolve().parents[2]
SMOL = C.MODEL_BY_KEY["smollm2"]
ARITH1 = C.DIFFICULTY_BY_KEY["arith1"]


def _commands() -> list[str]:
    return [s.command for s in C.steps()]


def test_script_print_lists_exactly_the_cell_commands():
    out = subprocess.run(
        ["bash", str(REPO / "experiments" / "findings.sh"), "--print"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert out.stdout.splitlines() == _commands()


def test_docs_commands_are_the_script_commands():
    text = (REPO / "docs" / "findings.md").read_text(encoding="utf-8")
    assert doc_commands(text) == _commands(), (
        "rerun `python -m experiments.findings report` after changing the cell list"
    )


def test_every_cell_has_its_runs_settings_and_every_committed_entry_its_command_lines_config():
    """`frozen.eval_config` stands in for the frozen `rsp eval` parser the map runs on (the library's
    own parser spells some settings otherwise by now): each cell's config carries the run's settings,
    and every committed ledger entry was saved with exactly the config its command line gives."""
    from experiments.findings.frozen import current_spelling, eval_command_config, eval_config
    from experiments.findings.ledger import entry_path

    checked = 0
    for whole in C.runs():
        assert whole.argv()[:2] == ["rsp", "eval"]
        cfg = eval_config(whole.argv()[2:])
        assert cfg["engine"] == C.ENGINE and cfg["seed"] == C.SEED and cfg["limit"] == C.N_PROBLEMS
        assert cfg["methods"] == [whole.method] and cfg["n"] == whole.n
        assert cfg["temperature"] == whole.temperature and cfg["rsp_position"] == whole.position
        assert cfg["rsp_scale"] == whole.scale and cfg["prompt_style"] == whole.model.prompt_style
        assert cfg["model"] == whole.model.name and "offset" not in cfg
        for run in [whole, *whole.shards()]:
            path = entry_path(run, REPO / C.LEDGER)
            if path.is_file():
                saved = json.loads(path.read_text(encoding="utf-8"))["config"]
                assert current_spelling(saved) == eval_config(run.argv()[2:]), path
                checked += 1
    for step in C.steps():  # the GSM8K screen shards' records carry their config too
        if step.kind == "screen" and (REPO / step.outputs[1]).is_file():
            saved = json.loads((REPO / step.outputs[1]).read_text(encoding="utf-8"))["config"]
            assert current_spelling(saved) == eval_command_config(step.command), step.outputs[1]
            checked += 1
    entries = [
        p
        for p in (REPO / C.LEDGER).rglob("*.json")
        if p.name != "history.json" and '"config"' in p.read_text(encoding="utf-8")
    ]  # history.json: a soft prompt's training log, whose config is `rsp train-soft-prompt`'s
    assert checked == len(entries) > 0, "a ledger file with a config that no cell names"
    with pytest.raises(ValueError, match="no flag --rsp-lenght"):
        eval_config(["--rsp-lenght", "4"])


def test_map_covers_the_issue_axes_with_enough_attempts_and_unique_dirs():
    all_runs = C.runs()
    outs = [r.out for r in all_runs]
    assert len(outs) == len(set(outs))
    for model in C.MODELS:
        mine = [r for r in all_runs if r.model == model]
        assert {r.difficulty.key for r in mine} == {d.key for d in C.DIFFICULTIES}
        assert {r.temperature for r in mine if r.method == "rsp" and r.length == 4} == set(C.TEMPERATURES)
        assert {r.length for r in mine if r.method == "rsp" and r.temperature == C.BASE_T} == set(C.LENGTHS)
        assert {r.position for r in mine if r.method == "rsp"} == set(C.POSITIONS)
        assert {r.scale for r in mine if r.method == "rsp"} == set(C.SCALES)
        assert {*C.CONTROLS, "soft-prompt"} <= {r.method for r in mine}
    for r in all_runs:
        assert r.n == (1 if r.deterministic else 32) and C.N_PROBLEMS >= 32
        assert r.baseline() in all_runs, f"{r.out} has no temperature-only reference in the map"


def test_every_comparison_is_within_one_dtype_and_the_bf16_part_is_unchanged():
    """The later part of the map runs in fp32 (4x faster where bf16 is emulated): every cell must still
    compare two runs of one dtype, the finished bf16 part must keep its commands (its ledger entries
    name them), and the base pair must exist in both dtypes so the shift can be read."""
    from experiments.findings.analyse import cells

    for cell in cells():
        assert cell.treatment.dtype == cell.reference.dtype, (cell.treatment.name, cell.reference.name)
    for run in C.runs():
        fp32 = run.dtype == C.FAST_DTYPE
        assert ("--dtype" in run.argv()) == fp32 and run.name.endswith("_fp32") == fp32
        first_part = run.difficulty.key in ("arith2", "arith3") or run.method == "soft-prompt"
        first_part |= run.temperature != C.BASE_T
        if first_part:
            assert run.dtype == "auto", run.name
        derived = run.length not in (0, C.BASE_L) or run.method in C.CONTROLS or run.scale != 1.0
        if run.difficulty.key == "gsm8k" or derived or run.position != C.DEFAULT_POSITION:
            assert fp32, run.name
    for model in C.MODELS:
        base = [
            r
            for r in C.runs()
            if r.model == model and r.difficulty.key == "arith1" and r.temperature == C.BASE_T
        ]
        pairs = {
            (r.method, r.dtype)
            for r in base
            if r.method in ("temperature", "rsp") and r.length in (0, C.BASE_L)
        }
        assert pairs >= {
            ("temperature", "auto"),
            ("rsp", "auto"),
            ("temperature", "float32"),
            ("rsp", "float32"),
        }


def test_base_pair_runs_first_for_both_models():
    first = C.runs()[:4]
    assert [(r.model.key, r.method) for r in first] == [
        ("smollm2", "temperature"),
        ("smollm2", "rsp"),
        ("gemma3", "temperature"),
        ("gemma3", "rsp"),
    ]
    assert all(r.difficulty.key == "arith1" and r.temperature == C.BASE_T for r in first)


# ------------------------------------------------------------------------------------------- synthetic runs


def _write_run(root: Path, run: C.Run, rates: list[float], seed: int) -> None:
    """samples.jsonl for `run`: problem i is solved with probability rates[i] on each attempt."""
    rng = np.random.default_rng(seed)
    d = run_dir(run, root)
    d.mkdir(parents=True, exist_ok=True)
    records: list[SampleRecord] = []
    for i, p in enumerate(rates):
        for a in range(run.n):
            ok = bool(rng.random() < p)
            wrong = str(100 + int(rng.integers(0, 5)))
            answer = "7" if ok else wrong
            records.append(
                {
                    "problem_id": f"p{i:02d}",
                    "method": run.method,
                    "attempt": a,
                    "rsp_seed": None,
                    "decode_seed": None,
                    "prompt_hash": None,
                    "completion": answer,
                    "token_ids": [],
                    "num_tokens": 50,
                    "finish_reason": "stop",
                    "extracted": answer,
                    "gold": "7",
                    "correct": ok,
                    "grade_method": "exact",
                }
            )
    append_samples(d / SAMPLES, records)


def _pair(t: float, L: int = 4) -> tuple[C.Run, C.Run]:
    return C.Run(SMOL, ARITH1, "rsp", t, L), C.Run(SMOL, ARITH1, "temperature", t, 0)


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, dict[str, Cell]]:
    """T=0.7: RSP solves problems the baseline never does (known effect); T=1: same rates (known null);
    T=0.3: RSP much worse (known harm)."""
    root = tmp_path / "runs"
    base = [0.02] * 32
    effect, null, harm = _pair(0.7), _pair(1.0), _pair(0.3)
    _write_run(root, effect[1], [0.0] * 32, 1)
    _write_run(root, effect[0], [0.3] * 32, 2)
    _write_run(root, null[1], base, 3)
    _write_run(root, null[0], base, 4)
    _write_run(root, harm[1], [0.5] * 32, 5)
    _write_run(root, harm[0], [0.0] * 32, 6)
    cells = {
        "effect": Cell(*effect, "difficulty"),
        "null": Cell(*null, "temperature"),
        "harm": Cell(*harm, "temperature"),
    }
    return root, cells


def test_family_verdict_finds_a_known_effect_and_not_a_null(synthetic):
    root, cells = synthetic
    results = {k: r for k, r in zip(cells, evaluate_all(root, list(cells.values())), strict=True)}
    assert all(r.complete for r in results.values())
    effect = family_verdict("effect", [results["effect"], results["null"]], "pass@32")
    assert effect.verdict == "holds" and effect.holds_in == [cells["effect"].key] and not effect.hurts_in
    null = family_verdict("null", [results["null"]], "pass@32")
    assert null.verdict in ("inconclusive here", "does not hold") and not null.holds_in
    harm = family_verdict("harm", [results["null"], results["harm"]], "pass@1")
    assert harm.verdict == "does not hold" and harm.hurts_in == [cells["harm"].key]


def test_incomplete_cells_do_not_enter_a_verdict(synthetic):
    root, cells = synthetic
    samples = run_dir(cells["effect"].treatment, root) / "samples.jsonl"
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join(lines[: 32 * 20 + 5]) + "\n")  # 20 complete problems, a 21st begun
    (result,) = evaluate_all(root, [cells["effect"]])
    assert result.problems == 20 and not result.complete
    assert family_verdict("partial", [result], "pass@32").verdict == "not run"


def test_greedy_baseline_run_once_counts_for_every_attempt(tmp_path: Path):
    rsp, greedy = _pair(0.0)
    assert greedy.deterministic and greedy.n == 1 and rsp.n == 32
    _write_run(tmp_path, greedy, [1.0] * 16 + [0.0] * 16, 0)
    _write_run(tmp_path, rsp, [0.5] * 32, 1)
    (r,) = evaluate_all(tmp_path, [Cell(rsp, greedy, "temperature")])
    assert r.complete and r.counts["reference"] == [32] * 16 + [0] * 16
    assert float(r.reference["pass@32"].mean()) == pytest.approx(0.5)


def test_equivalence_verdict_on_known_equal_and_known_worse(tmp_path: Path):
    rsp = C.Run(SMOL, ARITH1, "rsp", 0.7)
    soft = C.Run(SMOL, ARITH1, "soft-prompt", 0.7, 0)
    _write_run(tmp_path, rsp, [0.9] * 32, 1)
    _write_run(tmp_path, soft, [0.9] * 32, 2)
    (same,) = evaluate_all(tmp_path, [Cell(rsp, soft, "direct")])
    assert equivalence_verdict("same", [same], "pass@32").verdict == "holds"
    _write_run(tmp_path, rsp, [0.0] * 32, 3)
    (worse,) = evaluate_all(tmp_path, [Cell(rsp, soft, "direct")])
    assert equivalence_verdict("worse", [worse], "pass@32").verdict == "does not hold"


def test_report_writes_summaries_plots_and_doc_sections(synthetic, tmp_path: Path, monkeypatch):
    root, cells = synthetic
    doc = tmp_path / "findings.md"
    shutil.copy(REPO / "docs" / "findings.md", doc)
    monkeypatch.setattr(
        "experiments.findings.report.evaluate_all",
        lambda r, ledger=None: evaluate_all(r, list(cells.values()), ledger),
    )
    out = tmp_path / "out"
    rep = build_report(root=root, out=out, doc=doc, analysis_files=())
    for name in (
        "cells.csv",
        "cells.json",
        "verdicts.json",
        "cost.json",
        "delta_vs_base.png",
        "passk_best_worst.png",
        "heatmap_L_T.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "completion" not in (out / "cells.json").read_text()
    text = doc.read_text()
    assert f"| smollm2 | arith1 | difficulty | {cells['effect'].treatment.name} |" in text
    assert doc_commands(text) == _commands()
    grid = heatmap_values(rep["results"], "smollm2", "pass@32")
    assert grid[C.LENGTHS.index(4), C.TEMPERATURES.index(0.7)] > 0.5  # the known effect
    assert grid[C.LENGTHS.index(4), C.TEMPERATURES.index(0.3)] < -0.5  # the known harm
    assert np.isnan(grid[C.LENGTHS.index(16), C.TEMPERATURES.index(0.3)])  # not run stays missing


def _metrics_file(tmp_path: Path, rsp_t1: float, kl16: float) -> Path:
    n = 20

    def series(first: float, rest: float) -> dict:
        return {
            "mean": [first] + [rest] * (n - 1),
            "ci_low": [first - 0.05] + [rest - 0.01] * (n - 1),
            "ci_high": [first + 0.05] + [rest + 0.01] * (n - 1),
        }

    data = {
        "baseline": "temperature",
        "problems": 8,
        "config": {"model": "m"},
        "metrics": {
            "temperature": {"entropy": series(1.0, 0.8)},
            "rsp": {"entropy": series(rsp_t1, 0.8), "kl": series(10.0, kl16)},
        },
    }
    path = tmp_path / f"{rsp_t1}-{kl16}" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_entropy_verdict_rule(tmp_path: Path):
    assert entropy_verdict([_metrics_file(tmp_path, 2.5, 0.1)]).verdict == "holds"
    assert entropy_verdict([_metrics_file(tmp_path, 0.5, 0.1)]).verdict == "does not hold"  # not lifted
    assert entropy_verdict([_metrics_file(tmp_path, 2.5, 5.0)]).verdict == "does not hold"  # not diluted
    assert entropy_verdict([]).verdict == "not run"


def _dapo_summary(tmp_path: Path, name: str, diffs: list[tuple[float, float]]) -> Path:
    """A dapo_seeds_summary.py summary.json whose seeds have the given (pass@1, pass@32) differences."""
    per_seed = {
        str(i): {"paired": {"accuracy": {"mean": a}, "pass@32": {"mean": b}}}
        for i, (a, b) in enumerate(diffs)
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"per_seed": per_seed, "across_seeds": {}, "missing": []}))
    return path


def test_dapo_verdict_rule_over_seeds(tmp_path: Path):
    gain = _dapo_summary(tmp_path, "gain", [(0.10, 0.20), (0.11, 0.25), (0.09, 0.22)])
    v = dapo_verdict(gain)
    assert v.verdict == "holds" and v.holds_in == ["pass@1, 3 seeds", "pass@32, 3 seeds"]
    assert v.evidence[0]["level"] == pytest.approx(0.975)
    # consistent small losses: the pass@1 interval lies below zero
    loss = dapo_verdict(_dapo_summary(tmp_path, "loss", [(-0.012, -0.03), (-0.014, -0.12), (-0.013, 0.05)]))
    assert loss.verdict == "does not hold" and loss.hurts_in == ["pass@1, 3 seeds"]
    # seeds that disagree widely: nothing resolved
    noisy = dapo_verdict(_dapo_summary(tmp_path, "noisy", [(0.2, 0.3), (-0.2, -0.3), (0.05, 0.1)]))
    assert noisy.verdict == "inconclusive here"
    # fewer seeds than the rule needs, or no summary at all: not run, never a verdict from two seeds
    assert dapo_verdict(_dapo_summary(tmp_path, "two", [(0.1, 0.2), (0.1, 0.2)])).verdict == "not run"
    assert dapo_verdict(tmp_path / "absent.json").verdict == "not run"


def test_gsm8k_selection_needs_a_finished_screen_and_pools_both_arms():
    rows = [
        {
            "problem_id": f"g{i}",
            "method": m,
            "attempt": a,
            "correct": (i == 1 and m == "rsp" and a == 1) or (i == 2 and m == "temperature" and a == 0),
        }
        for i in range(4)
        for m in ("temperature", "rsp")
        for a in range(2)
    ]
    assert solved_ids(screen_counts(rows), problems=4, attempts=2) == {"g1", "g2"}
    with pytest.raises(SelectionError):
        solved_ids(screen_counts(rows[:-1]), problems=4, attempts=2)


def test_the_screen_walks_the_file_in_order_and_stops_once_it_has_its_problems():
    """The choice is the first `limit` qualifying problems in file order, so the screen is done once a
    completely screened prefix holds them (later shards cannot change it), or once it has screened the
    cap; a gap in the prefix (an unfinished shard) stops the walk there."""
    from experiments.findings.select import screen_progress

    order = [f"g{i}" for i in range(40)]

    def counts(screened: range, solved: set[int]) -> dict:
        return {
            f"g{i}": {m: [int(i in solved and m == "rsp"), 8] for m in ("temperature", "rsp")}
            for i in screened
        }

    p = screen_progress(counts(range(16), {2, 9}), order, limit=3, cap=40)
    assert (p.chosen, p.screened, p.done) == (["g2", "g9"], 16, False)
    p = screen_progress(counts(range(24), {2, 9, 17, 20}), order, limit=3, cap=40)
    assert (p.chosen, p.screened, p.done) == (["g2", "g9", "g17"], 18, True), "stops at the third"
    gap = counts(range(8), {2}) | counts(range(16, 24), {17, 20, 21})
    p = screen_progress(gap, order, limit=3, cap=40)
    assert (p.chosen, p.screened, p.done) == (["g2"], 8, False), "problems after a gap do not count yet"
    p = screen_progress(counts(range(24), {2}), order, limit=3, cap=24)
    assert (p.chosen, p.screened, p.done) == (["g2"], 24, True), "the cap ends the screen with fewer"


def test_the_runner_skips_screen_shards_once_the_screen_is_done(tmp_path: Path, monkeypatch):
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    screen = [s for s in C.steps() if s.kind == "screen" and s.model == "gemma3"]
    assert len(screen) == C.SCREEN_MAX_PROBLEMS // C.SCREEN_SHARD_PROBLEMS
    monkeypatch.setattr("experiments.findings.select.screen_progress", lambda records: runner_progress[0])
    from experiments.findings.select import Progress

    runner_progress = [Progress([], 8, False)]
    assert runner.estimate_s(screen[3], {"gemma3": 1.0}) > 0
    runner_progress[0] = Progress(["g1"] * C.N_PROBLEMS, 200, True)
    assert runner.estimate_s(screen[3], {"gemma3": 1.0}) == 0.0
    monkeypatch.setenv("FINDINGS_CODE_SRC", "frozen/src")
    select = next(s for s in C.steps() if s.kind == "select")
    assert runner._child_env(screen[3])["PYTHONPATH"].startswith("frozen/src"), "sampling: frozen code"
    assert "frozen/src" not in runner._child_env(select).get("PYTHONPATH", ""), "bookkeeping: working tree"
    ran = []
    monkeypatch.setattr(runner.subprocess, "Popen", lambda *a, **k: ran.append(a))
    assert runner.run_step(screen[3], threading.Lock(), tmp_path / "t.jsonl") == 0
    assert not ran and not (tmp_path / "t.jsonl").exists(), "nothing run, nothing logged"


FILLER = {  # the rest of a sample record
    "rsp_seed": None,
    "decode_seed": None,
    "prompt_hash": None,
    "completion": "",
    "token_ids": [],
    "num_tokens": 0,
    "finish_reason": "stop",
    "extracted": None,
    "gold": "1",
    "grade_method": "exact",
}


def test_a_screen_made_in_shards_over_sessions_selects_from_its_records(tmp_path: Path, monkeypatch):
    """Each finished screen shard is recorded; the selection is made from the records (the shard
    directories may be gone), recorded too, and a later session rebuilds the data from that record."""
    from experiments.findings.select import record_screen_shard, select_gsm8k

    data = tmp_path / "shared"
    data.mkdir()
    test = [{"id": f"g{i}", "problem": f"q{i}", "answer": str(i)} for i in range(160)]  # < the cap: all
    (data / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    (data / "gsm8k_train.jsonl").write_text('{"problem": "a", "answer": "1"}\n' * 3)
    monkeypatch.setenv("RSP_DATA_DIR", str(data))
    solved = {3, 7, 11, 40}  # rsp solves 3 and 40, temperature 7 and 11
    records = tmp_path / "ledger" / "screen"
    size = C.SCREEN_SHARD_PROBLEMS
    for offset in range(0, 160, size):
        shard = tmp_path / "runs" / "smollm2" / "gsm8k-screen" / f"shard-{offset:03d}"
        shard.mkdir(parents=True)
        rows = [
            {
                "problem_id": f"g{i}",
                "method": m,
                "attempt": a,
                "correct": a == 0 and i in ({3, 40} if m == "rsp" else {7, 11}),
                **FILLER,
            }
            for i in range(offset, offset + size)
            for m in ("temperature", "rsp")
            for a in range(C.SCREEN_ATTEMPTS)
        ]
        if offset == 8:  # an unfinished shard is not recorded
            (shard / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
            (shard / "config.json").write_text(json.dumps({"kind": "eval", "config": {"offset": offset}}))
            assert record_screen_shard(shard, records / f"shard-{offset:03d}.json", size) is None
        (shard / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (shard / "config.json").write_text(json.dumps({"kind": "eval", "config": {"offset": offset}}))
        assert record_screen_shard(shard, records / f"shard-{offset:03d}.json", size) is not None
        if offset == 0:
            with pytest.raises(SelectionError, match="chosen 2 of 3 problems in the first 8"):
                select_gsm8k(records, tmp_path / "runs" / "data", 3, tmp_path / "ledger" / "selection.json")
    shutil.rmtree(tmp_path / "runs" / "smollm2")  # the screen's directories went with earlier sessions
    record = tmp_path / "ledger" / "selection.json"
    out = tmp_path / "runs" / "data"
    assert select_gsm8k(records, out, 3, record) == ["g3", "g7", "g11"]
    saved = json.loads(record.read_text())
    assert saved["selected"] == ["g3", "g7", "g11"]
    assert saved["correct_per_problem"]["g40"] == {"temperature": [0, 8], "rsp": [1, 8]}
    assert sum(v[m][0] for v in saved["correct_per_problem"].values() for m in v) == len(solved)
    first = (out / "gsm8k_test.jsonl").read_text()
    shutil.rmtree(tmp_path / "runs")  # the next session: no data directory
    shutil.rmtree(records)
    assert select_gsm8k(records, out, 3, record) == ["g3", "g7", "g11"]
    assert (out / "gsm8k_test.jsonl").read_text() == first


def test_a_screen_shard_made_under_other_settings_is_never_recorded(tmp_path: Path):
    from experiments.findings.runner import expected_screen_config
    from experiments.findings.select import record_screen_shard

    step = next(s for s in C.steps() if s.kind == "screen")
    expected = expected_screen_config(step)
    assert (expected["seed"], expected["n"], expected.get("offset", 0)) == (
        C.SCREEN_SEED,
        C.SCREEN_ATTEMPTS,
        0,
    )
    shard = tmp_path / "shard-000"
    shard.mkdir()
    rows = [
        {"problem_id": f"g{i}", "method": m, "attempt": a, "correct": a == 0, **FILLER}
        for i in range(C.SCREEN_SHARD_PROBLEMS)
        for m in ("temperature", "rsp")
        for a in range(C.SCREEN_ATTEMPTS)
    ]
    (shard / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (shard / "config.json").write_text(json.dumps({"kind": "eval", "config": dict(expected, seed=0)}))
    with pytest.raises(SelectionError, match="other settings"):
        record_screen_shard(shard, tmp_path / "r.json", C.SCREEN_SHARD_PROBLEMS, expected)
    (shard / "config.json").write_text(json.dumps({"kind": "eval", "config": expected}))
    assert record_screen_shard(shard, tmp_path / "r.json", C.SCREEN_SHARD_PROBLEMS, expected) is not None


def test_runner_skips_only_finished_runs_with_the_same_settings(tmp_path: Path, monkeypatch):
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    step = C.steps()[0]
    assert step.run is not None and not runner.finished(step)
    _write_run(Path(C.ROOT), step.run, [0.1] * step.run.problems, 0)  # its directory, relative to cwd
    cfg = Path(step.run.out) / "config.json"
    cfg.write_text(json.dumps({"kind": "eval", "config": runner.expected_config(step.run)}))
    assert runner.finished(step)
    other = dict(runner.expected_config(step.run), max_new_tokens=64)
    cfg.write_text(json.dumps({"kind": "eval", "config": other}))
    assert not runner.finished(step), (
        "a run made with other settings must go back to rsp eval (which refuses it)"
    )
    lines = (Path(step.run.out) / "samples.jsonl").read_text().splitlines()
    (Path(step.run.out) / "samples.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    cfg.write_text(json.dumps({"kind": "eval", "config": runner.expected_config(step.run)}))
    assert not runner.finished(step), "an unfinished run must be resumed"


# ------------------------------------------------------------------------------------------------- ledger


def _finish(root: Path, run: C.Run, rates: list[float], seed: int, config: dict | None = None) -> None:
    """A finished run directory: its samples plus the config.json `rsp eval` writes."""
    from experiments.findings.runner import expected_config
    from rsp.runio import SCHEMA_VERSION

    _write_run(root, run, rates, seed)
    saved = {"kind": "eval", "schema_version": SCHEMA_VERSION, "config": config or expected_config(run)}
    (run_dir(run, root) / "config.json").write_text(json.dumps(saved))


def test_a_banked_run_reads_back_as_the_run_it_came_from(synthetic, tmp_path: Path):
    from experiments.findings.analyse import bank_run, load_samples
    from experiments.findings.ledger import read_entry

    root, cells = synthetic
    ledger = tmp_path / "ledger"
    cell = cells["effect"]
    for run, rates, seed in ((cell.treatment, [0.3] * 32, 2), (cell.reference, [0.0] * 32, 1)):
        _finish(root, run, rates, seed)
        assert bank_run(run, root, ledger) is not None
        entry, samples = read_entry(run, ledger), load_samples(run, root)
        assert entry is not None and samples is not None
        assert entry.correct == samples.correct and entry.answers == samples.answers
        assert entry.tokens == samples.tokens
    from_runs = evaluate_all(root, [cell])[0]
    shutil.rmtree(root)  # the next session's checkout: no runs/, only the ledger
    from_ledger = evaluate_all(root, [cell], ledger)[0]
    assert from_ledger.complete and from_ledger.counts == from_runs.counts
    for m in ("pass@1", "pass@32", "maj@32"):
        assert from_ledger.delta(m) == from_runs.delta(m)


def test_only_complete_runs_under_their_own_settings_enter_the_ledger(tmp_path: Path):
    from experiments.findings.analyse import bank_run
    from experiments.findings.runner import expected_config

    root, ledger = tmp_path / "runs", tmp_path / "ledger"
    rsp, base = _pair(0.7)
    _finish(root, rsp, [0.5] * 32, 0)
    samples = run_dir(rsp, root) / "samples.jsonl"
    samples.write_text("\n".join(samples.read_text().splitlines()[:-1]) + "\n")
    assert bank_run(rsp, root, ledger) is None, "a run missing one attempt is not finished"
    _finish(root, base, [0.5] * 32, 1, dict(expected_config(base), max_new_tokens=64))
    assert bank_run(base, root, ledger) is None, "a run made with other settings is not this cell"
    assert not ledger.exists()


def test_the_runner_counts_a_ledger_entry_as_finished_and_refuses_one_with_other_settings(
    tmp_path: Path, monkeypatch
):
    import experiments.findings.ledger as L
    from experiments.findings import runner
    from experiments.findings.analyse import bank_run

    monkeypatch.chdir(tmp_path)
    step = C.steps()[0]
    assert step.run is not None and not runner.finished(step)
    _finish(Path("elsewhere"), step.run, [0.2] * step.run.problems, 0)
    entry = bank_run(step.run, Path("elsewhere"), Path(L.LEDGER))
    assert entry is not None and not Path(step.run.out).exists()
    assert runner.finished(step), "a run finished in an earlier session must not run again"
    saved = json.loads(entry.read_text())
    saved["config"]["temperature"] = 1.0
    entry.write_text(json.dumps(saved))
    with pytest.raises(L.LedgerError, match="other settings"):
        runner.finished(step)


def test_an_entry_made_with_other_soft_prompt_vectors_is_refused_and_never_banked(
    tmp_path: Path, monkeypatch
):
    """A soft-prompt run's config names only the path of its vectors: the entry carries their digest,
    and an entry (or a run directory) made with other vectors than the committed record is refused."""
    from safetensors.torch import save_file

    import experiments.findings.ledger as L
    from experiments.findings.analyse import bank_run
    from experiments.findings.tensorjson import dump

    monkeypatch.chdir(tmp_path)
    run = next(
        s.run for s in C.steps() if s.run is not None and s.run.method == "soft-prompt" and s.run.offset == 0
    )
    ledger, vectors = Path(L.LEDGER), Path(C.soft_prompt_file(run.model))
    vectors.parent.mkdir(parents=True)
    save_file({"soft_prompt": torch.ones(4, 8)}, str(vectors))
    dump(vectors, C.soft_prompt_record(run.model))
    _finish(Path(C.ROOT), run, [0.5] * run.problems, 0)
    entry = bank_run(run, None, ledger)
    assert entry is not None and L.read_entry(run, ledger) is not None
    assert json.loads(entry.read_text())["inputs"]["soft_prompt_sha256"] is not None
    save_file({"soft_prompt": torch.zeros(4, 8)}, str(vectors))  # retrained elsewhere
    dump(vectors, C.soft_prompt_record(run.model) + ".new")
    Path(C.soft_prompt_record(run.model) + ".new").replace(C.soft_prompt_record(run.model))
    with pytest.raises(L.LedgerError, match="other inputs"):
        L.read_entry(run, ledger)
    entry.unlink()
    save_file({"soft_prompt": torch.ones(4, 8)}, str(vectors))  # the run dir's vectors, not the record's
    with pytest.raises(L.LedgerError, match="not banked"):
        bank_run(run, None, ledger)


def test_a_damaged_entry_is_refused(tmp_path: Path, monkeypatch):
    import experiments.findings.ledger as L
    from experiments.findings.analyse import bank_run

    monkeypatch.chdir(tmp_path)
    step = C.steps()[0]
    assert step.run is not None
    _finish(Path(C.ROOT), step.run, [0.2] * step.run.problems, 0)
    entry = bank_run(step.run, None, Path(L.LEDGER))
    assert entry is not None
    saved = json.loads(entry.read_text())
    pid = next(iter(saved["problems"]))
    saved["problems"][pid]["correct"] = saved["problems"][pid]["correct"][:-1]
    entry.write_text(json.dumps(saved))
    with pytest.raises(L.LedgerError, match="damaged"):
        L.read_entry(step.run, Path(L.LEDGER))


def test_a_run_made_in_shards_pools_its_shards_from_the_ledger_and_from_disk(tmp_path: Path, monkeypatch):
    from experiments.findings import runner
    from experiments.findings.analyse import bank_run, load_run

    root, ledger = tmp_path / "runs", tmp_path / "ledger"
    rsp, base = _pair(0.7)
    shards = rsp.shards()
    assert [s.offset for s in shards] == list(range(0, C.N_PROBLEMS, C.SHARD_PROBLEMS))
    assert all(s.whole() == rsp and s.problems == C.SHARD_PROBLEMS for s in shards)
    assert len({s.out for s in shards}) == len(shards)
    assert all(s.out.startswith(rsp.out + "/") for s in shards)
    for i, shard in enumerate(shards):
        _finish(root, shard, [0.5] * C.SHARD_PROBLEMS, i)
        # the shards' problems are their own: rename p00.. to the run's ids for the offset
        samples = run_dir(shard, root) / "samples.jsonl"
        lines = [json.loads(x) for x in samples.read_text().splitlines()]
        for r in lines:
            r["problem_id"] = f"p{int(r['problem_id'][1:]) + shard.offset:02d}"
        samples.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert bank_run(shards[0], root, ledger) and bank_run(shards[1], root, ledger)
    for shard in shards[:2]:  # two shards finished in an earlier session: only their ledger entries are left
        shutil.rmtree(run_dir(shard, root))
    data = load_run(rsp, root, ledger)
    assert data is not None and data.complete and sorted(data.correct) == [f"p{i:02d}" for i in range(32)]
    monkeypatch.chdir(tmp_path)
    steps = [s for s in C.steps() if s.run is not None and s.run.whole() == rsp]
    assert [s.run for s in steps] == shards
    assert runner.finished(steps[0], ledger) and not runner.finished(steps[2], ledger)


def test_a_reconstructed_entry_without_answers_gives_pass_at_k_but_no_maj(tmp_path: Path):
    from experiments.findings.ledger import RunData, write_entry
    from experiments.findings.report import cells_markdown
    from experiments.findings.runner import expected_config

    ledger = tmp_path / "ledger"
    rsp, base = _pair(0.7)
    counts = {"rsp": [8] * 16 + [0] * 16, "base": [0] * 32}
    for run, key in ((rsp, "rsp"), (base, "base")):
        correct = {f"p{i:02d}": [a < c for a in range(C.N_ATTEMPTS)] for i, c in enumerate(counts[key])}
        data = RunData(run, correct, None, {p: 40.0 for p in correct})
        write_entry(data, ledger, config=expected_config(run), code="x", source="reconstructed")
    (r,) = evaluate_all(tmp_path / "none", [Cell(rsp, base, "difficulty")], ledger)
    assert r.complete and not r.has("maj@32") and "maj@32" not in r.summary()
    assert float(r.treatment["pass@32"].mean()) == pytest.approx(0.5)
    assert float(r.treatment["pass@1"].mean()) == pytest.approx(0.125)
    assert cells_markdown([r]).splitlines()[-1].endswith("| n/a |")


def test_the_runner_estimates_what_a_step_still_needs(tmp_path: Path, monkeypatch):
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    by_out = {s.outputs[0]: s for s in C.steps() if s.outputs}
    arith = by_out["runs/findings/smollm2/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-08"]
    gsm8k = by_out["runs/findings/gemma3/gsm8k/temperature_T0.7_fp32/shard-00"]
    screen = by_out["runs/findings/gemma3/gsm8k-screen/shard-000"]
    rates = {"smollm2": 0.5, "gemma3": 1.0}
    shard = C.SHARD_PROBLEMS * 32
    assert runner.estimate_s(arith, rates) == runner.LOAD_S + shard * 0.5
    assert runner.estimate_s(gsm8k, rates) == runner.LOAD_S + shard * 1.0 * 2  # 256 new tokens
    assert runner.estimate_s(screen, rates) == runner.LOAD_S + C.SCREEN_SHARD_PROBLEMS * 8 * 2 * 1.0 * 2
    on_gsm8k = {"gemma3": 4.5}  # a measured GSM8K rate replaces the token-scaled arithmetic one
    assert runner.estimate_s(screen, rates, on_gsm8k) == runner.LOAD_S + C.SCREEN_SHARD_PROBLEMS * 8 * 2 * 4.5
    assert runner.estimate_s(gsm8k, rates, on_gsm8k) == runner.LOAD_S + shard * 4.5
    assert runner.estimate_s(arith, rates, on_gsm8k) == runner.LOAD_S + shard * 0.5, "not on arithmetic"
    assert runner.estimate_s(arith, {}) is None, "no measured rate: no estimate"
    assert arith.run is not None
    _write_run(Path(C.ROOT), arith.run, [0.5] * 3, 0)  # 3 of the shard's problems done: resumes the rest
    assert runner.estimate_s(arith, rates) == runner.LOAD_S + (shard - 3 * 32) * 0.5
    for guard in screen.done_if:  # the model's selection, then the shard's own record
        assert runner.estimate_s(screen, rates) > 0
        Path(guard).parent.mkdir(parents=True, exist_ok=True)
        Path(guard).write_text("{}")
        assert runner.estimate_s(screen, rates) == 0.0, f"{guard} makes the screen shard a no-op"
        Path(guard).unlink()


def test_with_hours_the_runner_starts_only_steps_that_fit_and_keeps_the_order(tmp_path: Path, monkeypatch):
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    by_out = {s.outputs[0]: s for s in C.steps() if s.outputs}
    long = by_out["runs/findings/gemma3/gsm8k/temperature_T0.7_fp32/shard-00"]  # 60 + 256 x 2 s: ~9.5 min
    short = by_out[
        "runs/findings/smollm2/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-00"
    ]  # 60 + 256 x 0.5 s: ~3 min
    started: list[Step] = []
    monkeypatch.setattr(runner, "steps", lambda: [long, short])
    monkeypatch.setattr(runner, "run_step", lambda step, lock: started.append(step) or 0)
    monkeypatch.setattr(runner, "live_outputs", lambda exclude=None: set())  # nothing runs elsewhere
    rates = {"smollm2": 0.5, "gemma3": 1.0}
    monkeypatch.setattr(  # no GSM8K rate measured: twice the arithmetic one, for 256 new tokens
        "experiments.findings.report.attempt_rates",
        lambda timing, machine=None, task="arith", **_: rates if task == "arith" else {},
    )
    assert runner.run_all(jobs=1, hours=0.1) == 0
    assert started == [short], "the step that cannot finish in 6 min is left for the next start"
    started.clear()
    assert runner.run_all(jobs=1, hours=1.0) == 0 and started == [long, short]
    started.clear()
    assert runner.run_all(jobs=1) == 0 and started == [long, short], "no deadline: everything runs"


def test_a_step_running_elsewhere_is_left_alone_and_takes_a_slot(tmp_path: Path, monkeypatch):
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    by_out = {s.outputs[0]: s for s in C.steps() if s.outputs}
    busy = by_out["runs/findings/gemma3/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-00"]
    free = by_out["runs/findings/smollm2/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-00"]
    started: list[Step] = []
    monkeypatch.setattr(runner, "steps", lambda: [busy, free])
    monkeypatch.setattr(runner, "run_step", lambda step, lock: started.append(step) or 0)
    monkeypatch.setattr(runner, "live_outputs", lambda exclude=None: {busy.outputs[0]})
    other = runner.claim(busy)  # the other runner that is making it
    assert other is not None
    assert runner.run_all(jobs=2) == 0 and started == [free], "a second writer would corrupt the run"
    other.release()
    assert busy.run is not None
    monkeypatch.setattr(runner, "live_outputs", lambda exclude=None: {busy.run.whole().out})
    other = runner.StepLock()
    assert other.take(busy.run.whole().out)  # another runner makes the whole run
    started.clear()
    assert runner.run_all(jobs=2) == 0 and started == [free], "the whole run is being made elsewhere"
    other.release()
    monkeypatch.setattr(runner, "SLOT_POLL_S", 0.01)
    polls = [{"x", "y"}, {"x", "y"}, {"x"}]  # two steps run elsewhere, then one of them ends
    monkeypatch.setattr(runner, "live_outputs", lambda exclude=None: polls.pop(0) if polls else set())

    def run_step(step: Step, lock) -> int:
        assert not polls, "started while both slots were taken by steps running elsewhere"
        started.append(step)
        return 0

    monkeypatch.setattr(runner, "run_step", run_step)
    started.clear()
    assert runner.run_all(jobs=2) == 0
    # Both start once a slot frees; which of the two workers sees it first is up to the scheduler.
    assert sorted(s.command for s in started) == sorted(s.command for s in (busy, free))


def test_each_screen_runs_in_fp32_from_its_recorded_offset():
    """SmolLM2's first three screen shards were made in bf16 (their records must still match their
    commands); Gemma's screen started after the switch and runs in fp32 throughout."""
    screens = {s.outputs[0]: s.command for s in C.steps() if s.kind == "screen"}
    for model, first_fp32 in (("smollm2", 24), ("gemma3", 0)):
        for offset in range(0, 48, C.SCREEN_SHARD_PROBLEMS):
            command = screens[f"{C.ROOT}/{model}/gsm8k-screen/shard-{offset:03d}"]
            assert ("--dtype float32" in command) == (offset >= first_fp32), (model, offset)


def test_a_step_left_running_by_a_killed_runner_is_waited_for_and_its_group_goes_on(
    tmp_path: Path, monkeypatch
):
    """Killing the runner leaves its children running with nobody's claim on them. A new runner must
    not give up the step's group (a GSM8K screen is one chain of 60 steps) nor start a second writer:
    it waits for the process to end, then runs the step (which resumes with nothing to do and banks it)
    and the rest of the group."""
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    chain = [s for s in C.steps() if s.kind == "screen" and s.model == "smollm2"][:2]
    started: list[Step] = []
    monkeypatch.setattr(runner, "steps", lambda: chain)
    monkeypatch.setattr(runner, "SLOT_POLL_S", 0.01)
    orphan = {chain[0].outputs[0]}
    polls = iter([orphan, orphan, orphan])  # the orphan is seen three times, then it has ended

    def run_step(step: Step, lock) -> int:
        assert not orphan & live_now[0], "never beside the process still writing the step"
        started.append(step)
        return 0

    live_now = [set()]

    def live_outputs(exclude=None) -> set[str]:
        live_now[0] = next(polls, set())
        return live_now[0]

    monkeypatch.setattr(runner, "run_step", run_step)
    monkeypatch.setattr(runner, "live_outputs", live_outputs)
    assert runner.run_all(jobs=2) == 0
    assert started == chain, "the orphan's step is banked here and its chain continues"


def test_a_step_claimed_by_another_runner_before_its_child_starts_is_left_alone(tmp_path: Path, monkeypatch):
    """Two runners started together: the first has claimed a step but its child has not exec'd, so no
    process shows the step yet. The second must not start it too (two writers corrupt a run), nor a
    step whose whole run is claimed; shards of one run may go side by side."""
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    by_out = {s.outputs[0]: s for s in C.steps() if s.outputs}
    shard = by_out["runs/findings/smollm2/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-00"]
    sibling = by_out["runs/findings/smollm2/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-08"]
    free = by_out["runs/findings/gemma3/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-00"]
    other = runner.claim(shard)  # the other runner's claim (a separate open file, as in another process)
    assert other is not None
    assert runner.claim(shard) is None, "the claimed step cannot be claimed twice"
    mine = runner.claim(sibling)
    assert mine is not None, "another shard of the same run is free"
    mine.release()
    started: list[Step] = []
    monkeypatch.setattr(runner, "steps", lambda: [shard, free])
    monkeypatch.setattr(runner, "run_step", lambda step, lock: started.append(step) or 0)
    monkeypatch.setattr(runner, "live_outputs", lambda exclude=None: set())  # no child has exec'd
    assert runner.run_all(jobs=2) == 0 and started == [free]
    other.release()
    assert shard.run is not None
    whole = runner.StepLock()
    assert whole.take(shard.run.whole().out), "no shard holds the whole run's lock any more"
    assert runner.claim(sibling) is None, "the whole run is claimed: none of its shards may start"
    whole.release()
    started.clear()
    assert runner.run_all(jobs=2) == 0 and started == [shard, free], "released claims free the steps"


@pytest.mark.parametrize("spelling", ["--out DIR", "--out=DIR", "--out ABSOLUTE", "--out ./DIR"])
def test_live_outputs_reads_the_out_flag_of_running_processes(tmp_path: Path, spelling: str):
    """A step started by hand counts however its --out is spelled, as the runner's relative path."""
    from experiments.findings.runner import live_outputs

    # the pid too: tmp_path's name is the same for each spelling, and xdist may run two at once
    out = f"{C.ROOT}/smollm2/arith1/test-{os.getpid()}-{tmp_path.name}"
    value = {
        "--out DIR": out,
        "--out=DIR": out,
        "--out ABSOLUTE": str(Path.cwd() / out),
        "--out ./DIR": f"./{out}",
    }
    flags = [f"--out={value[spelling]}"] if "=" in spelling else ["--out", value[spelling]]
    assert out not in live_outputs()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *flags])
    try:
        deadline = time.time() + 10
        while out not in live_outputs() and time.time() < deadline:  # until the child has exec'd
            time.sleep(0.05)
        assert out in live_outputs()
        assert out not in live_outputs(exclude=proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_failing_check_in_a_worker_counts_as_a_failure_and_ends_only_its_group(tmp_path: Path, monkeypatch):
    """A LedgerError (an entry under other settings) raised while a worker plans a step must not end the
    worker silently with "0 failed": it is a failure, and the other groups still run."""
    from experiments.findings import runner
    from experiments.findings.ledger import LedgerError

    monkeypatch.chdir(tmp_path)
    by_out = {s.outputs[0]: s for s in C.steps() if s.outputs}
    bad = by_out["runs/findings/smollm2/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-00"]
    after_bad = by_out["runs/findings/smollm2/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-08"]
    other = by_out["runs/findings/gemma3/arith1/rsp_T0.7_L1_a1_agp_fp32/shard-00"]
    started: list[Step] = []

    def run_step(step: Step, lock) -> int:
        if step is bad:
            raise LedgerError("made with other settings")
        started.append(step)
        return 0

    monkeypatch.setattr(runner, "steps", lambda: [bad, after_bad, other])
    monkeypatch.setattr(runner, "groups", lambda steps: [[bad, after_bad], [other]])
    monkeypatch.setattr(runner, "run_step", run_step)
    monkeypatch.setattr(runner, "live_outputs", lambda exclude=None: set())
    assert runner.run_all(jobs=1) == 1
    assert started == [other], "the failed group stops; the next group runs"


def test_a_duplicated_sample_line_does_not_count_as_another_attempt(tmp_path: Path, monkeypatch):
    from experiments.findings import runner

    monkeypatch.chdir(tmp_path)
    step = next(s for s in C.steps() if s.run is not None and s.run.offset == 0)
    assert step.run is not None
    _write_run(Path(C.ROOT), step.run, [0.5] * 2, 0)
    samples = Path(step.outputs[0]) / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    assert runner._count_samples(step) == 2 * step.run.n
    samples.write_text("".join(lines + lines[:5]) + lines[5][:20])  # two writers, then a torn line
    assert runner._count_samples(step) == 2 * step.run.n


def test_a_no_op_step_leaves_no_timing_record():
    from experiments.findings.runner import is_noop

    assert is_noop({"rc": 0, "new_attempts": 0, "wall_s": 0.1})
    assert not is_noop({"rc": 0, "new_attempts": 0, "wall_s": 900.0}), "training makes no attempts"
    assert not is_noop({"rc": 0, "new_attempts": 3, "wall_s": 1.0})
    assert not is_noop({"rc": 1, "new_attempts": 0, "wall_s": 0.1}), "a failure is always logged"


def test_attempt_rates_can_be_taken_from_one_machine_only():
    from experiments.findings.report import attempt_rates

    def rec(model: str, cpu: float, n: int, machine: str | None) -> dict:
        r = {"kind": "eval", "out": f"{C.ROOT}/{model}/arith1/x", "cpu_s": cpu, "new_attempts": n}
        return r if machine is None else {**r, "machine": machine}

    timing = [rec("smollm2", 100, 100, None), rec("smollm2", 300, 100, "slow"), rec("gemma3", 50, 10, None)]
    assert attempt_rates(timing) == {"smollm2": 2.0, "gemma3": 5.0}
    assert attempt_rates(timing, "slow") == {"smollm2": 3.0}
    assert attempt_rates(timing, "other") == {}


def test_gsm8k_rates_come_from_gsm8k_steps_measured_on_one_machine():
    """A GSM8K attempt costs more than its 2x token budget says; the runner must plan GSM8K steps with
    the GSM8K rate, and for a model without one, with the GSM8K-to-arithmetic ratio of a model measured
    on the same machine (never across machines, whose bf16 speeds differ several-fold)."""
    from experiments.findings.report import attempt_rates, gsm8k_rates, gsm8k_ratio

    def rec(model: str, task: str, cpu: float, n: int, machine: str) -> dict:
        kind = "screen" if task == "gsm8k-screen" else "eval"
        return {
            "kind": kind,
            "out": f"{C.ROOT}/{model}/{task}/x",
            "cpu_s": cpu,
            "new_attempts": n,
            "machine": machine,
        }

    timing = [
        rec("smollm2", "arith1", 300, 100, "slow"),
        rec("smollm2", "gsm8k-screen", 1500, 100, "slow"),  # 5x arithmetic, on the same machine
        rec("gemma3", "arith2", 100, 100, "fast"),
        rec("smollm2", "arith1", 50, 100, "fast"),
    ]
    assert attempt_rates(timing, "slow", "gsm8k") == {"smollm2": 15.0}
    assert attempt_rates(timing, "slow") == {"smollm2": 3.0}, "GSM8K steps do not enter the arithmetic rate"
    assert gsm8k_ratio(timing) == pytest.approx(5.0)
    assert gsm8k_ratio(timing[2:]) == 2.0, "nothing measured: the ratio of max new tokens"
    assert gsm8k_rates({"smollm2": 3.0, "gemma3": 9.0}, {"smollm2": 15.0}, 5.0) == {
        "smollm2": 15.0,
        "gemma3": 45.0,
    }


def test_an_fp32_step_is_planned_with_fp32_rates_once_measured():
    from experiments.findings.runner import step_rates

    def rec(model: str, wall: float, dtype: str | None) -> dict:
        command = "rsp eval --model x" + (f" --dtype {dtype}" if dtype else "")
        return {
            "kind": "eval",
            "out": f"{C.ROOT}/{model}/arith1/x",
            "cpu_s": wall,
            "wall_s": wall,
            "new_attempts": 1,
            "machine": "m",
            "command": command,
        }

    timing = [rec("smollm2", 4.0, None), rec("gemma3", 9.0, None), rec("smollm2", 1.0, "float32")]
    arith, _ = step_rates(timing, "m", "float32")
    assert arith == {"smollm2": 1.0, "gemma3": 9.0}, "gemma3 has no fp32 rate yet: its bf16 one"
    assert step_rates(timing, "m", "auto")[0] == {"smollm2": 4.0, "gemma3": 9.0}
    from experiments.findings.report import rate_tables

    assert rate_tables(timing, "float32")[0] == arith, "the report's estimate plans fp32 runs the same way"
    timing.append({**rec("smollm2", 30.0, "float32"), "out": f"{C.ROOT}/smollm2/gsm8k-screen/x"})
    assert rate_tables(timing, "float32")[1]["smollm2"] == 30.0, "a measured GSM8K rate is used as it is"


def test_a_slower_cpu_scales_the_rates_it_has_not_measured():
    from experiments.findings.report import local_rates

    everywhere = {"smollm2": 1.0, "gemma3": 2.0}
    assert local_rates(everywhere, {}) == everywhere
    assert local_rates(everywhere, {"gemma3": 8.0}) == {"smollm2": 4.0, "gemma3": 8.0}
    assert local_rates(everywhere, {"smollm2": 3.0, "gemma3": 4.0}) == {"smollm2": 3.0, "gemma3": 4.0}


def test_a_trained_soft_prompt_is_kept_as_json_and_a_later_session_restores_it_exactly(
    tmp_path: Path, monkeypatch
):
    """A soft prompt trained against a wall-clock budget differs between machines: the map trains it
    once, commits its vectors as JSON text (no weight files in the repository), and the train step of a
    later session restores them bit for bit instead of training; a damaged record fails the step
    instead of silently training other vectors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from experiments.findings.runner import keep_soft_prompt

    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(REPO / "experiments")  # the step runs from the root
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rsp").write_text("#!/bin/sh\nexit 99\n")  # training would be attempted
    (bin_dir / "rsp").chmod(0o755)
    # The step calls `python`: this interpreter's, whether or not its venv is activated.
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {**os.environ, "PATH": path}
    step = next(s for s in C.steps() if s.kind == "train-soft-prompt" and s.model == "gemma3")
    trained, record = Path(step.outputs[0]), Path(step.outputs[1])
    assert subprocess.run(["bash", "-c", step.command], env=env).returncode == 99, "nothing to reuse yet"
    vectors = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) / 3
    save_file({"soft_prompt": vectors}, str(trained / "soft_prompt.safetensors"), metadata={"position": "x"})
    (trained / "history.json").write_text("{}")
    assert keep_soft_prompt(trained, record) == record / "soft_prompt.json"
    assert keep_soft_prompt(trained, record) is None, "kept once"
    assert (record / "history.json").is_file()
    assert not list(record.glob("*.safetensors")), "no weight file in the committed record"
    shutil.rmtree(tmp_path / "runs")  # the next session
    assert subprocess.run(["bash", "-c", step.command], env=env).returncode == 0
    with safe_open(str(trained / "soft_prompt.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("soft_prompt"), vectors), "restored bit for bit"
        assert f.metadata() == {"position": "x"}
    shutil.rmtree(tmp_path / "runs")
    kept = record / "soft_prompt.json"
    kept.write_text(kept.read_text().replace(repr(float(vectors[0, 0])), "0.5", 1))
    rc = subprocess.run(["bash", "-c", step.command], env=env, capture_output=True).returncode
    assert rc not in (0, 99), "a damaged record fails; it neither passes nor retrains"


def test_findings_entry_point_parses_its_flags_from_config_dataclasses(tmp_path):
    from experiments.findings.__main__ import SelectConfig, main
    from rsp.config import RSPArgumentParser

    argv = ["--screen", "runs/s", "--out", "runs/d", "--limit", "32"]
    (cfg,) = RSPArgumentParser([SelectConfig]).parse(argv)
    assert (cfg.screen, cfg.out, cfg.limit) == ("runs/s", "runs/d", 32)
    (tmp_path / "c.yaml").write_text("screen: runs/s\nout: runs/x\nlimit: 32\n")
    assert RSPArgumentParser([SelectConfig]).parse(
        ["--config", str(tmp_path / "c.yaml"), "--out", "runs/d"]
    ) == (cfg,)
    assert main(["no-such-command"]) == 2


# ------------------------------------------------------------------------------------------- replication

_FAKE_CLI = '''
import json, os, shutil, sys
from pathlib import Path

def main():
    """Stands in for the frozen code's `rsp eval`: the banked run again, with attempt 0 of p00 flipped
    (what a tie broken the other way on another CPU does)."""
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    shutil.copytree(os.environ["FAKE_SOURCE"], out)
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    for r in lines:
        if r["problem_id"] == "p00" and r["attempt"] == 0:
            r["correct"] = not r["correct"]
            r["extracted"] = r["completion"] = "7" if r["correct"] else "999"
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in lines))
    return 0
'''


def _replication_setup(tmp_path: Path, commit: str) -> tuple[C.Run, Path, Path]:
    from experiments.findings.analyse import bank_run

    run = C.Run(SMOL, ARITH1, "temperature", 0.7, 0, dtype=C.FAST_DTYPE, offset=0)
    runs_root, ledger = tmp_path / "runs", tmp_path / "ledger"
    _finish(runs_root, run, [0.5] * 8, 3)
    (runs_root / "code").mkdir()
    (runs_root / "code" / "COMMIT").write_text("abc123\n")
    assert bank_run(run, runs_root, ledger) is not None
    src = tmp_path / "frozen" / "src"
    (src / "rsp").mkdir(parents=True)
    (src / "rsp" / "__init__.py").write_text("")
    (src / "rsp" / "cli.py").write_text(_FAKE_CLI)
    (src.parent / "COMMIT").write_text(commit + "\n")
    return run, ledger, src


def test_replication_reruns_with_the_frozen_code_and_counts_every_changed_attempt(
    tmp_path: Path, monkeypatch
):
    from experiments.findings.replicate import replicate

    run, ledger, src = _replication_setup(tmp_path, "abc123")
    monkeypatch.setenv("FAKE_SOURCE", str(run_dir(run, tmp_path / "runs")))
    key = "smollm2/arith1/temperature_T0.7_fp32/shard-00"
    out, a = replicate(key, root=tmp_path / "rerun", ledger=ledger, docs=tmp_path / "docs", code_src=src)
    assert (tmp_path / "rerun" / key / "samples.jsonl").is_file(), "the rerun goes under --root"
    assert (a.problems, a.attempts) == (8, 8 * C.N_ATTEMPTS)
    assert a.same_grade == a.attempts - 1 and a.same_answer == a.attempts - 1
    assert (a.problems_same_count, a.max_count_change) == (7, 1)
    assert a.problems_same_tokens == 8, "the stand-in changes no length"
    assert abs(a.banked["pass@1"] - a.rerun["pass@1"]) == pytest.approx(1 / (8 * C.N_ATTEMPTS), abs=1e-6)
    record = json.loads(out.read_text())
    assert out == tmp_path / "docs" / "smollm2" / "arith1" / "temperature_T0.7_fp32" / "shard-00.json"
    assert record["code"] == "abc123" and record["rerun_machine"] and record["same_grade"] == a.same_grade


def test_replication_refuses_other_code_and_unknown_runs(tmp_path: Path):
    from experiments.findings.replicate import ReplicationError, replicate

    _, ledger, src = _replication_setup(tmp_path, "def456")
    with pytest.raises(ReplicationError, match="made with code abc123"):
        replicate("smollm2/arith1/temperature_T0.7_fp32/shard-00", ledger=ledger, code_src=src)
    with pytest.raises(ReplicationError, match="temperature_T0.7_fp32/shard-00"):  # the hint lists real runs
        replicate("smollm2/arith1/temperature_T0.7_fp32/shard-99", ledger=ledger, code_src=src)
    whole = C.Run(SMOL, ARITH1, "temperature", 0.7, 0)  # a bf16 run of the first sessions, rebuilt
    with pytest.raises(ReplicationError, match="cannot be compared one by one"):
        replicate(whole.out.removeprefix(C.ROOT + "/"), ledger=REPO / C.LEDGER, code_src=src)
    with pytest.raises(ReplicationError, match="no ledger entry"):
        replicate("smollm2/arith1/temperature_T0.7_fp32/shard-08", ledger=ledger, code_src=src)


def test_the_committed_report_is_what_the_committed_ledger_regenerates(tmp_path: Path, monkeypatch):
    """`python -m experiments.findings report` from the ledger alone (no runs/) rewrites docs/findings.md
    and every file of docs/findings/ byte for byte: the page and its tables are never edited by hand
    out of step with the data, and the moved harness still reads every committed entry."""
    monkeypatch.chdir(REPO)  # the analysis records and the DAPO summary are read from docs/
    docs = REPO / "docs"
    out, doc = tmp_path / "findings", tmp_path / "findings.md"
    shutil.copytree(docs / "findings", out)
    shutil.copy(docs / "findings.md", doc)
    build_report(root=tmp_path / "no-runs", out=out, doc=doc)
    assert doc.read_bytes() == (docs / "findings.md").read_bytes()
    kept = docs / "findings"
    committed = sorted(p.relative_to(kept) for p in kept.rglob("*") if p.is_file())
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert made == committed, "the report wrote files that are not committed"
    changed = [str(p) for p in committed if (out / p).read_bytes() != (kept / p).read_bytes()]
    assert not changed, f"regenerated files differ from the committed ones: {changed}"
