"""Control methods checked directly on tensors: shapes, which rows change, and how draws are shared."""

from __future__ import annotations

import pytest
import torch

from rsp.baselines.controls import EmbeddingNoise, text_token_pool
from rsp.baselines.soft_prompt import save_soft_prompt
from rsp.engines import HFEngine
from rsp.methods import RSPConfig, build_method, method_names
from rsp.tasks import PromptBuilder, load_task

CONTROLS = (
    "rsp-fixed",
    "rsp-shared",
    "rsp-scaled",
    "token-rows",
    "token-string",
    "embed-noise",
    "mean-vector",
    "soft-prompt",
)


@pytest.fixture
def prompts(tiny_lm):
    task = load_task("arith", limit=2, arith_steps=1, arith_max_value=10)
    builder = PromptBuilder.for_task(tiny_lm.tokenizer, task)
    return task.problems, [builder.build(p) for p in task.problems]


def _slot_rows(tiny_lm, method, problems, prompts, attempts, length=3, **extra):
    """Rows injected for every (problem, attempt), via the backend's real prepare path."""
    inj = build_method(method, tiny_lm, RSPConfig(length=length, method_options=extra))
    pairs = [(i, a) for i in range(len(problems)) for a in attempts]
    seeds = [inj.seed_for(0, problems[i].id, a) for i, a in pairs]
    batch, embeds = HFEngine(tiny_lm).prepare([prompts[i] for i, _ in pairs], inj, seeds)
    rows = torch.stack([embeds[b, batch.slot_index[b]] for b in range(len(pairs))])
    return inj, batch, embeds, rows, seeds


def _embed(tiny_lm, ids):
    with torch.no_grad():
        return tiny_lm.embed(ids)


def test_all_controls_are_registered_methods():
    assert set(CONTROLS) <= set(method_names())


@pytest.mark.parametrize(
    "method", ["rsp-fixed", "rsp-shared", "rsp-scaled", "token-rows", "token-string", "mean-vector"]
)
def test_only_the_slots_change(tiny_lm, prompts, method):
    problems, ps = prompts
    inj, batch, embeds, rows, _ = _slot_rows(tiny_lm, method, problems, ps, [0, 1])
    assert rows.shape == (4, 3, tiny_lm.hidden_size)
    changed = (embeds != _embed(tiny_lm, batch.input_ids)).any(-1)
    assert torch.equal(changed, batch.slot_mask())


def test_sharing_patterns(tiny_lm, prompts):
    problems, ps = prompts
    _, _, _, fixed, fixed_seeds = _slot_rows(tiny_lm, "rsp-fixed", problems, ps, [0, 1])
    assert len(set(fixed_seeds)) == 1 and all(torch.equal(fixed[0], r) for r in fixed)
    _, _, _, shared, _ = _slot_rows(
        tiny_lm, "rsp-shared", problems, ps, [0, 1]
    )  # order: (p0,a0),(p0,a1),(p1,a0),(p1,a1)
    assert torch.equal(shared[0], shared[1]) and torch.equal(shared[2], shared[3])
    assert not torch.equal(shared[0], shared[2])
    for method in ("rsp", "rsp-scaled", "token-rows", "token-string"):
        _, _, _, rows, seeds = _slot_rows(tiny_lm, method, problems, ps, [0, 1])
        assert len(set(seeds)) == 4, method
        assert all(not torch.equal(rows[i], rows[j]) for i in range(4) for j in range(i)), method
    _, _, _, mean, seeds = _slot_rows(tiny_lm, "mean-vector", problems, ps, [0, 1])
    stats = tiny_lm.embedding_stats()
    assert seeds == [None] * 4
    assert torch.allclose(mean, stats.mean_vector().expand_as(mean))


def test_rsp_scaled_multiplies_the_deviation_from_the_mean(tiny_lm, prompts):
    problems, ps = prompts
    _, _, _, plain, _ = _slot_rows(tiny_lm, "rsp", problems, ps, [0])
    _, _, _, scaled, _ = _slot_rows(tiny_lm, "rsp-scaled", problems, ps, [0], rsp_scale=2.5)
    mean = tiny_lm.embedding_stats().mean_vector()
    assert torch.allclose(scaled - mean, 2.5 * (plain - mean), atol=1e-5)
    inj = build_method("rsp-scaled", tiny_lm, RSPConfig(length=2, scale=0.5))
    assert inj.scale == 0.5  # without the rsp_scale option, --rsp-scale is the scale
    with pytest.raises(ValueError, match="method option of rsp-scaled 'alpha' was renamed to 'rsp_scale'"):
        _slot_rows(tiny_lm, "rsp-scaled", problems, ps, [0], alpha=2.5)


def test_token_rows_are_real_table_rows_reproducible_by_seed(tiny_lm, prompts):
    problems, ps = prompts
    inj, _, _, rows, seeds = _slot_rows(tiny_lm, "token-rows", problems, ps, [0, 1])
    ids = inj.token_ids(seeds)
    assert torch.equal(rows, _embed(tiny_lm, ids))
    assert torch.equal(inj.rows(seeds), inj.rows(seeds))


