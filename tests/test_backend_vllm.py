"""vLLM request builder: one unpadded prompt-embeddings request per attempt, no engine needed."""

from __future__ import annotations

import pytest
import torch
from conftest import chat_prompts

from rsp.backends import HFBackend
from rsp.backends.vllm import build_requests, vllm_available
from rsp.core import RandomSoftPrompt


@pytest.mark.parametrize("position", ["after_generation_prompt", "end_of_user_turn", "prepend"])
def test_one_request_per_attempt_with_its_own_rsp(tiny_lm, position):
    prompts = chat_prompts(tiny_lm, ["hi", "a longer question"], attempts=3)
    injection = RandomSoftPrompt(tiny_lm.embedding_stats(), 4, position=position)
    seeds = [100 + i for i in range(len(prompts))]
    requests = build_requests(tiny_lm, prompts, injection, seeds, decode_seed=5)
    assert len(requests) == len(prompts)
    assert len({r.seed for r in requests}) == len(requests), "each attempt needs its own decode seed"
    batch, padded = HFBackend(tiny_lm).prepare(prompts, injection, seeds)
    for i, (req, prompt) in enumerate(zip(requests, prompts, strict=True)):
        at = prompt.insert_index(position)
        assert req.prompt_embeds.shape == (len(prompt.ids) + 4, tiny_lm.model.config.hidden_size)
        assert torch.equal(req.prompt_embeds[at:at + 4], injection.rows([seeds[i]])[0])
        token_rows = torch.cat([req.prompt_embeds[:at], req.prompt_embeds[at + 4:]])
        assert torch.equal(token_rows, tiny_lm.embed(torch.tensor([prompt.ids]))[0])
        width = int(batch.attention_mask[i].sum())
        assert torch.equal(req.prompt_embeds, padded[i, -width:]), "same rows as the HF backend, minus padding"
    assert not torch.equal(requests[0].prompt_embeds, requests[1].prompt_embeds)


def test_seed_count_must_match(tiny_lm):
    prompts = chat_prompts(tiny_lm, ["hi"], attempts=2)
    with pytest.raises(ValueError, match="one injection seed per prompt"):
        build_requests(tiny_lm, prompts, RandomSoftPrompt(tiny_lm.embedding_stats(), 2), [1], decode_seed=0)


def test_sampling_params_never_share_a_prompt():
    ok, why = vllm_available()
    if not ok:
        pytest.skip(why)
    from rsp.backends import SamplingConfig
    from rsp.backends.vllm import sampling_params

    params = sampling_params(SamplingConfig(temperature=0.7, top_k=5), seed=3, stop_token_ids=[2], stop_strings=[])
    assert params.n == 1 and params.seed == 3 and params.top_k == 5
