"""Prefix-shared branching gives the same completions and RSPs as the unshared HF backend."""

from __future__ import annotations

import pytest
import torch
from conftest import chat_prompts

from rsp.core import NoInjection, RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig
from rsp.engines.lean import LeanEngine
from rsp.engines.prefix import PrefixEngine

GREEDY = SamplingConfig(temperature=0, max_new_tokens=10)


@pytest.mark.parametrize("position", ["after_generation_prompt", "end_of_user_turn", "prepend"])
def test_shared_matches_unshared_greedy_mixed_lengths(sharp_lm, position):
    prompts = chat_prompts(sharp_lm, ["hi", "what is 2+3 and then some", "x" * 17], attempts=3)
    injection = RandomSoftPrompt(sharp_lm.embedding_stats(), 4, position=position)
    seeds = [injection.seed_for(7, str(i // 3), i % 3) for i in range(len(prompts))]
    plain = HFEngine(sharp_lm).generate(prompts, injection, seeds, GREEDY, decode_seed=1)
    backend = PrefixEngine(sharp_lm)
    shared = backend.generate(prompts, injection, seeds, GREEDY, decode_seed=1)
    assert shared == plain
    assert len({c.token_ids for c in plain}) == len(plain), (
        "outputs must differ per attempt for the test to bite"
    )
    if position == "prepend":
        assert not backend.last_shared
    else:
        assert backend.last_shared and backend.last_prefill_rows == 3


def test_shared_uses_the_same_rsp_rows(sharp_lm):
    prompts = chat_prompts(sharp_lm, ["ab", "abcdefgh"], attempts=2)
    injection = RandomSoftPrompt(sharp_lm.embedding_stats(), 3)
    seeds = [11, 12, 13, 14]
    captured = []
    original = injection.apply

    def spy(embeds, batch, s):
        out = original(embeds, batch, s)
        captured.append(torch.stack([out[b, batch.slot_index[b]] for b in range(out.shape[0])]))
        return out

    injection.apply = spy  # type: ignore[method-assign]
    HFEngine(sharp_lm).generate(prompts, injection, seeds, GREEDY, decode_seed=0)
    PrefixEngine(sharp_lm).generate(prompts, injection, seeds, GREEDY, decode_seed=0)
    assert torch.equal(captured[0], captured[1])
    assert torch.equal(captured[0], injection.rows(seeds).to(captured[0].dtype))


def test_no_injection_and_stop_strings_match(sharp_lm):
    prompts = chat_prompts(sharp_lm, ["hello there", "q"], attempts=2)
    seeds = [None] * 4
    sampling = SamplingConfig(temperature=0, max_new_tokens=12)
    plain = HFEngine(sharp_lm).generate(prompts, NoInjection(), seeds, sampling, decode_seed=0)
    shared = PrefixEngine(sharp_lm).generate(prompts, NoInjection(), seeds, sampling, decode_seed=0)
    assert shared == plain
    stop = plain[0].text[3:5]
    cut = PrefixEngine(sharp_lm).generate(
        prompts, NoInjection(), seeds, sampling, decode_seed=0, stop_strings=[stop]
    )
    assert cut[0].text == plain[0].text[: plain[0].text.find(stop)]
    assert cut[0].finish_reason == "stop"


@pytest.mark.parametrize("engine", [LeanEngine, PrefixEngine])  # HFEngine: generate()'s stop strings
def test_a_stop_string_ends_the_token_ids_where_it_was_completed(sharp_lm, engine):  # need a real tokenizer
    """token_ids (hence the records' num_tokens) stop at the token that completed the stop string, not at
    max_new_tokens with the pad that fills a finished row while the rest of the batch goes on (all three
    engines finish rows in HFEngine._finish)."""
    prompts = chat_prompts(sharp_lm, ["hello there", "q"], attempts=2)
    seeds = [None] * 4
    sampling = SamplingConfig(temperature=0, max_new_tokens=12)
    free = engine(sharp_lm).generate(prompts, NoInjection(), seeds, sampling, decode_seed=0)
    stop = free[0].text[3:5]
    assert stop and stop not in free[0].text[:3], "the stop string must first appear mid-completion"
    cut = engine(sharp_lm).generate(
        prompts, NoInjection(), seeds, sampling, decode_seed=0, stop_strings=[stop]
    )
    ids = cut[0].token_ids
    decode = sharp_lm.tokenizer.decode
    assert len(ids) < len(free[0].token_ids) and ids == free[0].token_ids[: len(ids)]
    assert stop in decode(list(ids), skip_special_tokens=True)
    assert stop not in decode(list(ids[:-1]), skip_special_tokens=True)
    for c, f in zip(cut, free, strict=True):  # rows the stop string never reached are untouched
        if stop not in f.text:
            assert c == f


def test_sliding_window_model_falls_back(tiny_gemma_lm):
    prompts = chat_prompts(tiny_gemma_lm, ["hi", "longer question"], attempts=2)
    injection = RandomSoftPrompt(tiny_gemma_lm.embedding_stats(), 2)
    backend = PrefixEngine(tiny_gemma_lm)
    out = backend.generate(prompts, injection, [1, 2, 3, 4], GREEDY, decode_seed=0)
    assert not backend.last_shared
    assert out == HFEngine(tiny_gemma_lm).generate(prompts, injection, [1, 2, 3, 4], GREEDY, decode_seed=0)


def test_the_completion_names_the_stop_token_only_when_one_ended_it(sharp_lm):
    """`Completion.stop_token`: what DAPO appends to learn when to stop, and what the server scores last.
    A stop string or the length limit ends a completion without one; the ids never include it."""
    eos = sharp_lm.stop_token_ids[0]
    finish = HFEngine(sharp_lm)._finish
    plain = sharp_lm.tokenizer("abcabc", add_special_tokens=False)["input_ids"]
    greedy = SamplingConfig(temperature=0, max_new_tokens=16)
    ended = finish([*plain, eos, eos, eos], greedy, ())
    assert (ended.token_ids, ended.finish_reason, ended.stop_token) == (tuple(plain), "stop", eos)
    text = sharp_lm.tokenizer.decode(plain)
    cut = finish([*plain, eos], greedy, [text[2:4]])
    assert cut.finish_reason == "stop" and cut.stop_token is None and cut.text == text[:2]
    full = finish(plain, greedy, ())
    assert (full.finish_reason, full.stop_token) == ("length", None)


def test_vllm_outputs_name_the_stop_token_as_the_torch_engines_do():
    from types import SimpleNamespace

    from rsp.engines.vllm import completion_from_output

    def out(ids, reason, stop_reason):
        return SimpleNamespace(token_ids=ids, text="t", finish_reason=reason, stop_reason=stop_reason)

    assert completion_from_output(out([5, 6, 2], "stop", None), [2, 3]).stop_token == 2  # EOS among the ids
    assert completion_from_output(out([5, 6], "stop", 3), [2, 3]).stop_token == 3  # reported, not in ids
    assert completion_from_output(out([5, 6], "stop", "\n\n"), [2, 3]).stop_token is None  # a stop string
    assert completion_from_output(out([5, 6], "length", None), [2, 3]).stop_token is None
