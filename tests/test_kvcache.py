"""The preallocated KV cache gives the same logits as transformers' DynamicCache, step for step."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_gemma, build_tiny_llama
from transformers import DynamicCache

from rsp.engines.kvcache import GrowingLayer, growing_cache


def run_steps(model, cache, ids, steps, drop_at):
    """Prefill, then greedy steps; at step `drop_at` keep only rows 0 and 2 (row compaction)."""
    out = []
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits[
            :, -1
        ]
        for step in range(steps):
            out.append(logits)
            token = logits.argmax(-1, keepdim=True)
            if step == drop_at:
                keep = torch.tensor([0, 2])
                cache.batch_select_indices(keep)
                token, mask = token[keep], mask[keep]
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            logits = model(
                input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True
            ).logits[:, -1]
    return out


@pytest.mark.parametrize("build", [build_tiny_llama, build_tiny_gemma])
@pytest.mark.parametrize("reserve", [1, 64])  # 1 forces a regrow at almost every step
def test_growing_cache_matches_dynamic_cache(build, reserve):
    model = build(dtype=torch.bfloat16)
    ids = torch.randint(4, 200, (3, 7))
    want = run_steps(model, DynamicCache(config=model.config), ids, 20, drop_at=5)
    cache = growing_cache(model.config, reserve)
    got = run_steps(model, cache, ids, 20, drop_at=5)
    assert any(isinstance(layer, GrowingLayer) for layer in cache.layers)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert cache.get_seq_length() == 7 + 20


def test_growing_layer_crop_and_repeat():
    layer = GrowingLayer(reserve=4)
    k = torch.arange(2 * 1 * 5 * 2, dtype=torch.float32).view(2, 1, 5, 2)
    layer.update(k, k + 100)
    layer.crop(-2)
    assert layer.get_seq_length() == 3 and torch.equal(layer.keys, k[..., :3, :])
    layer.batch_repeat_interleave(2)
    assert layer.keys.shape == (4, 1, 3, 2) and torch.equal(layer.values[1], k[0, :, :3] + 100)
    keys, _ = layer.update(
        k[..., :1, :].repeat_interleave(2, dim=0), k[..., :1, :].repeat_interleave(2, dim=0)
    )
    assert keys.shape == (4, 1, 4, 2) and torch.equal(keys[3, :, 3], k[1, :, 0])
