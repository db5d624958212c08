"""`rsp.attach`: a fresh Random Soft Prompt per row inside a stock transformers model's own `generate`.

    handle = rsp.attach(model, tokenizer, length=4, seed=0)
    enc = handle.prepare(["What is 2 + 3?"])                     # L placeholder ids at the insertion point
    out = model.generate(**enc, do_sample=True, num_return_sequences=16, max_new_tokens=64)
    handle.seeds                                                  # the RSP seed of each of the 16 rows
    handle.detach()                                               # the model is exactly as before

The mechanics (placeholder layout, embedding hook, seeds per generate call) live in
`rsp.engines.hook`, which the hf engine uses too, so attach + `model.generate` and
`rsp.generate(engine="hf")` give the same completions for the same seeds by construction.
"""

from __future__ import annotations

from typing import Any

import torch

from rsp.core.injection import Injection
from rsp.engines.hook import RSPHandle, choose_placeholder
from rsp.methods import RSPConfig, build_method
from rsp.models.loading import LoadedModel, wrap_model

__all__ = ["RSPHandle", "attach", "choose_placeholder"]


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
        model, tokenizer: a stock `AutoModelForCausalLM` (or PEFT model) and its tokenizer, or an rsp
            `LoadedModel` (tokenizer then omitted).
        length: L, the number of injected vectors (0 = nothing is injected).
        seed: base seed; the seeds of each call are derived from it and the call's index.
        position: insertion point: `after_generation_prompt`, `end_of_user_turn` or `prepend`.
        scale: multiplies the fitted standard deviation.
        method: any registered method (`rsp methods`): the controls attach the same way;
            method-specific options (e.g. `soft_prompt="file.safetensors"`, `noise_alpha=5`) as keywords.
        injection: a ready `Injection` instead of `method` (its own length and position are used).
        placeholder_id: the token id that marks the slots (default: `choose_placeholder`).

    The model's train/eval mode, parameters and methods are left alone; `handle.detach()` (or leaving
    a `with` block) removes every trace.
    """
    if isinstance(model, LoadedModel):
        lm = model
    else:
        if tokenizer is None:
            raise ValueError("rsp.attach needs the tokenizer together with the model")
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
