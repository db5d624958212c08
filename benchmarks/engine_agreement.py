"""Do the engines give hf's greedy completions on the real model in its default dtype? And how fast?

Why: "greedy identical" holds exactly in fp32 and on the sharpened test models, but a split prefill
(prefix sharing) or a different kernel order rounds differently in bf16, and one different token
changes the rest of a completion. The main job's engine is chosen on this measurement: the fastest
engine whose greedy completions equal hf's on the main job's own workload.

    OMP_NUM_THREADS=2 python benchmarks/engine_agreement.py --problems 4 --n 16 --dtype bfloat16

Prints, per engine: seconds (same workload, arms run one after another), completions token-identical
to hf, and the mean common-prefix length where they differ.
"""

from __future__ import annotations

import argparse
import time

import rsp
from rsp.engines.base import common_prefix
from rsp.generation import Generator, RSPConfig
from rsp.tasks import PromptBuilder, load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--engines", default="hf,lean,prefix")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    lm = rsp.load_model(args.model, dtype=args.dtype)
    task = load_task("arith", limit=args.problems, arith_steps=1, arith_max_value=10)
    builder = PromptBuilder.for_task(lm.tokenizer, task)
    prompts = [builder.build(p) for p in task.problems]
    keys = [p.id for p in task.problems]
    results: dict[str, dict[str, list[tuple[int, ...]]]] = {}
    print(
        f"model {args.model} {args.dtype}, {args.problems} problems x {args.n} attempts x 2 methods, greedy, "
        f"{args.max_new_tokens} new tokens"
    )
    for engine in args.engines.split(","):
        gen = Generator(lm, engine=engine)
        t0 = time.perf_counter()
        results[engine] = {}
        for name, cfg in (("temperature", None), ("rsp", RSPConfig(length=4))):
            outs = gen.generate(
                prompts,
                n=args.n,
                rsp=cfg,
                temperature=0,
                max_new_tokens=args.max_new_tokens,
                seed=0,
                keys=keys,
                batch_size=args.batch_size,
                stop=builder.stop_strings,
            )
            results[engine][name] = [s.token_ids for o in outs for s in o.samples]
        seconds = time.perf_counter() - t0
        ref = results.get("hf")
        line = f"{engine:7s} {seconds:7.1f} s"
        if ref is not None and engine != "hf":
            for name in ("temperature", "rsp"):
                pairs = list(zip(results[engine][name], ref[name], strict=True))
                same = sum(a == b for a, b in pairs)
                diff = [common_prefix(a, b) for a, b in pairs if a != b]
                mean = (
                    f", differing ones agree on the first {sum(diff) / len(diff):.1f} tokens" if diff else ""
                )
                line += f" | {name}: {same}/{len(pairs)} identical to hf{mean}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
