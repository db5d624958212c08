"""`rsp eval` end to end on a tiny model: records, resume after interruption, refusals, report files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsp.cli import main as rsp_main
from rsp.evaluation import ConfigError, EvalConfig, plan_batches, run_eval
from rsp.models import load_model
from rsp.reporting import write_eval_report
from rsp.runio import RunDirError, read_jsonl_records


def _config(model_dir, **kw) -> EvalConfig:
    base = dict(
        model=str(model_dir),
        limit=3,
        n=4,
        methods=("temperature", "rsp"),
        rsp_length=2,
        max_new_tokens=6,
        batch_size=4,
        temperature=0.9,
        dtype="float32",
    )
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32")


def test_plan_batches_is_deterministic_and_covers_everything():
    batches = plan_batches(5, 4, ("a", "b"), 8)
    rows = [(b.method, p, a) for b in batches for p, a in b.rows]
    assert len(rows) == len(set(rows)) == 5 * 4 * 2
    assert batches == plan_batches(5, 4, ("a", "b"), 8)
    assert [b.method for b in batches[:2]] == ["a", "b"]  # methods interleaved per problem group


def test_records_have_the_documented_fields(tmp_path, tiny_model_dir, tiny_loaded):
    run = run_eval(_config(tiny_model_dir), tmp_path / "r", lm=tiny_loaded, progress=False)
    assert len(run.records) == 3 * 4 * 2
    r = run.records[0]
    for key in (
        "problem_id",
        "method",
        "attempt",
        "rsp_seed",
        "decode_seed",
        "prompt_hash",
        "completion",
        "token_ids",
        "extracted",
        "correct",
    ):
        assert key in r
    rsp_seeds = [x["rsp_seed"] for x in run.records if x["method"] == "rsp"]
    assert len(set(rsp_seeds)) == len(rsp_seeds)  # a fresh RSP for every attempt
    assert all(x["rsp_seed"] is None for x in run.records if x["method"] == "temperature")
    summary = write_eval_report(tmp_path / "r", run.records, run.config.to_dict())
    assert summary["problems"] == 3
    for name in ("summary.md", "summary.json", "passk.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0


def test_interrupted_run_resumes_to_identical_output(tmp_path, tiny_model_dir, tiny_loaded):
    cfg = _config(tiny_model_dir)
    run_eval(cfg, tmp_path / "full", lm=tiny_loaded, progress=False)
    run_eval(cfg, tmp_path / "part", lm=tiny_loaded, progress=False, max_batches=2)
    partial = read_jsonl_records(tmp_path / "part" / "samples.jsonl")
    assert 0 < len(partial) < 24
    # simulate a kill mid-write: a torn final line
    with open(tmp_path / "part" / "samples.jsonl", "a") as f:
        f.write('{"problem_id": "arith-s1')
    run_eval(cfg, tmp_path / "part", lm=tiny_loaded, progress=False)
    full_bytes = (tmp_path / "full" / "samples.jsonl").read_bytes()
    assert (tmp_path / "part" / "samples.jsonl").read_bytes() == full_bytes
    keys = [
        (r["problem_id"], r["method"], r["attempt"])
        for r in read_jsonl_records(tmp_path / "part" / "samples.jsonl")
    ]
    assert len(keys) == len(set(keys)) == 24


def test_finished_run_is_not_recomputed(tmp_path, tiny_model_dir, tiny_loaded):
    cfg = _config(tiny_model_dir)
    run_eval(cfg, tmp_path / "r", lm=tiny_loaded, progress=False)
    before = (tmp_path / "r" / "samples.jsonl").stat().st_mtime_ns
    run = run_eval(
        cfg, tmp_path / "r", lm=None, progress=False
    )  # lm=None: would have to load if work remained
    assert (tmp_path / "r" / "samples.jsonl").stat().st_mtime_ns == before
    assert len(run.records) == 24


def test_restart_with_different_settings_is_refused(tmp_path, tiny_model_dir, tiny_loaded):
    run_eval(_config(tiny_model_dir), tmp_path / "r", lm=tiny_loaded, progress=False, max_batches=1)
    with pytest.raises(RunDirError, match=r"rsp_length: 2 -> 3"):
        run_eval(_config(tiny_model_dir, rsp_length=3), tmp_path / "r", lm=tiny_loaded, progress=False)


def test_greedy_runs_are_byte_identical(tmp_path, tiny_model_dir, tiny_loaded):
    cfg = _config(tiny_model_dir, temperature=0.0)
    run_eval(cfg, tmp_path / "a", lm=tiny_loaded, progress=False)
    run_eval(cfg, tmp_path / "b", lm=tiny_loaded, progress=False)
    assert (tmp_path / "a" / "samples.jsonl").read_bytes() == (tmp_path / "b" / "samples.jsonl").read_bytes()
    recs = read_jsonl_records(tmp_path / "a" / "samples.jsonl")
    greedy_rsp = {r["completion"] for r in recs if r["method"] == "rsp"}
    assert len(greedy_rsp) > 1  # fresh RSPs make greedy attempts differ


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n": 0}, r"n \(--n\) must be >= 1"),
        ({"rsp_length": -1}, r"rsp_length \(--rsp-length\) must be >= 0"),
        ({"temperature": -0.5}, r"temperature \(--temperature\) must be >= 0"),
        ({"methods": ("rsp", "bogus")}, "unknown method 'bogus'"),
        ({"batch_size": 0}, r"batch_size \(--batch-size\) must be >= 1"),
        ({"rsp_position": "middle"}, r"rsp_position \(--rsp-position\) must be one of"),
        ({"top_p": 1.5}, "top_p must be in"),
        (
            {"engine": "hf", "tensor_parallel_size": 2},
            r"tensor_parallel_size \(--tensor-parallel-size\) applies to --engine vllm only",
        ),
        ({"engine": "tgi"}, r"engine \(--engine\) must be one of hf, lean, prefix, vllm"),
    ],
)
def test_bad_settings_get_specific_errors(tmp_path, tiny_model_dir, kw, message):
    with pytest.raises(ConfigError, match=message):
        run_eval(_config(tiny_model_dir, **kw), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing written for a rejected config


def test_context_overflow_is_refused(tmp_path, tiny_model_dir, tiny_loaded):
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        run_eval(_config(tiny_model_dir, max_new_tokens=5000), tmp_path / "r", lm=tiny_loaded, progress=False)


def test_context_check_uses_the_soft_prompt_files_length_not_rsp_length(
    tmp_path, tiny_model_dir, tiny_loaded
):
    import torch

    from rsp.baselines.soft_prompt import save_soft_prompt

    hidden = tiny_loaded.model.config.hidden_size
    limit = tiny_loaded.model.config.max_position_embeddings
    save_soft_prompt(tmp_path / "long.safetensors", torch.zeros(limit, hidden), "after_generation_prompt", {})
    config = _config(
        tiny_model_dir,
        methods=("soft-prompt",),
        rsp_length=1,
        max_new_tokens=4,
        method_options={"soft_prompt": str(tmp_path / "long.safetensors")},
    )
    with pytest.raises(ConfigError, match=rf"{limit} injected vectors \(soft-prompt\)"):
        run_eval(config, tmp_path / "r", lm=tiny_loaded, progress=False)


def _cli(args: list[str], threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-m", "rsp.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_cli_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir):
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--limit",
        "6",
        "--n",
        "4",
        "--batch-size",
        "4",
        "--max-new-tokens",
        "24",
        "--rsp-length",
        "2",
        "--quiet",
    ]
    # The uninterrupted run and the last resume run in this process (`rsp.cli.main`, what the console
    # script calls); only the runs that get killed need a process of their own. One thread everywhere, as
    # in this process (tests/conftest.py), so that the processes' arithmetic is the same.
    assert rsp_main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    samples = out / "samples.jsonl"
    kills = 0
    for _ in range(2):  # killed as soon as a batch more than before is on disk, twice
        before = len(samples.read_bytes().splitlines()) if samples.exists() else 0
        proc = _cli([*args, "--out", str(out)], threads=1)
        while proc.poll() is None and (
            not samples.exists() or len(samples.read_bytes().splitlines()) <= before
        ):
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert rsp_main([*args, "--out", str(out)]) == 0
    assert kills == 2  # 24 attempts in 6 batches: neither run could have finished before its kill
    assert (out / "samples.jsonl").read_bytes() == (tmp_path / "ref" / "samples.jsonl").read_bytes()


@pytest.mark.slow
def test_cli_reports_bad_input_without_traceback(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": \n')
    cases = [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", str(tiny_model_dir), "--task", "nonsense"], "unknown task 'nonsense'"),
        (["--model", str(tiny_model_dir), "--task", str(bad)], f"{bad}:2: malformed JSON"),
        (["--model", str(tiny_model_dir), "--n", "0"], "n (--n) must be >= 1"),
    ]
    for i, (extra, message) in enumerate(cases):
        argv = ["eval", *extra, "--out", str(tmp_path / "o"), "--quiet"]
        if i == 0:  # once as the console script runs it, in a process of its own
            proc = _cli(argv)
            _, err = proc.communicate(timeout=120)
            status = proc.returncode
        else:  # the rest through `rsp.cli.main`, which the console script calls (no interpreter start)
            try:
                status = rsp_main(argv)
            except SystemExit as exc:  # argparse's own errors
                status = exc.code
            err = capsys.readouterr().err
        assert status == 2, err
        assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_report_command_rebuilds_summary(tmp_path, tiny_model_dir, tiny_loaded):
    run_eval(_config(tiny_model_dir), tmp_path / "r", lm=tiny_loaded, progress=False)
    proc = _cli(["report", "--run", str(tmp_path / "r")])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "| rsp |" in out and json.loads((tmp_path / "r" / "summary.json").read_text())["problems"] == 3
    assert Path(tmp_path / "r" / "passk.png").is_file()


@pytest.mark.parametrize("engine", ["prefix", "lean"])
def test_engines_give_the_same_greedy_records_as_hf(tmp_path, tiny_model_dir, tiny_loaded, engine):
    base = _config(tiny_model_dir, temperature=0.0)
    run_eval(base, tmp_path / "hf", lm=tiny_loaded, progress=False)
    other = _config(tiny_model_dir, temperature=0.0, engine=engine)
    run_eval(other, tmp_path / engine, lm=tiny_loaded, progress=False)
    a = read_jsonl_records(tmp_path / "hf" / "samples.jsonl")
    b = read_jsonl_records(tmp_path / engine / "samples.jsonl")
    assert [(r["completion"], r["rsp_seed"]) for r in a] == [(r["completion"], r["rsp_seed"]) for r in b]
