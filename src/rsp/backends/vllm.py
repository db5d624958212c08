"""vLLM backend: one prompt-embeddings request per attempt.

Why one request per attempt: `SamplingParams(n>1)` samples n continuations of ONE prompt, which
would give all N attempts the same RSP. Each attempt is therefore its own request whose
`prompt_embeds` (seq, d) are the prompt's input embeddings with that attempt's rows written into
its slots, built exactly like the HF backend's rows but without padding (vLLM batches ragged
sequences itself). The request builder is a pure function, testable without vLLM installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rsp.backends.base import Completion, SamplingConfig
from rsp.core.injection import Injection
from rsp.core.insert import PromptTokens, build_slotted_batch
from rsp.core.seeds import derive_seed
from rsp.models.loading import LoadedModel


@dataclass(frozen=True)
class AttemptRequest:
    """One vLLM request: the attempt's prompt embeddings and its own decode seed."""

    prompt_embeds: torch.Tensor  # (seq, d), no padding
    seed: int
    row: int  # index into the caller's prompts

    def as_prompt(self) -> dict:
        return {"prompt_embeds": self.prompt_embeds}


def build_requests(lm: LoadedModel, prompts: Sequence[PromptTokens], injection: Injection,
                   seeds: Sequence[int | None], *, decode_seed: int) -> list[AttemptRequest]:
    """One request per attempt (never n>1), embeddings in the model's dtype on the CPU."""
    if len(prompts) != len(seeds):
        raise ValueError("one injection seed per prompt is required")
    requests = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        batch = build_slotted_batch([prompt.ids], [prompt.insert_index(injection.position)], injection.length,
                                    pad_id=lm.pad_token_id)
        with torch.no_grad():
            embeds = injection.apply(lm.embed(batch.input_ids), batch, [seed])
        requests.append(AttemptRequest(embeds[0].detach().cpu(), derive_seed(decode_seed, "vllm", i), i))
    return requests


def sampling_params(sampling: SamplingConfig, seed: int, stop_token_ids: Sequence[int],
                    stop_strings: Sequence[str]):
    from vllm import SamplingParams

    return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k if sampling.top_k else -1, min_p=sampling.min_p,
                          max_tokens=sampling.max_new_tokens, seed=seed, stop_token_ids=list(stop_token_ids),
                          stop=list(stop_strings) or None)


def vllm_available() -> tuple[bool, str]:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # vllm raises more than ImportError when its platform is missing
        return False, f"vllm is not importable here: {type(exc).__name__}: {exc}"
    return True, ""


class VLLMBackend:
    """Same `generate` interface as `HFBackend`, on a vLLM engine with prompt embeddings enabled.

    `lm` supplies the tokenizer, embedding table and stop ids (the HF copy of the same weights);
    `model_path` is what vLLM loads. Tensor/data parallel sizes are passed through to `vllm.LLM`.
    """

    def __init__(self, lm: LoadedModel, model_path: str, *, tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1, dtype: str = "auto", **engine_kwargs) -> None:
        ok, why = vllm_available()
        if not ok:
            raise RuntimeError(why)
        from vllm import LLM

        self.lm = lm
        kwargs = dict(model=model_path, enable_prompt_embeds=True, tensor_parallel_size=tensor_parallel_size,
                      dtype=dtype, **engine_kwargs)
        if data_parallel_size != 1:
            kwargs["data_parallel_size"] = data_parallel_size
        self.llm = LLM(**kwargs)

    def generate(self, prompts: Sequence[PromptTokens], injection: Injection, seeds: Sequence[int | None],
                 sampling: SamplingConfig, *, decode_seed: int, stop_strings: Sequence[str] = ()) -> list[Completion]:
        sampling.validate()
        requests = build_requests(self.lm, prompts, injection, seeds, decode_seed=decode_seed)
        params = [sampling_params(sampling, r.seed, self.lm.stop_token_ids, stop_strings) for r in requests]
        outputs = self.llm.generate([r.as_prompt() for r in requests], params, use_tqdm=True)
        completions = []
        for out in outputs:
            o = out.outputs[0]
            stops = set(self.lm.stop_token_ids)
            tokens = [t for t in o.token_ids if t not in stops]
            reason = "stop" if o.finish_reason == "stop" else "length"
            completions.append(Completion(token_ids=tuple(tokens), text=o.text, finish_reason=reason))
        return completions
