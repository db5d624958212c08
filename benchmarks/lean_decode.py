"""Lean decode loop versus `generate()`: tokens/s side by side at several batch sizes.

Same model, dtype, prompts, injection and greedy decoding in both arms; end-of-sequence is ignored
so every run decodes exactly --new-tokens per row. Arms alternate within each repeat and the
median is reported (this machine's timings drift). The model is a random-init Llama with
SmolLM2-135M's configuration unless --packaged is given.

Peak memory comes from a separate fresh subprocess per arm and batch (see peakmem.py: peak RSS of
one call after a warm-up, or the CUDA peak on a GPU), because a process's peak RSS never goes
down and the timing loop runs both arms in one process. --no-memory skips it.

    python benchmarks/lean_decode.py                          # batches 1, 8, 32; 3 repeats
    python benchmarks/lean_decode.py --batches 1 8 32 64 --repeats 5 --new-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from rsp.core import PromptTokens, RandomSoftPrompt
from rsp.engines import HFEngine, SamplingConfig
from rsp.engines.lean import LeanEngine
from rsp.models import load_model


def smollm2_like(packaged: bool, dtype: torch.dtype, *, layers: int = 30, device: str = "cpu"):
    """SmolLM2's tokenizer, with either its weights or a random model of the same shape.

    `layers` < 30 gives a shallower random model of the same width, for cells that would not fit
    this machine's time or memory at full depth (time and KV cache scale with depth).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = load_model("smollm2-135m-instruct", dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    if not packaged:
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=layers,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        )
        lm = dataclasses.replace(lm, model=LlamaForCausalLM(cfg).to(dtype).eval())
    lm = dataclasses.replace(lm, model=lm.model.to(device))
    return dataclasses.replace(lm, stop_token_ids=(49152 + 10,))  # never sampled: fixed length


def synthetic_prompts(n: int, length: int, seed: int = 0) -> list[PromptTokens]:
    g = torch.Generator().manual_seed(seed)
    return [
        PromptTokens(tuple(torch.randint(100, 49000, (length,), generator=g).tolist()), length)
        for _ in range(n)
    ]


def child(payload: dict) -> None:
    """One arm, one batch, in this fresh process: peak RSS of a single generate call."""
    import peakmem

    torch.set_num_threads(payload["threads"])
    lm = smollm2_like(payload["packaged"], getattr(torch, payload["dtype"]), device=payload["device"])
    injection = RandomSoftPrompt(lm.embedding_stats(), payload["rsp_length"])
    backend = (LeanEngine if payload["arm"] == "lean" else HFEngine)(lm)
    warm = SamplingConfig(temperature=0, max_new_tokens=2)
    backend.generate(synthetic_prompts(2, 8, seed=1), injection, [0, 1], warm, decode_seed=0)
    batch = payload["batch"]
    prompts = synthetic_prompts(batch, payload["prompt_length"], seed=batch)
    sampling = SamplingConfig(temperature=0, max_new_tokens=payload["new_tokens"])
    reset_ok = peakmem.reset_peak()
    base = peakmem.rss_mb()
    backend.generate(prompts, injection, list(range(batch)), sampling, decode_seed=0)
    peakmem.emit(
        {
            "peak_mb": peakmem.peak_mb(),
            "base_mb": base,
            "reset_ok": reset_ok,
            "cuda_peak_mb": peakmem.cuda_peak_mb(),
        }
    )


def peak_column(args, batch: int) -> dict[str, str]:
    import peakmem

    out = {}
    for arm in ("generate", "lean"):
        payload = {
            "arm": arm,
            "batch": batch,
            "prompt_length": args.prompt_length,
            "new_tokens": args.new_tokens,
            "rsp_length": args.rsp_length,
            "threads": args.threads,
            "dtype": args.dtype,
            "packaged": args.packaged,
            "device": args.device,
        }
        r = peakmem.run_child(
            str(Path(__file__).resolve()), payload, max_rss_mb=args.max_rss_mb or 0.8 * peakmem.available_mb()
        )
        if "error" in r:
            out[arm] = r["error"]
        elif args.device.startswith("cuda"):
            out[arm] = f"{r['cuda_peak_mb']:.0f}"
        else:
            out[arm] = f"{r['peak_mb']:.0f} (+{r['peak_mb'] - r['base_mb']:.0f})"
    return out


def main() -> None:
    import peakmem

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument(
        "--packaged", action="store_true", help="use SmolLM2's real weights instead of random init"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    peakmem.add_child_arguments(ap)
    args = ap.parse_args()
    if peakmem.serve_child(args, child):
        return
    torch.set_num_threads(args.threads)
    lm = smollm2_like(args.packaged, getattr(torch, args.dtype), device=args.device)
    injection = RandomSoftPrompt(lm.embedding_stats(), args.rsp_length)
    sampling = SamplingConfig(temperature=0, max_new_tokens=args.new_tokens)
    arms = {
        "generate": HFEngine(lm),
        "lean-eager": LeanEngine(lm, pack_weights=False, preallocate_cache=False),
        "lean": LeanEngine(lm),
    }
    print(
        f"model=smollm2-config({'packaged' if args.packaged else 'random'}) dtype={args.dtype} "
        f"prompt={args.prompt_length} new_tokens={args.new_tokens} L={args.rsp_length} "
        f"threads={args.threads} repeats={args.repeats}"
    )
    print(
        "peak MiB = peak RSS of a fresh process during one call (model and imports included); "
        "+MiB = peak minus RSS just before the call (CUDA: max_memory_allocated)"
    )
    print(
        "lean-eager = the decode loop alone (no packed weights, concatenating cache); lean = the default "
        "(prepacked bf16 weights + preallocated cache)"
    )
    print(
        "batch | generate tok/s | lean-eager tok/s | lean tok/s | lean-eager/generate | lean/generate "
        "| greedy identical | generate peak MiB (+) | lean peak MiB (+)"
    )
    for batch in args.batches:
        prompts = synthetic_prompts(batch, args.prompt_length, seed=batch)
        seeds = list(range(batch))
        outs = {
            name: b.generate(prompts, injection, seeds, sampling, decode_seed=0) for name, b in arms.items()
        }
        times: dict[str, list[float]] = {k: [] for k in arms}
        for rep in range(args.repeats):
            for name in list(arms) if rep % 2 == 0 else list(reversed(arms)):
                t0 = time.perf_counter()
                arms[name].generate(prompts, injection, seeds, sampling, decode_seed=rep)
                times[name].append(time.perf_counter() - t0)
        tokens = batch * args.new_tokens
        rate = {k: tokens / statistics.median(v) for k, v in times.items()}
        same = outs["generate"] == outs["lean"] == outs["lean-eager"]
        peaks = {"generate": "-", "lean": "-"} if args.no_memory else peak_column(args, batch)
        print(
            f"{batch:5d} | {rate['generate']:14.1f} | {rate['lean-eager']:16.1f} | {rate['lean']:10.1f} | "
            f"{rate['lean-eager'] / rate['generate']:19.2f} | {rate['lean'] / rate['generate']:13.2f} | "
            f"{same!s:16s} | {peaks['generate']:>21s} | {peaks['lean']:>17s}",
            flush=True,
        )


if __name__ == "__main__":
    main()
