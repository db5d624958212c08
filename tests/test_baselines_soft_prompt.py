"""Soft-prompt training on a tiny model: loss goes down, the loss sees only solutions, files round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rsp.baselines.soft_prompt import (
    SoftPromptInjection,
    SoftPromptTrainConfig,
    build_examples,
    load_soft_prompt,
    mean_loss,
    save_soft_prompt,
    solution_loss,
    train_soft_prompt,
)
from rsp.core import RandomSoftPrompt, derive_seed


def _config(**kw) -> SoftPromptTrainConfig:
    base = dict(
        model="tiny",
        rsp_length=2,
        train_size=16,
        val_size=4,
        steps=30,
        eval_every=10,
        batch_size=4,
        lr=0.1,
        patience=3,
    )
    base.update(kw)
    return SoftPromptTrainConfig(**base)


@pytest.mark.slow
def test_training_lowers_the_training_loss_and_the_file_round_trips(tiny_lm, tmp_path):
    config = _config()
    result = train_soft_prompt(tiny_lm, config, tmp_path, progress=False)
    train, _ = build_examples(tiny_lm, config)
    init = RandomSoftPrompt(tiny_lm.embedding_stats(), 2).rows([derive_seed(0, "soft-prompt-init")])[0]
    before = mean_loss(tiny_lm, SoftPromptInjection(init), train, 8)
    after = mean_loss(tiny_lm, SoftPromptInjection(result.vectors), train, 8)
    assert after < before - 0.02, (before, after)  # a random 2-layer model barely reads its input
    assert result.best_val_loss < result.initial_val_loss
    loaded = load_soft_prompt(tmp_path)  # a directory resolves to its soft_prompt.safetensors
    assert torch.equal(loaded.vectors, result.vectors)
    raw = load_file(str(tmp_path / "soft_prompt.safetensors"))["soft_prompt"]
    assert raw.dtype == torch.float32 and raw.shape == (2, tiny_lm.hidden_size)
    for key in ("model", "length", "position", "data", "steps", "best_val_loss"):
        assert key in loaded.metadata
    assert loaded.metadata["model"] == "tiny-llama" and loaded.position == "after_generation_prompt"
    assert (tmp_path / "loss.png").stat().st_size > 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["train"]) == result.steps_run and history["val"][0][0] == 0
    assert all(p.requires_grad for p in tiny_lm.model.parameters())  # frozen only while training


def test_loss_is_on_solution_tokens_only_and_independent_of_padding(tiny_lm):
    config = _config()
    train, _ = build_examples(tiny_lm, config)
    a, b = train[0], train[1]
    short = type(b)(b.prompt.__class__(b.prompt.ids[4:], b.prompt.user_turn_end - 4), b.target[:3], b.source)
    inj = SoftPromptInjection(torch.randn(2, tiny_lm.hidden_size))
    with torch.no_grad():
        together, n = solution_loss(tiny_lm, inj, [a, short])
        alone_a, na = solution_loss(tiny_lm, inj, [a])
        alone_s, ns = solution_loss(tiny_lm, inj, [short])
    assert n == na + ns == len(a.target) + 3
    assert float(together) == pytest.approx(float(alone_a + alone_s), rel=1e-4)


def test_early_stopping_keeps_the_best_vectors(tiny_lm, tmp_path):
    # No held-out improvement can beat min_delta, so the RSP initialisation stays the best.
    result = train_soft_prompt(
        tiny_lm, _config(min_delta=1.0, eval_every=2, patience=2, steps=40), tmp_path, progress=False
    )
    assert (result.stop_reason, result.steps_run, result.best_step) == ("patience", 4, 0)
    init = RandomSoftPrompt(tiny_lm.embedding_stats(), 2).rows([derive_seed(0, "soft-prompt-init")])[0]
    assert torch.equal(load_soft_prompt(tmp_path / "soft_prompt.safetensors").vectors, init)


def test_peft_prompt_tuning_adapter_loads_as_a_prepended_soft_prompt(tmp_path):
    from conftest import build_tiny_llama
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    peft_model = get_peft_model(
        build_tiny_llama(),
        PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3, prompt_tuning_init=PromptTuningInit.RANDOM
        ),
    )
    peft_model.save_pretrained(str(tmp_path))
    soft = load_soft_prompt(tmp_path)
    assert soft.position == "prepend" and soft.length == 3
    assert torch.equal(soft.vectors, peft_model.get_prompt_embedding_to_save("default").float())


def test_bad_files_and_settings_get_clear_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_soft_prompt(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_soft_prompt(tmp_path)
    with pytest.raises(ValueError, match="--val-size"):
        _config(val_size=0).validate()
    with pytest.raises(ValueError, match=r"rsp_position \(--rsp-position\) must be one of"):
        _config(rsp_position="middle").validate()


# ------------------------------------------------------------------------------ rsp train-soft-prompt flags


def test_config_file_plus_one_flag_equals_the_flags_alone(tmp_path):
    from rsp.baselines.cli import parse_train_soft_prompt

    (tmp_path / "sp.yaml").write_text(
        "model: tiny\nrsp_length: 3\nrsp_position: end_of_user_turn\ndata: [arith, gsm8k]\n"
        "steps: 50\nmax_seconds: 30\nout: runs/sp\n"
    )
    from_file = parse_train_soft_prompt(["--config", str(tmp_path / "sp.yaml"), "--steps", "80"])
    flags = parse_train_soft_prompt(
        [
            *("--model", "tiny", "--rsp-length", "3", "--rsp-position", "end_of_user_turn"),
            *("--data", "arith,gsm8k", "--steps", "80", "--max-seconds", "30", "--out", "runs/sp"),
        ]
    )
    assert from_file == flags
    config, output = flags
    assert (config.rsp_length, config.data, config.steps, config.max_seconds) == (
        3,
        ("arith", "gsm8k"),
        80,
        30,
    )
    assert output.out == "runs/sp" and not output.quiet


def test_a_soft_prompt_file_saved_before_the_renames_loads_and_new_files_keep_the_format(tmp_path):
    save_soft_prompt(tmp_path / "a.safetensors", torch.zeros(2, 8), "end_of_user_turn", {"model": "m"})
    meta = safe_open_metadata(tmp_path / "a.safetensors")
    assert meta["position"] == "end_of_user_turn" and meta["format"] == "rsp-soft-prompt/1"
    assert load_soft_prompt(tmp_path / "a.safetensors").position == "end_of_user_turn"


def safe_open_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def test_train_soft_prompt_main_rejects_bad_settings_naming_field_and_flag():
    from rsp.baselines.cli import train_soft_prompt_main

    with pytest.raises(ValueError, match=r"val_size \(--val-size\) must be >= 1"):
        train_soft_prompt_main(["--val-size", "0", "--out", "x"])
