"""Per-token log-probabilities of served samples, from one teacher-forced forward per row.

Why after sampling: the engines return token ids only, and the inputs `rsp.core.inputs` builds (the row's
injection, then the completion) give each token's distribution with the same RSP. The values are raw
log-probabilities (before temperature or top-p/k), as vLLM reports; in bf16 they can differ in the last
bits from the logits the engine decoded with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rsp.core.injection import Injection
from rsp.core.inputs import embed_continued
from rsp.core.insert import PromptTokens


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities of `token_ids` (None where nothing precedes the token: a prompt's first one)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    top: tuple[tuple[tuple[int, float], ...], ...]  # per token: (id, logprob) of the `k` likeliest


def score_row(
    lm,
    prompt: PromptTokens,
    injection: Injection,
    seed: int | None,
    completion: Sequence[int],
    *,
    top_k: int,
    echo: bool,
    ended_on: int | None = None,
) -> TokenLogprobs:
    """Log-probs of the completion tokens (and, with `echo`, of the prompt's own tokens, skipping the
    slots) for one row. `ended_on`, the stop token the engines drop, is appended as the last entry: scorers
    such as lm-eval's `local-completions` read every value but the last.
    """
    model = getattr(lm, "model", None)  # the vllm engine's EmbeddingModel has none
    if model is None:
        raise ValueError("log-probs need the model's weights in this process (hf, lean or prefix engine)")
    seq = embed_continued(
        lm.embed,
        [prompt],
        injection,
        [seed],
        [list(completion)],
        pad_id=lm.pad_token_id,
        width=len(completion) or 1,
    )
    batch, width = seq.batch, seq.prompt_width
    keep = seq.embeds.shape[1] if echo else len(completion) + 1
    with torch.no_grad():
        out = seq.forward(model, keep)
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (keep, V)
    offset = seq.embeds.shape[1] - keep  # absolute column of logp[0]

    columns: list[tuple[int, int]] = []  # (column whose logits predict the token, token id)
    if echo:
        real = (batch.attention_mask[0].bool() & ~batch.slot_mask()[0]).tolist()
        ids = batch.input_ids[0].tolist()
        seen = False
        for c in range(width):
            if not real[c]:
                continue
            columns.append((c - 1 if seen else -1, ids[c]))
            seen = True
    for t, tok in enumerate(completion):
        columns.append((width - 1 + t, int(tok)))
    if ended_on is not None:
        columns.append((width - 1 + len(completion), int(ended_on)))

    token_ids: list[int] = []
    values: list[float | None] = []
    tops: list[tuple[tuple[int, float], ...]] = []
    for col, tok in columns:
        token_ids.append(tok)
        if col < 0:
            values.append(None)
            tops.append(())
            continue
        row = logp[col - offset]
        values.append(float(row[tok]))
        if top_k:
            v, i = torch.topk(row, top_k)
            tops.append(tuple(zip(i.tolist(), v.tolist(), strict=True)))
        else:
            tops.append(())
    return TokenLogprobs(tuple(token_ids), tuple(values), tuple(tops))
