"""Per-token log-probabilities of served samples, from one teacher-forced forward per row.

Why after sampling: the engines return token ids only, and the inputs `rsp.core.inputs` builds (the row's
injection, then the completion) give each token's distribution with the same RSP. The values are raw
log-probabilities (before temperature or top-p/k), as vLLM reports; in bf16 they can differ in the last
bits from the logits the engine decoded with.
"""

from __future__ import annotations

import torch

from rsp.core.injection import Injection
from rsp.core.inputs import embed_continued
from rsp.core.insert import PromptTokens
from rsp.engines import Completion

# (token id, its log-prob or None when nothing precedes it, (id, log-prob) of the likeliest tokens)
TokenLogprob = tuple[int, float | None, tuple[tuple[int, float], ...]]


def score_row(
    lm,
    prompt: PromptTokens,
    injection: Injection,
    seed: int | None,
    completion: Completion,
    *,
    top_k: int,
    echo: bool,
) -> list[TokenLogprob]:
    """Log-probs of the completion tokens (and, with `echo`, of the prompt's own tokens, skipping the
    slots) for one row. With `echo`, the stop token the engines drop ends the list: scorers such as
    lm-eval's `local-completions` read every value but the last.
    """
    model = getattr(lm, "model", None)  # the vllm engine's EmbeddingModel has none
    if model is None:
        raise ValueError("log-probs need the model's weights in this process (hf, lean or prefix engine)")
    tokens = list(completion.token_ids)
    seq = embed_continued(lm.embed, [prompt], injection, [seed], [tokens], pad_id=lm.pad_token_id)
    batch, width = seq.batch, seq.prompt_width
    keep = seq.embeds.shape[1] if echo else len(tokens) + 1
    with torch.no_grad():
        out = seq.forward(model, keep)
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (keep, V)
    offset = seq.embeds.shape[1] - keep  # absolute column of logp[0]

    columns: list[tuple[int, int]] = []  # (column whose logits predict the token or -1: none, token id)
    if echo:
        real = (batch.attention_mask[0].bool() & ~batch.slot_mask()[0]).tolist()
        ids = batch.input_ids[0].tolist()
        prompt_columns = [c for c in range(width) if real[c]]
        columns = [(c - 1 if i else -1, ids[c]) for i, c in enumerate(prompt_columns)]
    ended = [completion.stop_token] if echo and completion.stop_token is not None else []
    columns += [(width - 1 + t, tok) for t, tok in enumerate([*tokens, *ended])]

    scored: list[TokenLogprob] = []
    for col, tok in columns:
        if col < 0:
            scored.append((tok, None, ()))
            continue
        row = logp[col - offset]
        values, top = torch.topk(row, top_k)
        scored.append((tok, float(row[tok]), tuple(zip(top.tolist(), values.tolist(), strict=True))))
    return scored
