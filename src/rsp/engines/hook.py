"""`rsp.attach` (a fresh Random Soft Prompt per row inside a stock transformers model's own `generate`;
example in README.md) and the hook behind it, which the hf engine uses too, so attach + `model.generate`
and `rsp.generate(engine="hf")` agree by construction. (`attach` lives here, not in a module `rsp.attach`,
which would shadow the function on the lazy package.)

How: `prepare` lays prompts out with `rsp.core.inputs.layout`; a forward hook on the input-embedding
module (`SlotFiller`) overwrites the placeholder rows with each row's vectors, so prefill and every plain
forward (training, log-probs, TRL, lm-eval) see the RSP, while decode steps pass through. A call's seeds
are drawn at its prefill, after transformers has expanded the batch for `num_return_sequences`, so every
returned row gets its own RSP. A hook on the output head sets the placeholder's logit to BANNED_LOGIT in
every distribution the model gives while attached (the lean engine and native trainer ban it too); an
instance attribute wraps `model.generate` only to mark "a new call", and `detach` removes all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from transformers import BatchEncoding

from rsp.core.injection import Injection
from rsp.core.inputs import SlotFiller, layout
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.methods import RSPConfig, build_method
from rsp.models.loading import LoadedModel, input_embeddings, output_embeddings, wrap_model
from rsp.tasks.prompts import Messages, is_messages, tokenize_prompt

Prompt = str | Messages | PromptTokens
BANNED_LOGIT = -1.0e4  # exp() of it underflows to 0 in every float type: never sampled, yet finite in a loss


def ban_token_in_logits(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    """Set the logit column of `token_id` to BANNED_LOGIT (in place when autograd allows it)."""
    try:
        logits[..., token_id] = BANNED_LOGIT
    except RuntimeError:  # e.g. an inference-mode tensor seen from outside it
        logits = logits.clone()
        logits[..., token_id] = BANNED_LOGIT
    return logits


class RSPHandle:
    """An injection attached to a model; see the module docstring. Use as a context manager or `detach()`."""

    def __init__(
        self, lm: LoadedModel, injection: Injection, *, seed: int = 0, placeholder_id: int | None = None
    ) -> None:
        self.lm = lm
        self.model = lm.model
        self.tokenizer = lm.tokenizer
        self.injection = injection
        self.seed = int(seed)
        vocab_rows = int(input_embeddings(self.model).weight.shape[0])
        self.placeholder_id = lm.placeholder_id if placeholder_id is None else int(placeholder_id)
        if not 0 <= self.placeholder_id < vocab_rows:
            raise ValueError(
                f"placeholder_id {self.placeholder_id} is outside the embedding table ({vocab_rows} rows)"
            )
        self.seeds: list[int | None] | None = None  # the seeds of the last injected call, row by row
        self.draws = 0  # how many fresh sets of seeds were drawn
        self._pinned: list[int | None] | None = None
        self._in_generate = self._fresh = False  # inside a generate call; before its prefill
        self._k = 1
        self._prepared: tuple[int, int] | None = None  # (rows, n) of the last prepare()
        self._mask: torch.Tensor | None = None
        self.filler = SlotFiller(injection, self.placeholder_id, self._seeds_for, lambda: self._mask)
        self._handles = [input_embeddings(self.model).register_forward_hook(self.filler)]
        head = output_embeddings(self.model)
        if head is not None:  # every distribution the model gives while attached excludes the placeholder
            self._handles.append(
                head.register_forward_hook(
                    lambda module, args, output: ban_token_in_logits(output, self.placeholder_id)
                )
            )
        if injection.changes_prompt_rows:  # the mask, from the transformers model under any PEFT wrapper
            get_base = getattr(self.model, "get_base_model", None)
            base = get_base() if callable(get_base) else self.model
            self._handles.append(base.register_forward_pre_hook(self._capture_mask, with_kwargs=True))
        self._previous_generate = vars(self.model).get("generate")
        # torch types an undeclared module attribute Tensor | Module; `generate` is transformers' method
        self._original_generate = cast("Callable[..., Any]", self.model.generate)
        self.model.generate = self._generate  # type: ignore[assignment]
        self.attached = True

    def prepare(self, prompts: Prompt | Sequence[Prompt], n: int = 1, *, chat: bool | None = None):
        """A left-padded `BatchEncoding` on the model's device, each prompt repeated `n` times (prompt-major),
        with the L placeholder slots at the insertion point. Strings use the chat template where the
        tokenizer has one (`chat` overrides). For greedy decoding use `n` rather than
        `num_return_sequences` (which transformers allows only when sampling)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if isinstance(prompts, str | PromptTokens) or is_messages(prompts):
            prompts = [prompts]
        tokens = [tokenize_prompt(self.tokenizer, p, chat=chat) for p in prompts]
        rows = [t for t in tokens for _ in range(n)]
        batch = layout(rows, self.injection, pad_id=self.lm.pad_token_id, placeholder_id=self.placeholder_id)
        self._prepared = (len(rows), n)
        device = self.lm.device
        return BatchEncoding(
            {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
        )

    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        """The injected vectors (B, L, d) for these seeds: the same seeds rebuild the same RSPs."""
        return self.injection.rows(list(seeds))

    @contextmanager
    def use_seeds(self, seeds: Sequence[int | None]) -> Iterator[RSPHandle]:
        """Inside the block every injected call (generate or forward) uses exactly these seeds, row by row."""
        previous, self._pinned = self._pinned, list(seeds)
        try:
            yield self
        finally:
            self._pinned = previous

    def _draw(self, rows: int) -> list[int | None]:
        base = derive_seed(self.seed, "attach", self.draws)
        self.draws += 1
        k = self._k if self._in_generate and rows % self._k == 0 else 1
        prepared_rows, n = self._prepared if self._prepared else (rows // k, 1)
        if prepared_rows * k != rows:
            n = 1
        seeds = []
        for r in range(rows):
            row_in, rep = divmod(r, k)
            prompt, copy = divmod(row_in, n)
            seeds.append(self.injection.seed_for(base, str(prompt), copy * k + rep))
        return seeds

    def _seeds_for(self, rows: int) -> list[int | None]:
        if self._pinned is not None:
            if len(self._pinned) != rows:
                raise ValueError(f"use_seeds gave {len(self._pinned)} seeds for a batch of {rows} rows")
            seeds = self._pinned
        elif not self._fresh and self.seeds is not None and len(self.seeds) == rows:
            seeds = self.seeds  # later forwards of a generate call, or scoring after it: the rows' own RSPs
        else:  # the prefill of a new generate call (`_fresh`), or a new batch
            self._fresh = False
            seeds = self._draw(rows)
        self.seeds = list(seeds)
        return self.seeds

    def _capture_mask(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _generate(self, *args: Any, **kwargs: Any):
        config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
        self._k = int(kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", 1) or 1)
        self._in_generate, self._fresh = True, True
        try:
            return self._original_generate(*args, **kwargs)
        finally:
            self._in_generate, self._fresh = False, False

    def detach(self) -> None:
        """Remove every hook and the generate wrapper: the model is exactly as it was before `attach`."""
        if not self.attached:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._previous_generate is not None:
            self.model.generate = self._previous_generate
        else:
            del self.model.generate
        self.attached = False

    def __enter__(self) -> RSPHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def attach(
    model: torch.nn.Module | LoadedModel,
    tokenizer=None,
    *,
    length: int = 4,
    seed: int = 0,
    position: str = "after_generation_prompt",
    scale: float = 1.0,
    method: str = "rsp",
    injection: Injection | None = None,
    placeholder_id: int | None = None,
    stats_rows: str = "all",
    stats_mean: str = "scalar",
    **method_options: Any,
) -> RSPHandle:
    """Make a transformers causal LM (or a PEFT-wrapped one) RSP-aware; returns the handle.

    Args:
        model, tokenizer: a stock causal LM (or PEFT model) and its tokenizer, or an rsp `LoadedModel`.
        length, scale, position, stats_rows, stats_mean: as in `rsp.RSPConfig`.
        seed: base seed; the seeds of each call are derived from it and the call's index.
        method: any registered method (`rsp methods`), with its options as keywords
            (e.g. `soft_prompt="file.safetensors"`, `noise_alpha=5`).
        injection: a ready `Injection` instead of `method` (its own length and position are used).
        placeholder_id: the token id that marks the slots (default: `choose_placeholder`).

    The model's mode, parameters and methods are left alone; `handle.detach()` removes every trace.
    """
    if isinstance(model, LoadedModel):
        lm = model
    elif tokenizer is None:
        raise ValueError("rsp.attach needs the tokenizer together with the model")
    else:
        lm = wrap_model(model, tokenizer, name=type(model).__name__, prepare=False)
    if injection is None:
        options = RSPConfig(
            length=length,
            scale=scale,
            position=position,
            stats_rows=stats_rows,
            stats_mean=stats_mean,
            method_options=dict(method_options),
        )
        injection = build_method(method, lm, options)
    elif method_options:
        raise ValueError("method options apply to `method`, not to a ready `injection`")
    return RSPHandle(lm, injection, seed=seed, placeholder_id=placeholder_id)
