"""Lean decode (row compaction) versus `generate()` on a realistic RSP workload: rows stop at
different lengths.

The packaged SmolLM2-135M-Instruct (bf16) answers the built-in arith task (one step, values <= 10)
with chat prompts, L=4 random soft prompts, one RSP per attempt. Workloads:

  sample-stops   T=0.7, rows end at their own end-of-turn token (what `rsp eval` does)
  greedy-stops   T=0, rows end at their own end-of-turn token; lean must be token-identical
  greedy-fixed   T=0, end-of-turn ignored, every row decodes exactly --new-tokens (no compaction possible)

`generate()` keeps computing finished rows until the whole batch is done; the lean loop drops them.
Arms alternate within each repeat (order flipped every repeat) and the median is reported. Tokens/s
counts generated tokens (each row's tokens up to and including its stop token, no padding) over
wall time including the prefill. Sampled tokens differ between the arms (compaction changes which
random numbers each row consumes), so each arm's rate uses its own token count.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python benchmarks/lean_workload.py   # all: ~25 min here

The measured split (about 14 min wall on the shared 2-core machine):

    python benchmarks/lean_workload.py --batches 32 8 --workloads sample-stops
    python benchmarks/lean_workload.py --batches 32 --workloads greedy-fixed
    python benchmarks/lean_workload.py --batches 8 --repeats 1 --workloads greedy-stops
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from rsp.core import RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig
from rsp.engines.base import Completion
from rsp.engines.lean import LeanEngine
from rsp.models import load_model
from rsp.tasks.prompts import PromptBuilder
from rsp.tasks.registry import load_task


def generated_tokens(completions: list[Completion]) -> int:
    """Tokens each row actually generated: its kept tokens plus the stop token that ended it."""
    return sum(len(c.token_ids) + (c.finish_reason == "stop") for c in completions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument(
        "--workloads",
        nargs="+",
        default=["sample-stops", "greedy-stops", "greedy-fixed"],
        choices=["sample-stops", "greedy-stops", "greedy-fixed"],
    )
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--attempts", type=int, default=4, help="attempts (RSP draws) per problem in a batch")
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model("smollm2-135m-instruct", dtype="bfloat16")
    fixed_lm = dataclasses.replace(lm, stop_token_ids=(lm.model.config.vocab_size + 10,))  # never sampled
    task = load_task("arith", arith_steps=1, arith_max_value=10, limit=max(args.batches) // args.attempts)
    builder = PromptBuilder.for_task(lm.tokenizer, task)
    problems = [builder.build(p) for p in task.problems]
    injection = RandomSoftPrompt(lm.embedding_stats(), args.rsp_length)
    print(
        f"SHARED MACHINE: 2 CPU cores, other experiments running; torch threads={args.threads}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, nice={os.nice(0)}. "
        "Expect drift; compare ratios."
    )
    print(
        "model=smollm2-135m-instruct(packaged) dtype=bf16 task=arith(steps=1,max=10) "
        f"style={builder.resolved_style} L={args.rsp_length} new_tokens={args.new_tokens} "
        f"T(sample-stops)={args.temperature} attempts/problem={args.attempts} "
        f"prompt tokens={min(len(p.ids) for p in problems)}-{max(len(p.ids) for p in problems)} "
        f"repeats={args.repeats}"
    )
    print(
        "lean-eager = compaction alone (no packed weights, concatenating cache); lean = the default "
        "(compaction + prepacked bf16 weights + preallocated cache)"
    )
    print(
        "batch | workload     | generate tok/s | lean-eager tok/s | lean tok/s | lean-eager/generate "
        "| lean/generate | gen tok/row | lean tok/row | gen s | lean s | rows stopped | lean rows/pass "
        "| greedy identical"
    )
    for batch in args.batches:
        prompts = [problems[(i // args.attempts) % len(problems)] for i in range(batch)]
        seeds = [
            injection.seed_for(0, task.problems[(i // args.attempts) % len(problems)].id, i % args.attempts)
            for i in range(batch)
        ]
        for workload in args.workloads:
            model = fixed_lm if workload == "greedy-fixed" else lm
            temp = args.temperature if workload == "sample-stops" else 0.0
            sampling = SamplingConfig(temperature=temp, max_new_tokens=args.new_tokens)
            arms = {
                "generate": HFEngine(model),
                "lean-eager": LeanEngine(model, pack_weights=False, preallocate_cache=False),
                "lean": LeanEngine(model),
            }
            times: dict[str, list[float]] = {k: [] for k in arms}
            tokens: dict[str, list[int]] = {k: [] for k in arms}
            first: dict[str, list[Completion]] = {}
            live: list[float] = []  # lean: mean rows per decode forward pass
            stopped: list[float] = []  # share of rows that ended before the length limit
            for rep in range(args.repeats):
                for name in list(arms) if rep % 2 == 0 else list(reversed(arms)):
                    t0 = time.perf_counter()
                    out = arms[name].generate(prompts, injection, seeds, sampling, decode_seed=rep)
                    times[name].append(time.perf_counter() - t0)
                    tokens[name].append(generated_tokens(out))
                    first.setdefault(name, out)
                    if name == "lean":
                        sizes = arms["lean"].last_batch_sizes
                        live.append(statistics.mean(sizes) if sizes else 0.0)
                    stopped.append(statistics.mean(c.finish_reason == "stop" for c in out))
            rate = {
                k: statistics.median(n / t for n, t in zip(tokens[k], times[k], strict=True)) for k in arms
            }
            per_row = {k: statistics.mean(tokens[k]) / batch for k in arms}
            secs = {k: statistics.median(times[k]) for k in arms}
            same = (
                str(first["generate"] == first["lean"] == first["lean-eager"])
                if temp == 0
                else "n/a (sampled)"
            )
            print(
                f"{batch:5d} | {workload:12s} | {rate['generate']:14.1f} | {rate['lean-eager']:16.1f} | "
                f"{rate['lean']:10.1f} | {rate['lean-eager'] / rate['generate']:19.2f} | "
                f"{rate['lean'] / rate['generate']:13.2f} | {per_row['generate']:11.1f} | "
                f"{per_row['lean']:12.1f} | {secs['generate']:5.1f} | {secs['lean']:6.1f} | "
                f"{statistics.mean(stopped):12.0%} | {statistics.mean(live):14.1f} | {same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
