"""`rsp train` runs: resume after a kill repeats the uninterrupted run, config mismatch is refused, flags
parse, and a checkpoint that would run code when unpickled is refused before anything of it runs."""

from __future__ import annotations

import json

import pytest
from conftest import TinyTokenizer, build_tiny_llama

from rsp.models import wrap_model
from rsp.records import read_rollouts
from rsp.runio import RunDirError
from rsp.train.config import DAPOConfig
from rsp.train.run import CheckpointError, latest_checkpoint, train


def _fresh_lm():
    return wrap_model(build_tiny_llama(), TinyTokenizer(), name="tiny-llama")


def _reward(text: str, gold: str) -> bool:
    return sum(map(ord, text)) % 2 == 0  # deterministic in the text; mixed groups on a random model


CFG = dict(
    model="tiny-llama",
    steps=3,
    checkpoint_every=1,
    group_size=4,
    prompts_per_step=2,
    max_new_tokens=6,
    overlong_buffer=2,
    train_problems=8,
    lora_r=4,
    lora_target_modules=["q_proj", "v_proj"],
    max_extra_rounds=1,
    lr=1e-2,
    updates_per_batch=2,
    rsp_length=2,
)


def _metrics(path):
    return [
        {k: v for k, v in json.loads(line).items() if k != "step_time"}
        for line in path.read_text().splitlines()
    ]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    cfg = DAPOConfig(**CFG)
    train(cfg, tmp_path / "full", lm=_fresh_lm(), reward_fn=_reward, progress=False)
    train(cfg, tmp_path / "split", lm=_fresh_lm(), reward_fn=_reward, progress=False, stop_after=2)
    assert latest_checkpoint(tmp_path / "split").name == "step_000002.pt"
    assert len(_metrics(tmp_path / "split" / "metrics.jsonl")) == 2
    train(cfg, tmp_path / "split", lm=_fresh_lm(), reward_fn=_reward, progress=False)
    full, split = (
        _metrics(tmp_path / "full" / "metrics.jsonl"),
        _metrics(tmp_path / "split" / "metrics.jsonl"),
    )
    assert [m["step"] for m in split] == [1, 2, 3]
    assert any(m["updated"] for m in full)
    for a, b in zip(full, split, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7, nan_ok=True), k
    assert (tmp_path / "split" / "curves.png").stat().st_size > 0
    # Rollouts read back through the typed schema; the resumed run's file is byte-identical to the full run's.
    rollouts = read_rollouts(tmp_path / "split" / "rollouts.jsonl")
    assert rollouts == read_rollouts(tmp_path / "full" / "rollouts.jsonl")
    assert sorted({r["step"] for r in rollouts}) == [1, 2, 3]
    assert (tmp_path / "split" / "rollouts.jsonl").read_bytes() == (
        tmp_path / "full" / "rollouts.jsonl"
    ).read_bytes()
    assert (tmp_path / "full" / "adapter" / "adapter_config.json").is_file()

    with pytest.raises(RunDirError, match="different settings.*steps"):
        train(
            DAPOConfig(**{**CFG, "steps": 4}),
            tmp_path / "split",
            lm=_fresh_lm(),
            reward_fn=_reward,
            progress=False,
        )


def test_cli_flags_override_config_file(tmp_path):
    from rsp.train.cli import parse

    (tmp_path / "c.json").write_text(json.dumps(DAPOConfig(steps=7, rsp_length=8).to_dict()))
    cfg, output, _ = parse(
        [
            "--config",
            str(tmp_path / "c.json"),
            "--out",
            str(tmp_path / "o"),
            "--rsp-length",
            "0",
            "--no-lora",
            "--lora-target-modules",
            "q_proj,v_proj",
        ]
    )
    assert (cfg.steps, cfg.rsp_length, cfg.lora, cfg.lora_target_modules) == (
        7,
        0,
        False,
        ["q_proj", "v_proj"],
    )
    assert output.out == str(tmp_path / "o")


@pytest.mark.slow
def test_merged_model_directory_loads_with_the_trained_weights(tmp_path, tiny_model_dir):
    import torch

    from rsp.models import load_model

    lm = load_model(str(tiny_model_dir), dtype="float32")
    cfg = DAPOConfig(**{**CFG, "model": str(tiny_model_dir), "steps": 1})
    train(cfg, tmp_path / "run", lm=lm, reward_fn=_reward, progress=False, save_merged=True)
    reloaded = load_model(str(tmp_path / "run" / "merged"), dtype="float32")
    trained = dict(lm.model.named_parameters())
    base = dict(load_model(str(tiny_model_dir), dtype="float32").model.named_parameters())
    name = next(n for n in trained if n.endswith("q_proj.weight"))
    assert torch.equal(dict(reloaded.model.named_parameters())[name], trained[name])
    assert not torch.equal(base[name], trained[name])


class _RunsCode:
    """Unpickling this calls Path.write_text: what a crafted checkpoint in a downloaded run could do."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.slow
def test_a_checkpoint_that_runs_code_on_load_is_refused_and_nothing_runs(tmp_path):
    import torch

    cfg = DAPOConfig(**{**CFG, "steps": 2})
    out = tmp_path / "run"
    train(cfg, out, lm=_fresh_lm(), reward_fn=_reward, progress=False, stop_after=1)
    ckpt = latest_checkpoint(out)
    state = torch.load(ckpt, weights_only=True)  # what rsp writes loads under the safe loader
    marker = tmp_path / "marker"
    torch.save({**state, "step": _RunsCode(marker)}, ckpt)
    with pytest.raises(CheckpointError, match="refusing to resume"):
        train(cfg, out, lm=_fresh_lm(), reward_fn=_reward, progress=False)
    assert not marker.exists()
    assert issubclass(
        CheckpointError, RunDirError
    )  # `rsp train` reports it as an error (exit 2), no traceback