def test_token_string_equals_inserting_the_tokens(tiny_lm, prompts):
    problems, ps = prompts
    inj, batch, embeds, _, seeds = _slot_rows(tiny_lm, "token-string", problems, ps, [0, 1])
    ids = inj.token_ids(seeds)
    specials = {0, 1, 2, 3}  # pad, bos, eos, end-of-turn of the tiny tokenizer
    assert not specials & set(ids.flatten().tolist())
    as_tokens = batch.input_ids.clone()
    as_tokens.scatter_(1, batch.slot_index, ids)
    assert torch.equal(embeds, _embed(tiny_lm, as_tokens))
    assert len(inj.text(seeds[0])) == 3


@pytest.mark.real_model
def test_text_token_pool_drops_special_and_byte_fragment_tokens(smollm2):
    pool = set(text_token_pool(smollm2.tokenizer, 49152).tolist())
    assert not pool & set(smollm2.tokenizer.all_special_ids)
    assert not pool & set(smollm2.tokenizer.get_added_vocab().values())
    assert 40000 < len(pool) < 49152


def test_embed_noise_touches_only_real_prompt_tokens_with_neftune_magnitude(tiny_lm, prompts):
    problems, ps = prompts
    inj = build_method("embed-noise", tiny_lm, RSPConfig(length=4, method_options={"noise_alpha": 8}))
    assert inj.length == 0
    short = ps[0].__class__(ids=ps[0].ids[5:], user_turn_end=ps[0].user_turn_end - 5)  # forces left padding
    seeds = [inj.seed_for(0, problems[0].id, 0), inj.seed_for(0, problems[0].id, 1)]
    batch, embeds = HFEngine(tiny_lm).prepare([ps[0], short], inj, seeds)
    diff = embeds - _embed(tiny_lm, batch.input_ids)
    touched = (diff != 0).any(-1)
    assert torch.equal(touched, batch.attention_mask.bool())  # padding untouched, every real token noised
    for row in range(2):
        tokens = int(batch.attention_mask[row].sum())
        bound = 8 / (tokens * tiny_lm.hidden_size) ** 0.5
        assert diff[row].abs().max() <= bound * (1 + 1e-5)
        assert diff[row].abs().max() > 0.9 * bound  # uniform(-1,1): the max entry is close to the bound
    alone, embeds_alone = HFEngine(tiny_lm).prepare([short], inj, seeds[1:])
    assert torch.equal(
        embeds_alone[0, -len(short.ids) :], embeds[1, -len(short.ids) :]
    )  # independent of batching


def test_embed_noise_is_scaled_into_the_effective_space(tiny_gemma_lm):
    inj = build_method("embed-noise", tiny_gemma_lm, RSPConfig())
    assert isinstance(inj, EmbeddingNoise) and inj.embed_scale == pytest.approx(64**0.5, rel=1e-3)
    assert inj.noise(7, 10).abs().max() <= 5 / (10 * 64) ** 0.5 * inj.embed_scale


def test_soft_prompt_method_injects_the_file_vectors_at_its_position(tiny_lm, prompts, tmp_path):
    problems, ps = prompts
    vectors = torch.randn(3, tiny_lm.hidden_size)
    save_soft_prompt(tmp_path / "sp.safetensors", vectors, "end_of_user_turn", {"model": tiny_lm.name})
    inj = build_method(
        "soft-prompt",
        tiny_lm,
        RSPConfig(length=99, method_options={"soft_prompt": str(tmp_path / "sp.safetensors")}),
    )
    assert inj.length == 3 and inj.position == "end_of_user_turn"
    seeds = [inj.seed_for(0, p.id, 0) for p in problems]
    batch, embeds = HFEngine(tiny_lm).prepare(ps, inj, seeds)
    start = int(batch.slot_index[0, 0]) - int((batch.attention_mask[0] == 0).sum())
    assert start == ps[0].user_turn_end
    for b in range(2):
        assert torch.equal(embeds[b, batch.slot_index[b]], vectors)


def test_soft_prompt_errors_are_specific(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="soft_prompt=PATH"):
        build_method("soft-prompt", tiny_lm, RSPConfig())
    save_soft_prompt(tmp_path / "wide.safetensors", torch.zeros(2, 32), "prepend", {})
    with pytest.raises(ValueError, match="hidden size 32"):
        build_method(
            "soft-prompt",
            tiny_lm,
            RSPConfig(method_options={"soft_prompt": str(tmp_path / "wide.safetensors")}),
        )
    with pytest.raises(FileNotFoundError):
        build_method(
            "soft-prompt",
            tiny_lm,
            RSPConfig(method_options={"soft_prompt": str(tmp_path / "missing.safetensors")}),
        )
