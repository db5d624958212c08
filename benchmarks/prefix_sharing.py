"""Prefix-shared versus unshared prefill: time and peak memory per problem, N attempts per problem.

Both arms get the same N rows (one problem, N attempts with their own RSPs) and decode one token,
so the time is the prompt prefill plus one sampling step. The unshared arm is `HFEngine`
(`generate()` over N full rows); the shared arm is `PrefixEngine` (prompt prefilled once,
its cache branched N ways, then only the L slots per attempt).

Every measurement runs in a fresh subprocess (see peakmem.py): it builds the model, warms up on a
tiny batch, resets its peak RSS, then times one call and reports the call's peak RSS. Arms
alternate within each repeat (unshared first on even repeats); medians are reported. The model is
a random-init Llama with SmolLM2-135M's configuration (--layers makes it shallower).

    python benchmarks/prefix_sharing.py                          # N 4 16, prompt 64 512, 3 repeats
    python benchmarks/prefix_sharing.py --grid full              # N 4 16 64 x prompt 64 512 2048
    python benchmarks/prefix_sharing.py --grid full --repeats 3 --heavy-repeats 1 --heavy-tokens 16384
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import peakmem

GRIDS = {"default": ([4, 16], [64, 512]), "full": ([4, 16, 64], [64, 512, 2048])}


def child(payload: dict) -> None:
    """One arm, one cell, in this fresh process: time and peak RSS of a single call."""
    import torch
    from lean_decode import smollm2_like, synthetic_prompts

    from rsp.core import RandomSoftPrompt
    from rsp.engines import HFEngine, SamplingConfig
    from rsp.engines.prefix import PrefixEngine

    torch.set_num_threads(payload["threads"])
    lm = smollm2_like(
        False, getattr(torch, payload["dtype"]), layers=payload["layers"], device=payload["device"]
    )
    injection = RandomSoftPrompt(lm.embedding_stats(), payload["rsp_length"])
    sampling = SamplingConfig(temperature=0, max_new_tokens=1)
    backend = (PrefixEngine if payload["arm"] == "shared" else HFEngine)(lm)
    n, length = payload["n"], payload["length"]
    backend.generate(
        synthetic_prompts(1, 8, seed=1) * 2, injection, [0, 1], sampling, decode_seed=0
    )  # warm-up
    prompts = synthetic_prompts(1, length, seed=length) * n
    gc.collect()
    reset_ok = peakmem.reset_peak()
    base = peakmem.rss_mb()
    t0 = time.perf_counter()
    out = backend.generate(prompts, injection, list(range(n)), sampling, decode_seed=0)
    seconds = time.perf_counter() - t0
    peakmem.emit(
        {
            "seconds": seconds,
            "peak_mb": peakmem.peak_mb(),
            "base_mb": base,
            "reset_ok": reset_ok,
            "cuda_peak_mb": peakmem.cuda_peak_mb(),
            "tokens": [list(c.token_ids) for c in out],
        }
    )


def fmt(values: list[float], spec: str) -> str:
    return format(statistics.median(values), spec) if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default="default",
        help="default: N 4 16 x prompt 64 512; full: N 4 16 64 x prompt 64 512 2048",
    )
    ap.add_argument("--attempts", type=int, nargs="+", help="overrides the grid's N values")
    ap.add_argument("--prompt-lengths", type=int, nargs="+", help="overrides the grid's prompt lengths")
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--heavy-repeats",
        type=int,
        default=None,
        help="repeats for cells with N x prompt >= --heavy-tokens (default: --repeats)",
    )
    ap.add_argument("--heavy-tokens", type=int, default=16384)
    ap.add_argument(
        "--skip-unshared-above",
        type=int,
        default=None,
        help="do not run the unshared arm when N x prompt exceeds this many tokens",
    )
    ap.add_argument("--layers", type=int, default=30, help="depth of the random SmolLM2-shaped model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--device", default="cpu")
    peakmem.add_child_arguments(ap)
    args = ap.parse_args()
    if peakmem.serve_child(args, child):
        return
    attempts, lengths = GRIDS[args.grid]
    attempts, lengths = args.attempts or attempts, args.prompt_lengths or lengths
    cap = args.max_rss_mb or 0.8 * peakmem.available_mb()
    script = str(Path(__file__).resolve())
    print(
        f"model=smollm2-config(random, {args.layers} layers) dtype={args.dtype} device={args.device} "
        f"L={args.rsp_length} threads={args.threads} repeats={args.repeats} "
        f"heavy-repeats={args.heavy_repeats} (N x prompt >= {args.heavy_tokens}) RSS cap={cap:.0f} MiB"
    )
    print(
        "peak MiB = peak RSS of the measuring process during the call (model and imports included); "
        "+MiB = peak minus RSS just before the call"
    )
    print(
        "N  | prompt | reps | unshared s | shared s | speed-up | unshared peak MiB (+) | shared peak MiB (+) "
        "| greedy identical"
    )
    for length in lengths:
        for n in attempts:
            heavy = n * length >= args.heavy_tokens
            reps = args.heavy_repeats if heavy and args.heavy_repeats is not None else args.repeats
            arms = ["unshared", "shared"]
            if args.skip_unshared_above is not None and n * length > args.skip_unshared_above:
                arms = ["shared"]
            res: dict[str, list[dict]] = {a: [] for a in arms}
            errors: list[str] = []
            for rep in range(reps):
                for arm in arms if rep % 2 == 0 else arms[::-1]:
                    payload = {
                        "arm": arm,
                        "n": n,
                        "length": length,
                        "rsp_length": args.rsp_length,
                        "threads": args.threads,
                        "dtype": args.dtype,
                        "layers": args.layers,
                        "device": args.device,
                    }
                    r = peakmem.run_child(script, payload, max_rss_mb=cap)
                    if "error" in r:
                        errors.append(f"{arm}: {r['error']}")
                    else:
                        res[arm].append(r)
            secs = {a: [r["seconds"] for r in rs] for a, rs in res.items()}
            key = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_mb"
            peak = {a: [r[key] for r in rs] for a, rs in res.items()}
            extra = {
                a: [r[key] - (0 if key == "cuda_peak_mb" else r["base_mb"]) for r in rs]
                for a, rs in res.items()
            }
            un, sh = secs.get("unshared", []), secs.get("shared", [])
            speed = f"{statistics.median(un) / statistics.median(sh):7.2f}x" if un and sh else "      -"
            same = (res["unshared"][0]["tokens"] == res["shared"][0]["tokens"]) if un and sh else "-"
            cols = []
            for a in ("unshared", "shared"):
                cols.append(f"{fmt(peak.get(a, []), '.0f')} (+{fmt(extra.get(a, []), '.0f')})")
            print(
                f"{n:3d} | {length:6d} | {reps:4d} | {fmt(un, '10.3f')} | {fmt(sh, '8.3f')} | {speed} | "
                f"{cols[0]:>21s} | {cols[1]:>19s} | {same}",
                flush=True,
            )
            for e in errors:
                print(f"    N={n} prompt={length}: {e}", flush=True)


if __name__ == "__main__":
    main()
