"""Teacher-forced passes over [prompt, injected slots, completion prefix]: causal attention means the
distributions and attention maps at the first K generated positions depend only on the first K-1
completion tokens, so one forward per batch replaces `generate`'s per-step outputs, in bounded memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch

from rsp.core.injection import Injection
from rsp.core.inputs import embed_continued
from rsp.core.insert import PromptTokens, SlottedBatch
from rsp.models.loading import LoadedModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def valid_positions(continuations: Sequence[Sequence[int]], k: int) -> torch.Tensor:
    """(B, k) bool: position t (0-based) exists when the completion has more than t tokens."""
    lengths = torch.tensor([len(c) for c in continuations])
    return torch.arange(k).unsqueeze(0) < lengths.unsqueeze(1)


def teacher_forced_logits(
    lm: LoadedModel,
    prompts: Sequence[PromptTokens],
    injection: Injection,
    seeds: Sequence[int | None],
    continuations: Sequence[Sequence[int]],
    k: int,
) -> torch.Tensor:
    """(B, k, V) fp32 raw logits of the next-token distribution at generated positions 1..k."""
    seq = embed_continued(
        lm.embed, prompts, injection, seeds, continuations, pad_id=lm.pad_token_id, width=max(k - 1, 0)
    )
    with torch.no_grad():
        out = seq.forward(lm.model, seq.embeds.shape[1] - seq.prompt_width + 1)
    return out.logits[:, :k].float()


@contextmanager
def eager_attention(lm: LoadedModel):
    """Temporarily switch to eager attention, the only implementation that exposes weights."""
    # LoadedModel.model is typed nn.Module (any wrapped model); the analysis runs a transformers model
    model = cast("PreTrainedModel", lm.model)
    before = getattr(model.config, "_attn_implementation", None)
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before not in (None, "eager"):
            model.set_attn_implementation(before)


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    layers = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if not layers:
        raise ValueError(f"cannot find attention modules (named *.self_attn) in {type(model).__name__}")
    return layers


def attention_mass(
    lm: LoadedModel,
    prompts: Sequence[PromptTokens],
    injection: Injection,
    seeds: Sequence[int | None],
    continuations: Sequence[Sequence[int]],
    k: int,
    key_columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, layers, k): share of attention, averaged over heads, that the query producing generated token t
    puts on the key columns (default: the injected slots). Weights are reduced inside a forward hook on
    each attention module, so no full attention map outlives its layer."""
    seq = embed_continued(
        lm.embed, prompts, injection, seeds, continuations, pad_id=lm.pad_token_id, width=max(k - 1, 0)
    )
    cols = (seq.batch.slot_index if key_columns is None else key_columns).to(lm.device)
    rows = torch.arange(seq.prompt_width - 1, seq.prompt_width - 1 + k, device=lm.device)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        weights = output[1]
        if weights is None:
            raise RuntimeError("attention weights are not available; eager attention is required")
        w = weights[:, :, rows, :].float()  # (B, H, k, S)
        idx = cols[:, None, None, :].expand(-1, w.shape[1], w.shape[2], -1)
        captured.append(w.gather(3, idx).sum(-1).mean(1).cpu())  # (B, k)

    with eager_attention(lm):
        handles = [m.register_forward_hook(hook) for m in attention_layers(lm.model)]
        try:
            with torch.no_grad():
                seq.forward(lm.model, 1)
        finally:
            for h in handles:
                h.remove()
    return torch.stack(captured, dim=1)


def columns_before_insertion(
    prompts: Sequence[PromptTokens], position: str, length: int, batch: SlottedBatch
) -> torch.Tensor:
    """(B, length) absolute columns of the `length` prompt tokens just before the insertion point,
    the no-injection reference for attention mass ("same number of ordinary tokens, same place")."""
    width = batch.input_ids.shape[1]
    out = torch.empty((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        offset = width - (len(p.ids) + batch.length)
        end = p.insert_index(position)
        start = max(0, end - length)
        cols = list(range(offset + start, offset + end))
        cols = ([cols[0]] * (length - len(cols)) + cols) if cols else [offset] * length
        out[i] = torch.tensor(cols)
    return out
