"""The lean decode loop: token-for-token greedy agreement with `generate`, same sampling distribution."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from rsp.backends import HFBackend, SamplingConfig
from rsp.backends.lean import LeanHFBackend
from rsp.core import NoInjection, PromptTokens, RandomSoftPrompt


def chat_prompt(lm, question: str) -> PromptTokens:
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                            add_generation_prompt=True)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return PromptTokens(tuple(ids), len(ids) - 2)


def test_lean_greedy_matches_generate(sharp_lm):
    prompts = [chat_prompt(sharp_lm, q) for q in ["hi", "a longer question here", "mid size"] for _ in range(2)]
    injection = RandomSoftPrompt(sharp_lm.embedding_stats(), 4)
    seeds = list(range(len(prompts)))
    sampling = SamplingConfig(temperature=0, max_new_tokens=12)
    ref = HFBackend(sharp_lm).generate(prompts, injection, seeds, sampling, decode_seed=0)
    lean = LeanHFBackend(sharp_lm).generate(prompts, injection, seeds, sampling, decode_seed=0)
    assert lean == ref
    assert len({c.token_ids for c in ref}) == len(ref)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1% point of chi-square (Wilson-Hilferty approximation; scipy is not a dependency)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_stat(counts: Counter, probs: torch.Tensor, n: int) -> tuple[float, int]:
    expected = probs * n
    big = (expected >= 5).nonzero().flatten().tolist()
    stat, rest_obs, rest_exp = 0.0, n - sum(counts[t] for t in big), n - float(expected[big].sum())
    for t in big:
        stat += (counts[t] - float(expected[t])) ** 2 / float(expected[t])
    if rest_exp >= 5:
        stat += (rest_obs - rest_exp) ** 2 / rest_exp
        return stat, len(big)
    return stat, len(big) - 1


def test_lean_sampling_matches_softmax(tiny_lm):
    n = 3000
    sampling = SamplingConfig(temperature=1.5, top_k=12, max_new_tokens=1)
    prompt = chat_prompt(tiny_lm, "sample me")
    backend = LeanHFBackend(tiny_lm)
    out = backend.generate([prompt] * n, NoInjection(), [None] * n, sampling, decode_seed=3)
    counts = Counter(c.token_ids[0] if c.token_ids else tiny_lm.stop_token_ids[0] for c in out)
    batch, embeds = backend.prepare([prompt], NoInjection(), [None])
    with torch.no_grad():
        logits = tiny_lm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits[0, -1].float()
    kth = logits.topk(12).values[-1]
    probs = torch.softmax(logits.masked_fill(logits < kth, -math.inf) / 1.5, -1)
    stat, df = chi2_stat(counts, probs, n)
    assert df >= 4
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df}"
    untempered = torch.softmax(logits.masked_fill(logits < kth, -math.inf), -1)
    wrong, wrong_df = chi2_stat(counts, untempered, n)
    assert wrong > chi2_critical(wrong_df), "the test must tell temperature 1.5 from 1.0"


@pytest.mark.real_model
def test_lean_greedy_matches_generate_smollm2(smollm2):
    prompts = [chat_prompt(smollm2, q) for q in ["What is 7 times 8?", "Name a colour."]]
    sampling = SamplingConfig(temperature=0, max_new_tokens=16)
    injection = RandomSoftPrompt(smollm2.embedding_stats(), 2)
    ref = HFBackend(smollm2).generate(prompts, injection, [1, 2], sampling, decode_seed=0)
    lean = LeanHFBackend(smollm2).generate(prompts, injection, [1, 2], sampling, decode_seed=0)
    assert lean == ref
