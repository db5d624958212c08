"""Host memory of the vLLM path with and without the HF copy of the model (issue #12).

Before, `--engine vllm` loaded the full HF model (`load_model`) only to read its embedding table,
tokenizer and stop ids, while vLLM loaded the same weights again. `load_embedding_model` reads the
embedding table alone. This measures both, each in a fresh subprocess (peakmem.py's method): peak RSS
from just after the imports (torch, transformers and vLLM are the same in both arms and do not count)
through loading, building the engine, fitting the RSP statistics and generating a few greedy RSP
attempts. The engine runs in the measured process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so its weights
and KV cache are counted too; the KV cache is fixed by `VLLM_CPU_KVCACHE_SPACE` (GiB, default 1 here).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vllm_memory.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vllm_memory.py --model gemma3-270m --attempts 8

A packaged or GGUF model is converted, and its statistics fitted into the on-disk cache, before the
two measurements, so both arms read the cached statistics (as every run after the first does). It prints
both peaks, their difference, the bytes of what each arm holds besides vLLM (the HF model's parameters;
the embedding table if anything read it, which mixed prompts do not), and whether the greedy
completions are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import peakmem


def child(payload: dict) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process, so it is measured
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(payload["kv_cache_gib"]))
    import torch
    import transformers  # noqa: F401  (imports are setup, not measured)
    import vllm  # noqa: F401

    from rsp.core import RandomSoftPrompt
    from rsp.engines import SamplingConfig
    from rsp.engines.vllm import VLLMEngine
    from rsp.models import load_embedding_model, load_model
    from rsp.tasks import PromptBuilder, load_task

    torch.set_num_threads(payload["threads"])
    reset_ok = peakmem.reset_peak()
    base = peakmem.rss_mb()
    t0 = time.perf_counter()
    if payload["arm"] == "hf":
        lm = load_model(payload["model"], dtype=payload["dtype"])
        held = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    else:
        lm = load_embedding_model(payload["model"], dtype=payload["dtype"])
    load_peak = peakmem.peak_mb()
    backend = VLLMEngine(lm, max_model_len=1024)
    engine_peak = peakmem.peak_mb()
    task = load_task("arith", limit=payload["problems"])
    builder = PromptBuilder.for_task(lm.tokenizer, task)
    attempts = payload["attempts"]
    prompts = [builder.build(p) for p in task.problems for _ in range(attempts)]
    injection = RandomSoftPrompt(lm.embedding_stats(), payload["rsp_length"])
    seeds = [injection.seed_for(0, p.id, a) for p in task.problems for a in range(attempts)]
    out = backend.generate(
        prompts,
        injection,
        seeds,
        SamplingConfig(temperature=0, max_new_tokens=payload["new_tokens"]),
        decode_seed=0,
        stop_strings=builder.stop_strings,
    )
    tokens = [list(c.token_ids) for c in out]
    if payload["arm"] != "hf":  # the table is read only if something needed it (not mixed prompts)
        held = 0 if lm._table is None else lm._table.numel() * lm._table.element_size()
    peakmem.emit(
        {
            "peak_mb": peakmem.peak_mb(),
            "base_mb": base,
            "load_peak_mb": load_peak,
            "engine_peak_mb": engine_peak,
            "end_rss_mb": peakmem.rss_mb(),
            "held_bytes": held,
            "seconds": time.perf_counter() - t0,
            "reset_ok": reset_ok,
            "completions": hashlib.sha256(repr(tokens).encode()).hexdigest()[:16],
            "distinct": len({tuple(t) for t in tokens}),
            "attempts": len(tokens),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--problems", type=int, default=2)
    ap.add_argument("--attempts", type=int, default=4, help="RSP attempts per problem")
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kv-cache-gib", type=int, default=1)
    peakmem.add_child_arguments(ap)
    args = ap.parse_args()
    if peakmem.serve_child(args, child):
        return
    from rsp.models import embedding_stats
    from rsp.models.loading import resolve_model_dir

    resolve_model_dir(args.model)  # a packaged or GGUF model is converted once here, outside the measurement
    # ... and its RSP statistics fitted into the on-disk cache, which both arms then read.
    embedding_stats(args.model, dtype=args.dtype)
    cap = args.max_rss_mb or 0.8 * peakmem.available_mb()
    script = str(Path(__file__).resolve())
    print(
        f"model={args.model} dtype={args.dtype} {args.problems} problems x {args.attempts} RSP attempts "
        f"(L={args.rsp_length}, greedy, {args.new_tokens} new tokens) threads={args.threads} "
        f"kv_cache={args.kv_cache_gib} GiB RSS cap={cap:.0f} MiB"
    )
    print(
        "peak MiB = peak RSS from after the imports to the end (load + engine + stats + generate); "
        "+MiB = that minus the RSS after the imports"
    )
    results = {}
    for arm, label in (
        ("hf", "(a) load_model + VLLMEngine"),
        ("embedding", "(b) load_embedding_model + VLLMEngine"),
    ):
        payload = {
            "arm": arm,
            "model": args.model,
            "dtype": args.dtype,
            "problems": args.problems,
            "attempts": args.attempts,
            "rsp_length": args.rsp_length,
            "new_tokens": args.new_tokens,
            "threads": args.threads,
            "kv_cache_gib": args.kv_cache_gib,
        }
        r = results[arm] = peakmem.run_child(script, payload, max_rss_mb=cap, timeout_s=1800)
        if "error" in r:
            print(f"{label}: {r['error']}")
            continue
        print(
            f"{label:40s} peak {r['peak_mb']:7.0f} MiB (+{r['peak_mb'] - r['base_mb']:6.0f}); after load "
            f"{r['load_peak_mb']:6.0f}, after engine {r['engine_peak_mb']:6.0f}, "
            f"end RSS {r['end_rss_mb']:6.0f}; "
            f"holds {r['held_bytes'] / 2**20:6.1f} MiB besides vLLM; {r['seconds']:.1f} s; "
            f"{r['distinct']}/{r['attempts']} distinct completions",
            flush=True,
        )
    a, b = results.get("hf", {}), results.get("embedding", {})
    if "peak_mb" in a and "peak_mb" in b:
        saved = a["peak_mb"] - b["peak_mb"]
        hf_mb = a["held_bytes"] / 2**20
        # A ratio rather than met/missed: RSS moves by ~1 MiB between runs, and a saving of exactly the
        # HF copy would flip a strict comparison on noise.
        print(
            f"difference (a) - (b): {saved:.0f} MiB peak, "
            f"{a['end_rss_mb'] - b['end_rss_mb']:.0f} MiB at the end; "
            f"HF model parameters {hf_mb:.1f} MiB; peak saving / HF parameters = {saved / hf_mb:.3f} "
            f"(target: >= 1, up to ~1 MiB of RSS noise)"
        )
        print(f"greedy completions identical: {a['completions'] == b['completions']}")


if __name__ == "__main__":
    main()
