"""Faults a long run must survive: out-of-memory, disk full, unwritable output, corrupt files."""

from __future__ import annotations

import errno

import pytest
import torch

from rsp.core import RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig
from rsp.evaluation import EvalConfig, run_eval
from rsp.models import load_model
from rsp.runio import JsonlAppender, RunDirError, prepare_run_dir, read_jsonl_records


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32")


def test_out_of_memory_backs_off_to_smaller_batches(tiny_lm, monkeypatch):
    real_generate = tiny_lm.model.generate
    tried, succeeded = [], []

    def flaky_generate(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        tried.append(rows)
        if rows > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        succeeded.append(rows)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_lm.model, "generate", flaky_generate)
    from rsp.core import PromptTokens

    prompts = [PromptTokens(ids=(1, 10 + i, 11, 12), user_turn_end=2) for i in range(6)]
    inj = RandomSoftPrompt(tiny_lm.embedding_stats(), 2)
    backend = HFEngine(tiny_lm)
    out = backend.generate(prompts, inj, list(range(6)), SamplingConfig(0, max_new_tokens=4), decode_seed=0)
    assert len(out) == 6
    assert tried[0] == 6 and max(succeeded) <= 2 and sum(succeeded) == 6
    assert backend.oom_events and "out of memory at batch 6" in backend.oom_events[0]
    # greedy results are the same as without the fault
    monkeypatch.setattr(tiny_lm.model, "generate", real_generate)
    clean = HFEngine(tiny_lm).generate(
        prompts, inj, list(range(6)), SamplingConfig(0, max_new_tokens=4), decode_seed=0
    )
    assert [c.token_ids for c in clean] == [c.token_ids for c in out]


def test_other_runtime_errors_are_not_swallowed(tiny_lm, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(tiny_lm.model, "generate", broken)
    from rsp.core import NoInjection, PromptTokens

    with pytest.raises(RuntimeError, match="shape mismatch"):
        HFEngine(tiny_lm).generate(
            [PromptTokens((1, 2), 1)] * 2,
            NoInjection(),
            [None, None],
            SamplingConfig(0, max_new_tokens=2),
            decode_seed=0,
        )


def test_disk_full_keeps_finished_records_and_says_how_to_resume(tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    app = JsonlAppender(path)
    app.append([{"a": 1}])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(RunDirError, match="disk full while writing .* rerun the same command to resume"):
        app.append([{"a": 2}])
    monkeypatch.undo()
    assert read_jsonl_records(path)[0] == {"a": 1}


def test_output_directory_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="cannot create output directory"):
        prepare_run_dir(blocker / "run", {"a": 1}, kind="eval")


def test_corrupt_config_and_records_are_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="config.json exists but is unreadable"):
        prepare_run_dir(tmp_path, {"a": 1}, kind="eval")
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"a": 1}\n{broken\n{"a": 3}\n')
    with pytest.raises(RunDirError, match="corrupt record on line 2"):
        read_jsonl_records(bad)


def test_run_of_another_kind_is_refused(tmp_path):
    prepare_run_dir(tmp_path, {"a": 1}, kind="sweep")
    with pytest.raises(RunDirError, match="holds a 'sweep' run"):
        prepare_run_dir(tmp_path, {"a": 1}, kind="eval")


def test_sampling_resume_reproduces_rsp_tensors(tmp_path, tiny_model_dir, tiny_loaded):
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        limit=2,
        n=3,
        methods=("rsp",),
        rsp_length=3,
        max_new_tokens=4,
        batch_size=3,
        dtype="float32",
    )
    run = run_eval(cfg, tmp_path / "r", lm=tiny_loaded, progress=False)
    inj = RandomSoftPrompt(tiny_loaded.embedding_stats(), 3)
    for rec in run.records:
        # the recorded seed is exactly the one the injection derives, so the tensor can be rebuilt
        assert rec["rsp_seed"] == inj.seed_for(0, rec["problem_id"], rec["attempt"])
    a = inj.rows([run.records[0]["rsp_seed"]])
    b = inj.rows([run.records[0]["rsp_seed"]])
    assert torch.equal(a, b)
