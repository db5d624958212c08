"""The lean decode loop: token-for-token greedy agreement with `generate`, same sampling distribution."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch
from conftest import chat_prompt, chat_prompts

from rsp.core import NoInjection, RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig
from rsp.engines.lean import LeanEngine


def test_lean_greedy_matches_generate(sharp_lm):
    prompts = [
        chat_prompt(sharp_lm, q) for q in ["hi", "a longer question here", "mid size"] for _ in range(2)
    ]
    injection = RandomSoftPrompt(sharp_lm.embedding_stats(), 4)
    seeds = list(range(len(prompts)))
    sampling = SamplingConfig(temperature=0, max_new_tokens=12)
    ref = HFEngine(sharp_lm).generate(prompts, injection, seeds, sampling, decode_seed=0)
    lean = LeanEngine(sharp_lm).generate(prompts, injection, seeds, sampling, decode_seed=0)
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


@pytest.mark.slow
def test_lean_sampling_matches_softmax(tiny_lm):
    n = 3000
    sampling = SamplingConfig(temperature=1.5, top_k=12, max_new_tokens=1)
    prompt = chat_prompt(tiny_lm, "sample me")
    backend = LeanEngine(tiny_lm)
    out = backend.generate([prompt] * n, NoInjection(), [None] * n, sampling, decode_seed=3)
    counts = Counter(c.token_ids[0] if c.token_ids else tiny_lm.stop_token_ids[0] for c in out)
    batch, embeds = backend.prepare([prompt], NoInjection(), [None])
    with torch.no_grad():
        logits = (
            tiny_lm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits[0, -1].float()
        )
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
    ref = HFEngine(smollm2).generate(prompts, injection, [1, 2], sampling, decode_seed=0)
    lean = LeanEngine(smollm2).generate(prompts, injection, [1, 2], sampling, decode_seed=0)
    assert lean == ref


def free_run_and_stops(lm, prompts, injection, seeds, steps):
    """Greedy outputs with no stop token, and a stop set that ends some rows early and others never."""
    free = dataclasses.replace(lm, stop_token_ids=(lm.model.config.vocab_size + 7,))  # never produced
    sampling = SamplingConfig(temperature=0, max_new_tokens=steps)
    rows = [c.token_ids for c in HFEngine(free).generate(prompts, injection, seeds, sampling, decode_seed=0)]
    stops: set[int] = set()
    for row, at in ((rows[0], 1), (rows[2], 4)):
        stops.add(row[at])
    first_stop = [next((i for i, t in enumerate(row) if t in stops), None) for row in rows]
    return stops, first_stop


@pytest.mark.parametrize("fixture", ["sharp_lm", "tiny_gemma_lm"])
def test_lean_compaction_greedy_matches_generate(fixture, request):
    """Rows stopping at different steps: same tokens as generate(), later passes on fewer rows."""
    lm = request.getfixturevalue(fixture)
    prompts = chat_prompts(lm, ["hi", "a longer question here", "mid size", "what"], 2)
    injection = RandomSoftPrompt(lm.embedding_stats(), 4)
    seeds = list(range(len(prompts)))
    steps = 20
    stops, first_stop = free_run_and_stops(lm, prompts, injection, seeds, steps)
    ended = [s for s in first_stop if s is not None]
    assert len(set(ended)) >= 2 and None in first_stop, f"need varied stop steps, got {first_stop}"

    lm = dataclasses.replace(lm, stop_token_ids=tuple(sorted(stops)))
    sampling = SamplingConfig(temperature=0, max_new_tokens=steps)
    ref = HFEngine(lm).generate(prompts, injection, seeds, sampling, decode_seed=0)
    sizes: list[int] = []
    hook = lm.model.register_forward_pre_hook(
        lambda _m, args, kwargs: sizes.append(
            (
                kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
            ).shape[0]
        ),
        with_kwargs=True,
    )
    try:
        lean = LeanEngine(lm).generate(prompts, injection, seeds, sampling, decode_seed=0)
    finally:
        hook.remove()
    assert lean == ref
    assert [c.finish_reason == "stop" for c in ref] == [s is not None for s in first_stop]
    # one prefill on all rows, then each decode pass (step k computes token k+1) on the rows still live
    expected = [len(prompts)] + [sum(s is None or s > k for s in first_stop) for k in range(steps - 1)]
    assert sizes == expected
    assert min(sizes) < len(prompts)
    uncompacted = LeanEngine(lm, compact=False)
    assert uncompacted.generate(prompts, injection, seeds, sampling, decode_seed=0) == ref
    assert set(uncompacted.last_batch_sizes) == {len(prompts)}


@pytest.mark.slow
def test_lean_compacted_sampling_matches_conditional(tiny_lm):
    """After rows stop at step 0, the survivors' second tokens still follow their own conditionals.

    Compaction draws from fewer rows, so tokens differ from generate() for the same seed; what must
    hold is the distribution, and that each live row's cache stays its own (a row mix-up would draw
    from another prefix's conditional, which the negative control shows the test rejects).
    """
    n, temp, k = 4000, 1.5, 12
    prompt = chat_prompt(tiny_lm, "sample me")
    backend = LeanEngine(tiny_lm)
    batch, embeds = backend.prepare([prompt], NoInjection(), [None])
    with torch.no_grad():
        first = tiny_lm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits[0, -1].float()
    order = first.topk(k).indices.tolist()
    t1, other, stop = order[0], order[1], order[2]
    lm = dataclasses.replace(tiny_lm, stop_token_ids=(stop,))
    backend = LeanEngine(lm)
    sampling = SamplingConfig(temperature=temp, top_k=k, max_new_tokens=2)
    out = backend.generate([prompt] * n, NoInjection(), [None] * n, sampling, decode_seed=5)
    stopped = sum(1 for c in out if c.finish_reason == "stop" and not c.token_ids)
    assert stopped > 100 and backend.last_batch_sizes == [n - stopped]
    counts = Counter(
        c.token_ids[1] if len(c.token_ids) > 1 else stop for c in out if c.token_ids and c.token_ids[0] == t1
    )
    m = sum(counts.values())

    def conditional(prev: int) -> torch.Tensor:
        ids = torch.tensor([list(prompt.ids) + [prev]])
        with torch.no_grad():
            logits = tiny_lm.model(input_ids=ids).logits[0, -1].float()
        kth = logits.topk(k).values[-1]
        return torch.softmax(logits.masked_fill(logits < kth, -math.inf) / temp, -1)

    stat, df = chi2_stat(counts, conditional(t1), m)
    assert df >= 4
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df} m={m}"
    wrong, wrong_df = chi2_stat(counts, conditional(other), m)
    assert wrong > chi2_critical(wrong_df), "the test must tell one row's conditional from another's"
