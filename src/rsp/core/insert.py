"""Insertion of injected rows (RSPs, soft prompts, controls) into a batch of prompts.

The prompt is laid out in token space with L placeholder slots at the insertion point, so ids, masks and
position ids keep their usual shapes; at embedding time the slot rows are overwritten with the vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

InsertionPoint = Literal["after_generation_prompt", "end_of_user_turn", "prepend"]
INSERTION_POINTS: tuple[str, ...] = ("after_generation_prompt", "end_of_user_turn", "prepend")


@dataclass(frozen=True)
class PromptTokens:
    """A tokenised prompt plus the token offsets of its named insertion points."""

    ids: tuple[int, ...]
    user_turn_end: int  # index of the first token after the user's content (end-of-turn / header)

    def insert_index(self, position: str) -> int:
        if position == "after_generation_prompt":
            return len(self.ids)
        if position == "end_of_user_turn":
            return self.user_turn_end
        if position == "prepend":
            return 0
        raise ValueError(f"unknown insertion point {position!r}; choose from {', '.join(INSERTION_POINTS)}")


@dataclass
class SlottedBatch:
    """Left-padded prompt ids with `length` placeholder slots per row."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 0 on left padding
    slot_index: torch.Tensor  # (B, L) long, absolute columns of the slots
    length: int

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def slot_mask(self) -> torch.Tensor:
        """(B, T) bool, True on injected slots."""
        mask = torch.zeros_like(self.input_ids, dtype=torch.bool)
        if self.length:
            mask.scatter_(1, self.slot_index, True)
        return mask


def build_slotted_batch(
    prompts: Sequence[Sequence[int]],
    insert_index: Sequence[int],
    length: int,
    *,
    pad_id: int,
    placeholder_id: int | None = None,
) -> SlottedBatch:
    """Lay out prompts left-padded, with `length` slots at `insert_index[i]` in row i (length 0: exactly a
    left-padded batch, so "no injection" and "L=0" share one code path)."""
    if length < 0:
        raise ValueError(f"injection length must be >= 0, got {length}")
    if len(prompts) != len(insert_index):
        raise ValueError("prompts and insert_index must have the same length")
    if not prompts:
        raise ValueError("cannot build an empty batch")
    placeholder = pad_id if placeholder_id is None else placeholder_id
    rows: list[list[int]] = []
    for ids, at in zip(prompts, insert_index, strict=True):
        ids = list(ids)
        if not 0 <= at <= len(ids):
            raise ValueError(f"insertion index {at} outside prompt of length {len(ids)}")
        rows.append(ids[:at] + [placeholder] * length + ids[at:])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    slot_index = torch.empty((len(rows), length), dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, insert_index, strict=True)):
        offset = width - len(row)
        input_ids[i, offset:] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, offset:] = 1
        slot_index[i] = offset + start + torch.arange(length)
    return SlottedBatch(input_ids, attention_mask, slot_index, length)


def fill_slots(embeds: torch.Tensor, slot_index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return `embeds` (B, T, d) with rows[b, j] written at column slot_index[b, j]."""
    if slot_index.shape[1] == 0:
        return embeds
    if rows.shape[:2] != slot_index.shape or rows.shape[2] != embeds.shape[2]:
        got = f"injected rows of shape {tuple(rows.shape)} do not fit slots {tuple(slot_index.shape)}"
        raise ValueError(f"{got} with hidden size {embeds.shape[2]}")
    out = embeds.clone()
    index = slot_index.to(embeds.device).unsqueeze(-1).expand(-1, -1, embeds.shape[2])
    out.scatter_(1, index, rows.to(device=embeds.device, dtype=embeds.dtype))
    return out
