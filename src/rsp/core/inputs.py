"""The one place where (prompts, an injection, per-attempt seeds) become model inputs.

Why one place: the method *is* this step. Every engine, probe and trainer that builds its inputs here
(or through `SlotFiller`, the same step run as a hook inside a stock model's embedding layer) injects the
same rows at the same columns, so a rollout and its log-prob recomputation, or `rsp.attach` and
`rsp.generate(engine="hf")`, agree by construction instead of by test. `embed_prompts` lays out, embeds and
injects, for code that feeds `inputs_embeds`; `SlotFiller` finds the placeholder runs `layout` wrote in
whatever ids the model receives and fills them, for code that passes token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rsp.core.injection import Injection
from rsp.core.insert import PromptTokens, SlottedBatch, build_slotted_batch

EmbedFn = Callable[[torch.Tensor], torch.Tensor]


def layout(
    prompts: Sequence[PromptTokens],
    injection: Injection,
    *,
    pad_id: int,
    placeholder_id: int | None = None,
    suffixes: Sequence[Sequence[int]] | None = None,
) -> SlottedBatch:
    """Left-padded ids with the injection's L slots (`placeholder_id`, default `pad_id`) at each prompt's
    insertion point. `suffixes` (e.g. a training target) are appended after each prompt, inside the row."""
    seqs = [list(p.ids) + (list(suffixes[i]) if suffixes is not None else []) for i, p in enumerate(prompts)]
    if placeholder_id is not None and placeholder_id != pad_id:
        for i, p in enumerate(prompts):
            if placeholder_id in p.ids:
                why = f"prompt {i} already contains the placeholder id {placeholder_id}"
                raise ValueError(f"{why}; pass another placeholder_id")
    points = [p.insert_index(injection.position) for p in prompts]
    return build_slotted_batch(seqs, points, injection.length, pad_id=pad_id, placeholder_id=placeholder_id)


def embed_prompts(
    embed: EmbedFn,
    prompts: Sequence[PromptTokens],
    injection: Injection,
    seeds: Sequence[int | None],
    *,
    pad_id: int,
    suffixes: Sequence[Sequence[int]] | None = None,
    grad: bool = False,
) -> tuple[SlottedBatch, torch.Tensor]:
    """Laid-out batch and its input embeddings with the injection applied (row i from seeds[i]); `embed`
    gives effective embeddings. With `grad`, the injection's own parameters (a trained soft prompt) stay in
    the autograd graph; the token embeddings never do.
    """
    if len(prompts) != len(seeds):
        counts = f"({len(prompts)} prompts, {len(seeds)} seeds)"
        raise ValueError(f"one injection seed per prompt is required {counts}")
    batch = layout(prompts, injection, pad_id=pad_id, suffixes=suffixes)
    with torch.no_grad():
        embeds = embed(batch.input_ids)
    with torch.enable_grad() if grad else torch.no_grad():
        embeds = injection.apply(embeds, batch, seeds)
    return batch, embeds


def mixed_prompt(
    prompt: PromptTokens,
    injection: Injection,
    seed: int | None,
    *,
    pad_id: int,
    hidden_size: int,
    dtype: torch.dtype,
) -> tuple[tuple[int, ...], tuple[bool, ...], torch.Tensor]:
    """One attempt as token ids plus slot rows, for engines that embed the real tokens themselves (vLLM's
    mixed prompts): (ids with `pad_id` at the slots, False at the slots, (seq, d) zeros but the slot rows)."""
    batch = layout([prompt], injection, pad_id=pad_id)
    slots = batch.slot_mask()[0]
    rows = injection.rows([seed])
    if rows is None:
        raise RuntimeError(f"{injection.name}: {injection.length} slots but the injection gave no rows")
    embeds = torch.zeros(batch.input_ids.shape[1], hidden_size, dtype=dtype)
    embeds[slots] = rows[0].to(dtype).cpu()
    return tuple(batch.input_ids[0].tolist()), tuple((~slots).tolist()), embeds


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as `generate()` derives them: count of attended tokens before, 0 on padding."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


@dataclass
class Continued:
    """A laid-out prompt batch followed by right-padded continuations (completions being scored)."""

    batch: SlottedBatch  # the prompts
    embeds: torch.Tensor  # (B, P + T, d)
    attention_mask: torch.Tensor  # (B, P + T); 1 on the continuation's right padding too (never read)
    position_ids: torch.Tensor
    continuation_ids: torch.Tensor  # (B, T), pad after each continuation
    continuation_mask: torch.Tensor  # (B, T), 1 on real continuation tokens

    @property
    def prompt_width(self) -> int:
        return int(self.batch.input_ids.shape[1])

    def forward(self, model: torch.nn.Module, logits_to_keep: int):
        """The model's output on the whole sequence, with logits for the last `logits_to_keep` positions."""
        return model(
            inputs_embeds=self.embeds,
            attention_mask=self.attention_mask,
            position_ids=self.position_ids,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        )


