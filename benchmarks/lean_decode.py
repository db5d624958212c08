"""Lean decode loop versus `generate()`: tokens/s side by side at several batch sizes.

Same model, dtype, prompts, injection and greedy decoding in both arms; end-of-sequence is ignored
so every run decodes exactly --new-tokens per row. Arms alternate within each repeat and the
median is reported (this machine's timings drift). The model is a random-init Llama with
SmolLM2-135M's configuration unless --packaged is given.

    python benchmarks/lean_decode.py                          # batches 1, 8, 32; 3 repeats
    python benchmarks/lean_decode.py --batches 1 8 32 64 --repeats 5 --new-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from rsp.backends import HFBackend, SamplingConfig
from rsp.backends.lean import LeanHFBackend
from rsp.core import PromptTokens, RandomSoftPrompt
from rsp.models import load_model


def smollm2_like(packaged: bool, dtype: torch.dtype):
    """SmolLM2's tokenizer, with either its weights or a random model of the same shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = load_model("smollm2-135m-instruct", dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    if not packaged:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
        lm = dataclasses.replace(lm, model=LlamaForCausalLM(cfg).to(dtype).eval())
    return dataclasses.replace(lm, stop_token_ids=(49152 + 10,))  # never sampled: fixed length


def synthetic_prompts(n: int, length: int, seed: int = 0) -> list[PromptTokens]:
    g = torch.Generator().manual_seed(seed)
    return [PromptTokens(tuple(torch.randint(100, 49000, (length,), generator=g).tolist()), length)
            for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--rsp-length", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--packaged", action="store_true", help="use SmolLM2's real weights instead of random init")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = smollm2_like(args.packaged, getattr(torch, args.dtype))
    injection = RandomSoftPrompt(lm.embedding_stats(), args.rsp_length)
    sampling = SamplingConfig(temperature=0, max_new_tokens=args.new_tokens)
    arms = {"generate": HFBackend(lm), "lean": LeanHFBackend(lm)}
    print(f"model=smollm2-config({'packaged' if args.packaged else 'random'}) dtype={args.dtype} "
          f"prompt={args.prompt_length} new_tokens={args.new_tokens} L={args.rsp_length} "
          f"threads={args.threads} repeats={args.repeats}")
    print("batch | generate tok/s | lean tok/s | lean/generate | greedy identical")
    for batch in args.batches:
        prompts = synthetic_prompts(batch, args.prompt_length, seed=batch)
        seeds = list(range(batch))
        outs = {name: b.generate(prompts, injection, seeds, sampling, decode_seed=0) for name, b in arms.items()}
        times: dict[str, list[float]] = {k: [] for k in arms}
        for rep in range(args.repeats):
            for name in (list(arms) if rep % 2 == 0 else list(reversed(arms))):
                t0 = time.perf_counter()
                arms[name].generate(prompts, injection, seeds, sampling, decode_seed=rep)
                times[name].append(time.perf_counter() - t0)
        tokens = batch * args.new_tokens
        rate = {k: tokens / statistics.median(v) for k, v in times.items()}
        same = outs["generate"] == outs["lean"]
        print(f"{batch:5d} | {rate['generate']:14.1f} | {rate['lean']:10.1f} | "
              f"{rate['lean'] / rate['generate']:13.2f} | {same}", flush=True)


if __name__ == "__main__":
    main()
