"""Insertion and generation from embeddings: L=0 equals plain ids, padding is neutral, scales honoured."""

from __future__ import annotations

import pytest
import torch

from rsp.core import NoInjection, PromptTokens, RandomSoftPrompt, build_slotted_batch, fill_slots
from rsp.engines import HFEngine, SamplingConfig


def _prompts() -> list[PromptTokens]:
    return [
        PromptTokens(ids=(1, 40, 41, 42, 43, 44, 45, 3, 50), user_turn_end=7),
        PromptTokens(ids=(1, 60, 61, 3, 70), user_turn_end=3),
        PromptTokens(ids=(1, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 3, 90), user_turn_end=11),
    ]


def test_slotted_batch_layout_left_pads_and_places_slots():
    batch = build_slotted_batch([[5, 6, 7], [8, 9]], [3, 1], 2, pad_id=0, placeholder_id=99)
    assert batch.input_ids.tolist() == [[5, 6, 7, 99, 99], [0, 8, 99, 99, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert batch.slot_index.tolist() == [[3, 4], [2, 3]]


def test_length_zero_is_plain_left_padded_batch():
    batch = build_slotted_batch([[5, 6, 7], [8]], [3, 1], 0, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.slot_index.shape == (2, 0)


def test_insertion_points_resolve_to_token_offsets():
    p = PromptTokens(ids=(1, 2, 3, 4, 5), user_turn_end=3)
    assert p.insert_index("after_generation_prompt") == 5
    assert p.insert_index("end_of_user_turn") == 3
    assert p.insert_index("prepend") == 0
    with pytest.raises(ValueError, match="unknown insertion point"):
        p.insert_index("middle")


def test_fill_slots_writes_only_slot_rows():
    embeds = torch.zeros(2, 5, 3)
    batch = build_slotted_batch([[5, 6, 7], [8, 9]], [3, 1], 2, pad_id=0)
    rows = torch.arange(12, dtype=torch.float32).view(2, 2, 3) + 1
    out = fill_slots(embeds, batch.slot_index, rows)
    assert torch.equal(out[0, 3:5], rows[0]) and torch.equal(out[1, 2:4], rows[1])
    mask = batch.slot_mask()
    assert out[~mask].abs().sum() == 0


def test_generation_from_embeddings_with_l0_equals_generation_from_ids(tiny_lm):
    prompts = _prompts()
    backend = HFEngine(tiny_lm)
    sampling = SamplingConfig(temperature=0, max_new_tokens=12)
    ours = backend.generate(prompts, NoInjection(), [None] * 3, sampling, decode_seed=0)
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt.ids])
        ref = tiny_lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=list(tiny_lm.stop_token_ids),
            pad_token_id=0,
        )
        new = ref[0, ids.shape[1] :].tolist()
        stop = next((i for i, t in enumerate(new) if t in tiny_lm.stop_token_ids), len(new))
        assert list(got.token_ids) == new[:stop]


@pytest.mark.parametrize("fixture", ["tiny_lm", "tiny_gemma_lm"])
def test_left_padded_batch_matches_each_row_alone(fixture, request):
    lm = request.getfixturevalue(fixture)
    prompts = _prompts()
    inj = RandomSoftPrompt(lm.embedding_stats(), 3)
    seeds = [inj.seed_for(0, f"p{i}", 0) for i in range(3)]
    backend = HFEngine(lm)
    sampling = SamplingConfig(temperature=0, max_new_tokens=10)
    batched = backend.generate(prompts, inj, seeds, sampling, decode_seed=0)
    for i, prompt in enumerate(prompts):
        alone = backend.generate([prompt], inj, [seeds[i]], sampling, decode_seed=0)[0]
        assert alone.token_ids == batched[i].token_ids


def test_rsp_changes_the_input_and_zero_scale_rsp_is_the_mean(tiny_lm):
    prompts = _prompts()[:1]
    backend = HFEngine(tiny_lm)
    stats = tiny_lm.embedding_stats()
    batch, embeds = backend.prepare(prompts, RandomSoftPrompt(stats, 4, scale=0.0), [7])
    slots = embeds[0, batch.slot_index[0]]
    assert torch.allclose(slots, stats.mean_vector().expand(4, -1))
    plain_batch, plain = backend.prepare(prompts, NoInjection(), [None])
    mask = batch.slot_mask()[0]
    assert torch.equal(embeds[0, ~mask], plain[0])  # prompt rows untouched


def test_gemma_embedding_scale_is_measured_and_used(tiny_gemma_lm):
    lm = tiny_gemma_lm
    weight = lm.model.get_input_embeddings().weight
    expected = weight.shape[1] ** 0.5
    assert lm.embed_scale == pytest.approx(expected, rel=1e-3)
    stats = lm.embedding_stats()
    assert stats.std == pytest.approx(
        float((weight.detach().double() * expected).std(unbiased=False)), rel=1e-4
    )
    ids = torch.tensor([[5, 6]])
    assert torch.allclose(lm.embed(ids), weight[ids] * expected, rtol=1e-5)


def test_insertion_points_put_rsp_where_named(tiny_lm):
    prompt = _prompts()[0]
    backend = HFEngine(tiny_lm)
    stats = tiny_lm.embedding_stats()
    for position, start in [
        ("after_generation_prompt", len(prompt.ids)),
        ("end_of_user_turn", 7),
        ("prepend", 0),
    ]:
        batch, _ = backend.prepare([prompt], RandomSoftPrompt(stats, 2, position=position), [1])
        assert batch.slot_index[0].tolist() == [start, start + 1]
        ids = batch.input_ids[0].tolist()
        assert ids[:start] + ids[start + 2 :] == list(prompt.ids)


@pytest.mark.real_model
def test_smollm2_l0_embeddings_generation_equals_ids(smollm2):
    from rsp.tasks import PromptBuilder, arith_task

    task = arith_task(n=2)
    builder = PromptBuilder.for_task(smollm2.tokenizer, task)
    prompts = [builder.build(p) for p in task.problems]
    backend = HFEngine(smollm2)
    sampling = SamplingConfig(temperature=0, max_new_tokens=16)
    ours = backend.generate(
        prompts, RandomSoftPrompt(smollm2.embedding_stats(), 0), [1, 2], sampling, decode_seed=0
    )
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt.ids])
        ref = smollm2.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=16,
            eos_token_id=list(smollm2.stop_token_ids),
            pad_token_id=smollm2.pad_token_id,
        )
        new = ref[0, ids.shape[1] :].tolist()
        stop = next((i for i, t in enumerate(new) if t in smollm2.stop_token_ids), len(new))
        assert list(got.token_ids) == new[:stop]
