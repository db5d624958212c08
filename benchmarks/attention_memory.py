"""Peak memory of the analysis attention pass versus `generate(output_attentions=True)`.

The analysis (`rsp.analysis.scoring.attention_mass`) runs ONE teacher-forced eager pass per batch
of attempts over prompt + slots + completion and reduces each layer's attention map inside a
forward hook to (B, k) numbers, so at most one layer's map is alive at a time. The naive
alternative keeps every layer's attention for every generated step of `generate()`: its size grows
as layers x k x (prompt + k). This script prints, per completion length k, the peak RSS of both
(each in a fresh subprocess, see peakmem.py) and the computed sizes of (a) what
`generate(output_attentions=True)` returns and (b) the full (layers, B, H, S, S) map a single
`model(..., output_attentions=True)` pass would return.

The model is a random-init Llama with SmolLM2-135M's shape (30 layers, 9 heads, d=576) in bf16;
prompts and completions are random tokens (memory does not depend on their values).

    python benchmarks/attention_memory.py                                # k 128 512 1024, batch 4
    python benchmarks/attention_memory.py --lengths 128 512 --no-generate   # teacher-forced only
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import peakmem


def child(payload: dict) -> None:
    import torch
    from lean_decode import smollm2_like, synthetic_prompts

    from rsp.analysis.scoring import attention_mass
    from rsp.core import RandomSoftPrompt
    from rsp.engines import HFEngine, SamplingConfig

    torch.set_num_threads(payload["threads"])
    lm = smollm2_like(
        False, getattr(torch, payload["dtype"]), layers=payload["layers"], device=payload["device"]
    )
    injection = RandomSoftPrompt(lm.embedding_stats(), payload["rsp_length"])
    batch, k = payload["batch"], payload["k"]
    prompts = synthetic_prompts(batch, payload["prompt_length"], seed=0)
    seeds = list(range(batch))
    g = torch.Generator().manual_seed(1)
    continuations = [torch.randint(100, 49000, (k,), generator=g).tolist() for _ in range(batch)]
    result: dict = {}
    if payload["method"] == "teacher":
        attention_mass(
            lm, prompts[:1], injection, seeds[:1], [c[:4] for c in continuations[:1]], 4
        )  # warm-up
        reset_ok = peakmem.reset_peak()
        base = peakmem.rss_mb()
        t0 = time.perf_counter()
        mass = attention_mass(lm, prompts, injection, seeds, continuations, k)
        result["seconds"] = time.perf_counter() - t0
        result["shape"] = list(mass.shape)
    else:
        lm.model.set_attn_implementation("eager")  # the only implementation that returns weights
        backend = HFEngine(lm)

        def run(rows: int, new: int):
            b, embeds = backend.prepare(prompts[:rows], injection, seeds[:rows])
            kwargs = backend.generation_kwargs(SamplingConfig(temperature=0, max_new_tokens=new))
            cfg = kwargs["generation_config"]
            cfg.output_attentions, cfg.return_dict_in_generate, cfg.min_new_tokens = True, True, new
            with torch.no_grad():
                return lm.model.generate(
                    inputs_embeds=embeds, attention_mask=b.attention_mask.to(lm.device), **kwargs
                )

        run(1, 2)  # warm-up
        reset_ok = peakmem.reset_peak()
        base = peakmem.rss_mb()
        t0 = time.perf_counter()
        out = run(batch, k)
        result["seconds"] = time.perf_counter() - t0
        result["kept_mb"] = sum(a.numel() * a.element_size() for step in out.attentions for a in step) / 2**20
        result["steps"] = len(out.attentions)
        del out
    result.update(
        peak_mb=peakmem.peak_mb(), base_mb=base, reset_ok=reset_ok, cuda_peak_mb=peakmem.cuda_peak_mb()
    )
    peakmem.emit(result)


def computed_sizes(
    layers: int, batch: int, heads: int, prompt: int, k: int, itemsize: int
) -> tuple[float, float]:
    """MiB of generate's per-step attentions for k new tokens, and of one full (L, B, H, S, S) map."""
    prefill = prompt * prompt
    steps = sum(prompt + t for t in range(1, k))  # step t: one query row over prompt + t keys
    per_layer = batch * heads * (prefill + steps) * itemsize
    seq = prompt + k - 1  # the teacher-forced pass feeds k - 1 completion tokens
    full = layers * batch * heads * seq * seq * itemsize
    return layers * per_layer / 2**20, full / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024], help="completion lengths k")
    ap.add_argument("--batch", type=int, default=4, help="attempts per teacher-forced pass")
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--no-generate", action="store_true", help="skip measuring generate(output_attentions=True)"
    )
    peakmem.add_child_arguments(ap)
    args = ap.parse_args()
    if peakmem.serve_child(args, child):
        return
    cap = args.max_rss_mb or 0.8 * peakmem.available_mb()
    script = str(Path(__file__).resolve())
    itemsize = 2 if args.dtype == "bfloat16" else 4
    prompt = args.prompt_length + args.rsp_length
    print(
        f"model=smollm2-config(random, {args.layers} layers, 9 heads) dtype={args.dtype} "
        f"device={args.device} "
        f"batch={args.batch} prompt={args.prompt_length}+{args.rsp_length} slots threads={args.threads} "
        f"RSS cap={cap:.0f} MiB"
    )
    print(
        "peak MiB = peak RSS of a fresh process during the call (model and imports included); "
        "+MiB = peak minus RSS just before it (CUDA: max_memory_allocated)"
    )
    print(
        "k    | teacher-forced peak MiB (+) | s     | generate(output_attentions) peak MiB (+) | s     "
        "| generate kept MiB (measured / computed) | full map MiB (computed) | +MiB ratio gen/teacher"
    )
    methods = ["teacher"] if args.no_generate else ["teacher", "generate"]
    key = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_mb"
    for k in args.lengths:
        res = {}
        for method in methods:
            payload = {
                "method": method,
                "k": k,
                "batch": args.batch,
                "prompt_length": args.prompt_length,
                "rsp_length": args.rsp_length,
                "layers": args.layers,
                "threads": args.threads,
                "dtype": args.dtype,
                "device": args.device,
            }
            res[method] = peakmem.run_child(script, payload, max_rss_mb=cap)
        kept, full = computed_sizes(args.layers, args.batch, 9, prompt, k, itemsize)
        cells, extra = [], {}
        for method in ("teacher", "generate"):
            r = res.get(method)
            if r is None:
                cells += ["not run", "-"]
            elif "error" in r:
                cells += [r["error"], "-"]
            else:
                extra[method] = r[key] - (0 if key == "cuda_peak_mb" else r["base_mb"])
                cells += [f"{r[key]:.0f} (+{extra[method]:.0f})", f"{r['seconds']:.1f}"]
        measured = f"{res['generate']['kept_mb']:.1f}" if "kept_mb" in res.get("generate", {}) else "-"
        ratio = (
            f"{extra['generate'] / extra['teacher']:.1f}x"
            if len(extra) == 2 and extra["teacher"] > 0
            else "-"
        )
        print(
            f"{k:4d} | {cells[0]:>27s} | {cells[1]:>5s} | {cells[2]:>40s} | {cells[3]:>5s} | "
            f"{measured:>10s} / {kept:<10.1f}                | {full:23.1f} | {ratio}",
            flush=True,
        )


if __name__ == "__main__":
    main()
