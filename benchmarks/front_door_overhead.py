"""What the front door costs: the attach hook inside `generate`, and `rsp.generate` over a bare engine call.

Targets (issue #12): attach-hook `generate` >= 0.97x the throughput of plain `generate` on the same
batch; `rsp.generate` within 2 % of calling the engine directly with the same batches and seeds.

- hook: the same left-padded ids (L placeholder slots included, so both arms do the same arithmetic)
  through `model.generate`, once with the handle attached (embedding hook fills the slots, head hook
  bans the placeholder) and once without; fixed-length greedy decoding (`min_new_tokens`), so both arms
  run the same number of steps.
- front door: `rsp.generate(generator, prompts, n)` against a loop calling `generator.engine.generate`
  with the batches, seeds and decode seeds `rsp.generate` plans itself.
Arms alternate, repeats are reported as medians.

    OMP_NUM_THREADS=2 python benchmarks/front_door_overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rsp
from rsp.engines import SamplingConfig
from rsp.generation import Generator, RSPConfig, decode_seed_for, plan_batches


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="hook,front", help="which comparisons to run: hook, front")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    lm = rsp.load_model(args.model)
    prompts = [f"What is {i} + {i + 3}? Put the final answer in \\boxed{{}}." for i in range(args.batch // 4)]

    if "hook" in parts:
        hook_overhead(lm, prompts, args)
    if "front" in parts:
        front_door_overhead(lm, prompts, args)


def hook_overhead(lm, prompts: list[str], args) -> None:
    handle = rsp.attach(lm.model, lm.tokenizer, length=4, seed=0)
    enc = handle.prepare(prompts, n=4)
    handle.detach()
    kwargs = dict(
        do_sample=False,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=lm.pad_token_id,
    )

    def plain() -> None:
        with torch.no_grad():
            lm.model.generate(**enc, **kwargs)

    def hooked() -> None:
        with rsp.attach(lm.model, lm.tokenizer, length=4, seed=0), torch.no_grad():
            lm.model.generate(**enc, **kwargs)

    plain()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "attached": []}
    for _ in range(args.repeats):
        times["plain"].append(timed(plain))
        times["attached"].append(timed(hooked))
    p, h = statistics.median(times["plain"]), statistics.median(times["attached"])
    print(
        f"hook: batch {enc['input_ids'].shape[0]} x {args.new_tokens} tokens: plain generate {p:.2f} s, "
        f"attached {h:.2f} s, throughput ratio {p / h:.3f} (target >= 0.97)",
        flush=True,
    )


def front_door_overhead(lm, prompts: list[str], args) -> None:
    gen = Generator(lm, engine="hf")
    cfg = RSPConfig(length=4)
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=args.new_tokens)
    injection = gen.injection(cfg)
    tokens = [gen.tokenize(x) for x in prompts]
    keys = [str(i) for i in range(len(prompts))]

    def front() -> None:
        gen.generate(prompts, n=4, rsp=cfg, temperature=0.7, max_new_tokens=args.new_tokens, seed=0)

    def direct() -> None:
        for b in plan_batches(len(prompts), 4, [injection.name], 32):
            seeds = [injection.seed_for(0, keys[i], a) for i, a in b.rows]
            gen.engine.generate(
                [tokens[i] for i, _ in b.rows], injection, seeds, sampling, decode_seed=decode_seed_for(0, b)
            )

    direct()
    times = {"direct": [], "rsp.generate": []}
    for _ in range(args.repeats):
        times["direct"].append(timed(direct))
        times["rsp.generate"].append(timed(front))
    d, f = statistics.median(times["direct"]), statistics.median(times["rsp.generate"])
    print(
        f"front door: {len(prompts)} prompts x 4 attempts, T=0.7, {args.new_tokens} tokens: engine directly "
        f"{d:.2f} s, rsp.generate {f:.2f} s, overhead {100 * (f / d - 1):+.1f} % (target <= 2 %)",
        flush=True,
    )


if __name__ == "__main__":
    main()
