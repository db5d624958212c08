"""Hugging Face transformers engine: `generate` with one injection per row (N attempts at a problem
are N rows, never `num_return_sequences`, which would copy one RSP to all N)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from transformers import GenerationConfig

from rsp.core.injection import Injection
from rsp.core.inputs import embed_prompts, layout
from rsp.core.insert import PromptTokens, SlottedBatch
from rsp.core.seeds import derive_seed
from rsp.engines.base import Completion, SamplingConfig, cut_at_stop_token
from rsp.engines.hook import RSPHandle
from rsp.models.loading import LoadedModel, output_embeddings

log = logging.getLogger(__name__)


@contextmanager
def contiguous_head_input(model: torch.nn.Module):
    """Within the block, the output head receives a contiguous input. Why: at prefill `generate()` hands
    the head the view `hidden[:, -1:, :]`, and `torch.matmul` on a non-contiguous 3-D input materialises
    the weight expanded to (B, d, vocab): 1.8 GB and ~5 s for SmolLM2 at batch 32 on a CPU, 10.7 GB for
    Gemma 3. A contiguous copy takes the plain path; bf16 and fp16 logits are bit-identical (tested), fp32
    ones may differ in the last bit."""

    def make_contiguous(module, args):
        if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
            return (args[0].contiguous(), *args[1:])
        return None

    head = output_embeddings(model)
    handle = head.register_forward_pre_hook(make_contiguous) if head is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


class HFEngine:
    """Batched sampling with transformers; backs off to smaller batches on out-of-memory."""

    def __init__(self, lm: LoadedModel, *, min_batch_size: int = 1) -> None:
        self.lm = lm
        self.min_batch_size = min_batch_size
        self.oom_events: list[str] = []

    def prepare(
        self, prompts: Sequence[PromptTokens], injection: Injection, seeds: Sequence[int | None]
    ) -> tuple[SlottedBatch, torch.Tensor]:
        """Left-padded slotted batch and its input embeddings with the injection applied."""
        return embed_prompts(self.lm.embed, prompts, injection, seeds, pad_id=self.lm.pad_token_id)

    def generate(
        self,
        prompts: Sequence[PromptTokens],
        injection: Injection,
        seeds: Sequence[int | None],
        sampling: SamplingConfig,
        *,
        decode_seed: int,
        stop_strings: Sequence[str] = (),
    ) -> list[Completion]:
        sampling.validate()
        if len(prompts) != len(seeds):
            raise ValueError("one injection seed per prompt is required")
        try:
            torch.manual_seed(decode_seed)
            with contiguous_head_input(self.lm.model):
                return self._generate_batch(prompts, injection, seeds, sampling, stop_strings)
        except RuntimeError as exc:  # torch.OutOfMemoryError included
            message = str(exc).lower()
            oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in message
            if not (oom or "can't allocate memory" in message) or len(prompts) <= self.min_batch_size:
                raise
            half = (len(prompts) + 1) // 2
            msg = f"out of memory at batch {len(prompts)}; retrying as two batches of <= {half}"
            log.warning(msg)
            self.oom_events.append(msg)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            out: list[Completion] = []
            for i, part in enumerate((slice(None, half), slice(half, None))):
                seed = derive_seed(decode_seed, "oom", i)
                out += self.generate(
                    prompts[part],
                    injection,
                    seeds[part],
                    sampling,
                    decode_seed=seed,
                    stop_strings=stop_strings,
                )
            return out

    def generation_kwargs(self, sampling: SamplingConfig, stop_strings: Sequence[str] = ()) -> dict:
        cfg = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not sampling.greedy,
            temperature=None if sampling.greedy else sampling.temperature,
            top_p=None if sampling.greedy or sampling.top_p >= 1 else sampling.top_p,
            # 0 (not None) turns top-k off: transformers 5 fills a None top_k with its default of 50.
            top_k=None if sampling.greedy else sampling.top_k,
            min_p=None if sampling.greedy or sampling.min_p == 0 else sampling.min_p,
            eos_token_id=list(self.lm.stop_token_ids),
            pad_token_id=self.lm.pad_token_id,
            stop_strings=list(stop_strings) or None,
            use_cache=True,
        )
        return {"generation_config": cfg, "tokenizer": self.lm.tokenizer if stop_strings else None}

    def _generate_batch(self, prompts, injection, seeds, sampling, stop_strings) -> list[Completion]:
        # The same hook a user gets from `rsp.attach`: placeholder ids in, each row's RSP written over them
        # inside the embedding layer, so this engine and attach + model.generate agree by construction.
        with RSPHandle(self.lm, injection) as handle, handle.use_seeds(seeds):
            batch = layout(
                prompts, injection, pad_id=self.lm.pad_token_id, placeholder_id=handle.placeholder_id
            )
            kwargs = self.generation_kwargs(sampling, stop_strings)
            with torch.no_grad():
                # torch types the undeclared attribute as Tensor | Module; it is transformers' generate()
                generate = cast("Callable[..., Any]", self.lm.model.generate)
                out = generate(
                    input_ids=batch.input_ids.to(self.lm.device),
                    attention_mask=batch.attention_mask.to(self.lm.device),
                    **kwargs,
                )
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        width = batch.input_ids.shape[1]
        return [self._finish(row.tolist(), sampling, stop_strings) for row in sequences[:, width:].cpu()]

    def _finish(self, tokens: list[int], sampling: SamplingConfig, stop_strings: Sequence[str]) -> Completion:
        tokens, stop_token = cut_at_stop_token(tokens, self.lm.stop_token_ids)
        reason = "stop" if stop_token is not None else "length"
        text = self._decode_text(tokens)
        hits = [text.find(s) for s in stop_strings if s in text]
        if hits:
            text, reason, stop_token = text[: min(hits)], "stop", None
            # The ids end with the token that completed the stop string, as vLLM reports them, not with
            # the pad written into the finished row until the batch ended: `num_tokens` counts what was
            # generated. "Some stop string is in the decoded prefix" only turns on as the prefix grows.
            lo, hi = 1, len(tokens)
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in self._decode_text(tokens[:mid]) for s in stop_strings):
                    hi = mid
                else:
                    lo = mid + 1
            tokens = tokens[:lo]
        return Completion(token_ids=tuple(tokens), text=text, finish_reason=reason, stop_token=stop_token)

    def _decode_text(self, tokens: Sequence[int]) -> str:
        # transformers types decode's result for batches too; one list of ids decodes to one str
        return cast(str, self.lm.tokenizer.decode(list(tokens), skip_special_tokens=True))
