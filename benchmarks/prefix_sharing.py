"""Prefix-shared versus unshared prefill: time per problem, side by side, N attempts per problem.

Both arms get the same N rows (one problem, N attempts with their own RSPs) and decode one token,
so the time is the prompt prefill plus one sampling step. The unshared arm is `HFBackend`
(`generate()` over N full rows); the shared arm is `PrefixSharedHFBackend` (prompt prefilled once,
its cache branched N ways, then only the L slots per attempt). Arms alternate within each repeat;
medians are reported. The model is a random-init Llama with SmolLM2-135M's configuration.

    python benchmarks/prefix_sharing.py                                 # N 4 16, prompt 64 512
    python benchmarks/prefix_sharing.py --attempts 4 16 64 --prompt-lengths 64 512 2048 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lean_decode import smollm2_like, synthetic_prompts

from rsp.backends import HFBackend, SamplingConfig
from rsp.backends.prefix import PrefixSharedHFBackend
from rsp.core import RandomSoftPrompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--prompt-lengths", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = smollm2_like(False, getattr(torch, args.dtype))
    injection = RandomSoftPrompt(lm.embedding_stats(), args.rsp_length)
    sampling = SamplingConfig(temperature=0, max_new_tokens=1)
    arms = {"unshared": HFBackend(lm), "shared": PrefixSharedHFBackend(lm)}
    print(f"model=smollm2-config(random) dtype={args.dtype} L={args.rsp_length} threads={args.threads} "
          f"repeats={args.repeats}")
    print("N  | prompt | unshared s/problem | shared s/problem | speed-up | greedy identical")
    for length in args.prompt_lengths:
        for n in args.attempts:
            prompts = synthetic_prompts(1, length, seed=length) * n
            seeds = list(range(n))
            outs: dict[str, list] = {}
            times: dict[str, list[float]] = {k: [] for k in arms}
            for rep in range(args.repeats):
                for name in (list(arms) if rep % 2 == 0 else list(reversed(arms))):
                    t0 = time.perf_counter()
                    outs[name] = arms[name].generate(prompts, injection, seeds, sampling, decode_seed=0)
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            same = outs["unshared"] == outs["shared"]
            print(f"{n:3d} | {length:6d} | {med['unshared']:18.3f} | {med['shared']:16.3f} | "
                  f"{med['unshared'] / med['shared']:7.2f}x | {same}", flush=True)


if __name__ == "__main__":
    main()