def embed_continued(
    embed: EmbedFn,
    prompts: Sequence[PromptTokens],
    injection: Injection,
    seeds: Sequence[int | None],
    continuations: Sequence[Sequence[int]],
    *,
    pad_id: int,
    width: int | None = None,
    grad: bool = False,
) -> Continued:
    """`embed_prompts`, then each row's continuation after its prompt, as `generate` laid it out when it
    sampled it. Right padding after a short continuation only affects positions never read, so the mask
    keeps it attended; `width` caps or fixes the number of continuation columns (default: the longest
    continuation, at least 1)."""
    batch, prompt_embeds = embed_prompts(embed, prompts, injection, seeds, pad_id=pad_id, grad=grad)
    T = width if width is not None else max(1, max((len(c) for c in continuations), default=0))
    ids = torch.full((len(continuations), T), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(continuations), T), dtype=torch.long)
    for i, c in enumerate(continuations):
        toks = list(c)[:T]
        if toks:
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            cmask[i, : len(toks)] = 1
    device = prompt_embeds.device
    with torch.no_grad():
        cont = embed(ids).to(device=device, dtype=prompt_embeds.dtype)
    embeds = torch.cat([prompt_embeds, cont], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(cmask)], dim=1).to(device)
    return Continued(batch, embeds, mask, positions_from_mask(mask), ids, cmask)


def slots_from_placeholders(
    input_ids: torch.Tensor, placeholder_id: int, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot_index (B, L), has_slots (B,)): the first run of `length` placeholder ids in each row, the
    inverse of `layout`; a row with another number of placeholders is refused."""
    hits = input_ids == placeholder_id
    counts = hits.sum(dim=1)
    has = counts > 0
    bad = has & (counts != length)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"row {row} holds {int(counts[row])} placeholder ids ({placeholder_id}), expected 0 or "
            f"{length}: the prompt itself contains the placeholder token, or it was not laid out by "
            "rsp (use handle.prepare)"
        )
    starts = hits.int().argmax(dim=1)
    slot_index = starts.unsqueeze(1) + torch.arange(length, device=input_ids.device).unsqueeze(0)
    if length and bool(has.any()):
        rows = has.nonzero().squeeze(1)
        if not bool(hits[rows.unsqueeze(1), slot_index[rows]].all()):
            raise ValueError(f"the {length} placeholder ids of a row are not consecutive")
    return slot_index, has


class SlotFiller:
    """Forward hook for an input-embedding module: fills each row's slots with its injected rows.

    `seeds_for(rows)` gives every row's seed (None: leave the call alone). Calls whose rows hold the
    placeholder run are injected (prefill, scoring forwards); decode steps pass through. Injections that
    rewrite the prompt's rows (L = 0) apply to every multi-column call, with its mask from `attention_mask()`.
    """

    def __init__(
        self,
        injection: Injection,
        placeholder_id: int,
        seeds_for: Callable[[int], Sequence[int | None] | None],
        attention_mask: Callable[[], torch.Tensor | None] = lambda: None,
    ) -> None:
        self.injection = injection
        self.placeholder_id = int(placeholder_id)
        self.seeds_for = seeds_for
        self.attention_mask = attention_mask

    def batch_for(self, input_ids: torch.Tensor) -> SlottedBatch | None:
        """The `SlottedBatch` view of ids the model received, or None when nothing is to be injected."""
        L = self.injection.length
        if L == 0:
            if not self.injection.changes_prompt_rows or input_ids.shape[1] <= 1:
                return None
            slot_index = torch.empty((input_ids.shape[0], 0), dtype=torch.long)
        else:
            if input_ids.shape[1] < L:
                return None
            slot_index, has = slots_from_placeholders(input_ids, self.placeholder_id, L)
            if not bool(has.any()):
                return None
            if not bool(has.all()):
                why = "some rows of the batch carry the injection's slots and some do not"
                raise ValueError(f"{why}; lay every row out with the same handle")
        mask = self.attention_mask()
        if mask is None or mask.shape != input_ids.shape:
            mask = torch.ones_like(input_ids)
        return SlottedBatch(input_ids.cpu(), mask.cpu(), slot_index.cpu(), L)

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not args or not isinstance(args[0], torch.Tensor):
            return output
        batch = self.batch_for(args[0])
        if batch is None:
            return output
        seeds = self.seeds_for(batch.batch_size)
        if seeds is None:
            return output
        if len(seeds) != batch.batch_size:
            raise RuntimeError(f"injection hook: batch of {batch.batch_size} rows but {len(seeds)} seeds")
        return self.injection.apply(output, batch, list(seeds))
