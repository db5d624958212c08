"""bf16 versus fp32 on this CPU: seconds per attempt of the lean engine on the real RSP workload.

Why: the project loads models in bf16 (`--dtype auto`), which is what a GPU and a CPU with native bf16
(AVX-512 BF16, AMX) run fastest. A CPU without it (AVX2 only: many laptops, older or AMD servers)
emulates bf16 products, and the map of docs/findings.md ran about 4x (SmolLM2) to 8x (Gemma) slower
per attempt on such a machine than on the one with AVX-512 BF16. This script measures what fp32 gains
there, on the workload `rsp eval` runs: arith chat/plain prompts, L=4 RSP, T=0.7, rows stopping at
their own end token. Arms alternate within each repeat (order flipped every repeat); medians.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/cpu_dtype.py --models smollm2-135m-instruct --batch 16
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/cpu_dtype.py --models gemma3-270m --batch 8 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from rsp.core import RandomSoftPrompt
from rsp.engines import SamplingConfig
from rsp.engines.lean import LeanEngine
from rsp.models import load_model
from rsp.models.loading import native_bf16_flags
from rsp.tasks.prompts import PromptBuilder
from rsp.tasks.registry import load_task

PLAIN = {"gemma3-270m": "plain"}  # the base model takes the few-shot plain prompt, as in the map


def cpu_facts() -> str:
    native = native_bf16_flags()
    flags = "unknown" if native is None else native or "none"
    return (
        f"cpu capability={torch.backends.cpu.get_cpu_capability()} "
        f"mkldnn bf16={torch.ops.mkldnn._is_mkldnn_bf16_supported()} native bf16 flags={flags}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{cpu_facts()}; torch threads={args.threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"nice={os.nice(0)}; shared machine, compare ratios"
    )
    print("model | batch | new tokens | bf16 s/attempt | fp32 s/attempt | bf16/fp32 | tokens/row bf16 | fp32")
    for name in args.models:
        lms = {d: load_model(name, dtype=d) for d in ("bfloat16", "float32")}
        task = load_task("arith", arith_steps=1, arith_max_value=10, limit=max(1, args.batch // 4))
        builder = PromptBuilder.for_task(lms["bfloat16"].tokenizer, task, style=PLAIN.get(name, "auto"))
        problems = [builder.build(p) for p in task.problems]
        prompts = [problems[(i // 4) % len(problems)] for i in range(args.batch)]
        sampling = SamplingConfig(temperature=0.7, max_new_tokens=args.new_tokens)
        times: dict[str, list[float]] = {d: [] for d in lms}
        tokens: dict[str, list[float]] = {d: [] for d in lms}
        for rep in range(args.repeats):
            for d in list(lms) if rep % 2 == 0 else list(reversed(lms)):
                lm = lms[d]
                injection = RandomSoftPrompt(lm.embedding_stats(), 4)
                seeds = [injection.seed_for(rep, f"p{i // 4}", i % 4) for i in range(args.batch)]
                t0 = time.perf_counter()
                out = LeanEngine(lm).generate(
                    prompts, injection, seeds, sampling, decode_seed=rep, stop_strings=builder.stop_strings
                )
                times[d].append((time.perf_counter() - t0) / args.batch)
                tokens[d].append(statistics.mean(len(c.token_ids) for c in out))
        bf, fp = statistics.median(times["bfloat16"]), statistics.median(times["float32"])
        print(
            f"{name} | {args.batch} | {args.new_tokens} | {bf:.3f} | {fp:.3f} | {bf / fp:.2f} | "
            f"{statistics.mean(tokens['bfloat16']):.1f} | {statistics.mean(tokens['float32']):.1f}"
        )


if __name__ == "__main__":
    main()
