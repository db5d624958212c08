"""Prepacked oneDNN weights: bit-identical logits and greedy tokens, patched only while decoding."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama, chat_prompts, sharpen

from rsp.core import RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig
from rsp.engines.lean import LeanEngine
from rsp.engines.packed import WeightPacker, packing_supported
from rsp.models import wrap_model

pytestmark = pytest.mark.skipif(
    not packing_supported()[0], reason=f"weight packing: {packing_supported()[1]}"
)


@pytest.fixture
def bf16_lm(tiny_tokenizer):
    model = sharpen(build_tiny_llama(dtype=torch.bfloat16))
    return wrap_model(model, tiny_tokenizer, name="tiny-bf16")


def linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_packed_logits_are_bit_identical_and_the_patch_is_undone(bf16_lm):
    model = bf16_lm.model
    ids = torch.randint(4, 200, (3, 9))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        packer = WeightPacker()
        with packer.applied(model) as patched:
            assert patched == len(linears(model)) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
            assert all("forward" in m.__dict__ for m in linears(model))
            got = model(input_ids=ids).logits
    assert packer.identical is True
    assert torch.equal(got, want)
    assert not any("forward" in m.__dict__ for m in linears(model))


def test_changed_weights_are_repacked(bf16_lm):
    layer = bf16_lm.model.model.layers[0].mlp.down_proj
    x = torch.randn(2, layer.in_features).to(torch.bfloat16)
    packer = WeightPacker()
    with torch.no_grad():
        with packer.applied(bf16_lm.model):
            before = layer(x)
        layer.weight.mul_(2)
        with packer.applied(bf16_lm.model):
            after = layer(x)
        assert torch.equal(after, torch.nn.functional.linear(x, layer.weight))
    assert not torch.equal(before, after)


def test_fp32_layers_are_left_alone(tiny_lm):
    with WeightPacker().applied(tiny_lm.model) as patched:
        assert patched == 0


def test_packed_lean_greedy_matches_generate_in_bf16(bf16_lm):
    prompts = chat_prompts(bf16_lm, ["hi", "a longer question here"], attempts=3)
    injection = RandomSoftPrompt(bf16_lm.embedding_stats(), 4)
    seeds = list(range(len(prompts)))
    sampling = SamplingConfig(temperature=0, max_new_tokens=12)
    ref = HFEngine(bf16_lm).generate(prompts, injection, seeds, sampling, decode_seed=0)
    backend = LeanEngine(bf16_lm)
    lean = backend.generate(prompts, injection, seeds, sampling, decode_seed=0)
    assert backend.packer.identical is True, "the packed path must actually have run"
    assert lean == ref
    assert len({c.token_ids for c in ref}) > 2


def test_hf_backend_feeds_the_head_a_contiguous_input_with_identical_bf16_tokens(bf16_lm):
    """generate() slices hidden[:, -1:, :] at prefill; a non-contiguous 3-D input made matmul expand the
    head weight to (B, d, vocab). The backend's pre-hook avoids that without changing a bf16 token."""
    prompts = chat_prompts(bf16_lm, ["hi", "a longer question here"], attempts=2)
    injection = RandomSoftPrompt(bf16_lm.embedding_stats(), 4)
    seeds = list(range(len(prompts)))
    sampling = SamplingConfig(temperature=0, max_new_tokens=8)
    backend = HFEngine(bf16_lm)
    seen: list[bool] = []
    spy = bf16_lm.model.lm_head.register_forward_hook(
        lambda m, args, out: seen.append(args[0].is_contiguous())
    )
    try:
        ours = backend.generate(prompts, injection, seeds, sampling, decode_seed=0)
        assert seen and all(seen)
        seen.clear()
        batch, embeds = backend.prepare(prompts, injection, seeds)
        with torch.no_grad():
            raw = bf16_lm.model.generate(
                inputs_embeds=embeds,
                attention_mask=batch.attention_mask,
                **backend.generation_kwargs(sampling),
            )
    finally:
        spy.remove()
    assert not seen[0], (
        "plain generate() hands the head a non-contiguous prefill slice (the case the hook fixes)"
    )
    assert [c.token_ids for c in ours] == [backend._finish(r.tolist(), sampling, ()).token_ids for r in raw]
