"""Mechanism analysis: metric formulas, teacher forcing equals generation, attention shares, saved == live."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rsp.analysis.distributions import (
    bleu,
    distinct_n,
    distinct_prefixes,
    entropy,
    first_divergence,
    kl_divergence,
    log_probs,
    self_bleu,
)
from rsp.analysis.run import AnalysisOptions, analyse_run
from rsp.analysis.scoring import attention_mass, teacher_forced_logits
from rsp.core import NoInjection, PromptTokens, RandomSoftPrompt
from rsp.engines import HFEngine
from rsp.evaluation import EvalConfig, run_eval
from rsp.models import load_model


def test_entropy_and_kl_match_hand_computation():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.5, 0.25])
    assert float(entropy(p.log())) == pytest.approx(1.5 * math.log(2))
    assert float(kl_divergence(p.log(), q.log())) == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5))
    assert float(kl_divergence(p.log(), p.log())) == pytest.approx(0.0)
    logits = torch.tensor([2.0, 0.0, 0.0])
    lp = log_probs(logits, temperature=2.0)
    ref = torch.tensor([math.e, 1.0, 1.0]) / (math.e + 2)
    assert torch.allclose(lp.exp(), ref)
    uniform = log_probs(torch.zeros(8))
    assert float(entropy(uniform)) == pytest.approx(math.log(8))


def test_branching_and_diversity_measures():
    seqs = [[1, 2, 3, 4], [1, 2, 5, 6], [1, 7, 3, 4]]
    assert distinct_prefixes(seqs, 3) == [1, 2, 3]
    assert first_divergence([1, 2, 3], [1, 2, 4]) == 3
    assert first_divergence([1, 2], [1, 2, 3]) == 3
    assert distinct_n([[1, 1, 1]], 1) == pytest.approx(1 / 3)
    assert distinct_n([[1, 2], [3, 4]], 2) == 1.0
    assert bleu([1, 2, 3, 4, 5], [[1, 2, 3, 4, 5]]) == pytest.approx(1.0, rel=1e-9)
    assert bleu([1, 2, 3, 4, 5], [[6, 7, 8, 9, 10]]) == 0.0
    assert 0 < bleu([1, 2, 3, 9, 9], [[1, 2, 3, 4, 5]]) < 1
    assert self_bleu([[1, 2, 3, 4]] * 3) == pytest.approx(1.0)


def _prompts():
    return [
        PromptTokens(ids=(1, 40, 41, 42, 43, 3, 50), user_turn_end=5),
        PromptTokens(ids=(1, 60, 3, 70), user_turn_end=2),
    ]


def test_teacher_forced_logits_equal_generation_logits(tiny_lm):
    prompts = _prompts()
    inj = RandomSoftPrompt(tiny_lm.embedding_stats(), 3)
    seeds = [11, 12]
    backend = HFEngine(tiny_lm)
    batch, embeds = backend.prepare(prompts, inj, seeds)
    torch.manual_seed(0)
    out = tiny_lm.model.generate(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        do_sample=True,
        max_new_tokens=6,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=None,
        pad_token_id=0,
        top_k=0,
    )
    gen_logits = torch.stack(out.logits, dim=1)  # (B, 6, V)
    tokens = out.sequences.tolist()
    tf = teacher_forced_logits(tiny_lm, prompts, inj, seeds, tokens, 6)
    assert torch.allclose(tf, gen_logits.float(), atol=1e-4)


def test_attention_shares_respect_masks_and_padding(tiny_lm):
    prompts = _prompts()
    inj = RandomSoftPrompt(tiny_lm.embedding_stats(), 2)
    seeds = [1, 2]
    trajs = [[5, 6, 7, 8], [9, 10, 11, 12]]
    mass = attention_mass(tiny_lm, prompts, inj, seeds, trajs, 4)
    assert mass.shape == (2, 2, 4)
    assert float(mass.min()) >= 0 and float(mass.max()) <= 1
    batch, _ = HFEngine(tiny_lm).prepare(prompts, inj, seeds)
    width = batch.input_ids.shape[1] + 3
    every = torch.arange(width).expand(2, -1)
    total = attention_mass(tiny_lm, prompts, inj, seeds, trajs, 4, key_columns=every)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)  # all keys: shares sum to one
    pads = torch.zeros(2, 1, dtype=torch.long)  # column 0 is left padding in the shorter row
    on_pad = attention_mass(tiny_lm, prompts, inj, seeds, trajs, 4, key_columns=pads)
    assert float(on_pad[1].abs().max()) == 0.0


def test_uniform_attention_gives_the_exact_slot_share(tiny_lm):
    # zero queries make every score equal, so attention is uniform over the visible keys
    for layer in tiny_lm.model.model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
    prompts = _prompts()
    inj = RandomSoftPrompt(tiny_lm.embedding_stats(), 2)
    mass = attention_mass(tiny_lm, prompts, inj, [1, 2], [[5, 6, 7], [9, 10, 11]], 3)
    for row, prompt in enumerate(prompts):
        for t in range(3):
            visible = len(prompt.ids) + 2 + t  # prompt + slots + tokens generated before t
            assert torch.allclose(mass[row, :, t], torch.full((2,), 2 / visible), atol=1e-6)


def test_a_layer_attending_only_to_slots_gives_one(tiny_lm, monkeypatch):
    import rsp.analysis.scoring as scoring

    prompts = _prompts()
    inj = RandomSoftPrompt(tiny_lm.embedding_stats(), 2)
    batch, _ = HFEngine(tiny_lm).prepare(prompts, inj, [1, 2])

    def slot_only_hooks(model):
        layers = [m for n, m in model.named_modules() if n.endswith("self_attn")]

        def force(module, args, output):
            w = torch.zeros_like(output[1])
            for b in range(w.shape[0]):
                w[b, :, :, batch.slot_index[b]] = 0.5
            return output[0], w

        for m in layers:
            m.register_forward_hook(force)
        return layers

    monkeypatch.setattr(scoring, "attention_layers", slot_only_hooks)
    mass = attention_mass(tiny_lm, prompts, inj, [1, 2], [[5, 6], [7, 8]], 2)
    assert torch.allclose(mass, torch.ones_like(mass))


@pytest.mark.slow
def test_saved_run_analysis_equals_live(tmp_path, tiny_model_dir):
    from rsp.cli import main

    lm = load_model(str(tiny_model_dir), dtype="float32")
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        limit=2,
        n=3,
        methods=("temperature", "rsp"),
        rsp_length=2,
        max_new_tokens=8,
        batch_size=6,
        dtype="float32",
    )
    run_eval(cfg, tmp_path / "saved", lm=lm, progress=False)
    saved = analyse_run(tmp_path / "saved", options=AnalysisOptions(k=6), lm=lm, progress=False)
    code = main(
        [
            "analyze",
            "--model",
            str(tiny_model_dir),
            "--dtype",
            "float32",
            "--limit",
            "2",
            "--n",
            "3",
            "--methods",
            "temperature,rsp",
            "--rsp-length",
            "2",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "6",
            "--k",
            "6",
            "--out",
            str(tmp_path / "live"),
            "--quiet",
        ]
    )
    assert code == 0
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert live["metrics"]["rsp"]["entropy"]["mean"] == pytest.approx(
        saved["metrics"]["rsp"]["entropy"]["mean"]
    )
    assert live["metrics"]["rsp"]["kl"]["mean"] == pytest.approx(saved["metrics"]["rsp"]["kl"]["mean"])
    assert live["metrics"]["rsp"]["attention"]["mean"] == pytest.approx(
        saved["metrics"]["rsp"]["attention"]["mean"]
    )
    assert (tmp_path / "live" / "report.md").read_text().count("![") >= 4
    assert "kl" not in saved["metrics"]["temperature"]  # no injection, no KL


def test_no_injection_uses_prompt_tokens_before_insertion(tiny_lm):
    from rsp.analysis.scoring import columns_before_insertion

    prompts = _prompts()
    batch, _ = HFEngine(tiny_lm).prepare(prompts, NoInjection(), [None, None])
    cols = columns_before_insertion(prompts, "after_generation_prompt", 2, batch)
    # row 1 is left-padded by 3; its last two prompt tokens sit at the last two columns
    assert cols.tolist() == [[5, 6], [5, 6]]


def test_analyze_of_a_directory_that_is_no_eval_run_names_it(tmp_path, capsys):
    from rsp.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["analyze", "--run", str(tmp_path / "empty")]) == 2
    assert f"rsp analyze: error: {tmp_path / 'empty'} is not an rsp eval run (no config.json)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "empty" / "analysis").exists()  # nothing written, no model loaded
