"""Injection methods: what goes into the slots of a prompt (or onto its rows) for each attempt. From an
attempt's seed alone the injected tensor can be rebuilt, so analysis and RL log-prob recomputation
reproduce an attempt exactly from its JSONL record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import torch

from rsp.core.insert import INSERTION_POINTS, SlottedBatch, fill_slots
from rsp.core.sampler import RSPSampler
from rsp.core.seeds import derive_seed
from rsp.core.stats import EmbeddingStats

Granularity = Literal["attempt", "problem", "run"]


class Injection(ABC):
    """Base class: subclasses provide rows for the slots and/or a transform of the prompt rows."""

    name: str = "injection"

    def __init__(self, length: int, position: str = "after_generation_prompt") -> None:
        if length < 0:
            raise ValueError(f"injection length must be >= 0, got {length}")
        if position not in INSERTION_POINTS:
            raise ValueError(
                f"unknown insertion point {position!r}; choose from {', '.join(INSERTION_POINTS)}"
            )
        self.length = int(length)
        self.position = position

    def seed_for(self, base_seed: int, problem_id: str, attempt: int) -> int | None:
        """Seed that determines this attempt's injected tensor (None when nothing is random)."""
        return None

    @abstractmethod
    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        """Rows to write into the slots, (B, L, d) fp32, or None when L == 0."""

    def transform_prompt(
        self, embeds: torch.Tensor, batch: SlottedBatch, seeds: Sequence[int | None]
    ) -> torch.Tensor:
        """Hook for controls that perturb the prompt's own rows; identity by default."""
        return embeds

    @property
    def changes_prompt_rows(self) -> bool:
        """True when the injection perturbs the prompt's own token rows (`transform_prompt` overridden):
        such a prompt can be neither shared across attempts nor sent to an engine as token ids."""
        return type(self).transform_prompt is not Injection.transform_prompt

    @property
    def active(self) -> bool:
        """Whether it changes anything: slots to fill, or the prompt's own rows."""
        return self.length > 0 or self.changes_prompt_rows

    def apply(self, embeds: torch.Tensor, batch: SlottedBatch, seeds: Sequence[int | None]) -> torch.Tensor:
        embeds = self.transform_prompt(embeds, batch, seeds)
        if batch.length == 0:
            return embeds
        rows = self.rows(seeds)
        if rows is None:
            raise RuntimeError(f"{self.name}: batch has {batch.length} slots but the injection gave no rows")
        return fill_slots(embeds, batch.slot_index, rows)


class NoInjection(Injection):
    """Plain prompting: no slots at all (identical to L = 0)."""

    name = "none"

    def __init__(self, position: str = "after_generation_prompt") -> None:
        super().__init__(0, position)

    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        return None


class RandomSoftPrompt(Injection):
    """The paper's method: L vectors from N(mean, (scale*std)^2 I) fitted to the embedding table, drawn
    anew per attempt (the default), per problem, or once per run (`granularity`)."""

    name = "rsp"

    def __init__(
        self,
        stats: EmbeddingStats,
        length: int,
        *,
        scale: float = 1.0,
        position: str = "after_generation_prompt",
        granularity: Granularity = "attempt",
        name: str | None = None,
    ) -> None:
        super().__init__(length, position)
        if granularity not in ("attempt", "problem", "run"):
            raise ValueError(f"granularity must be attempt, problem or run, got {granularity!r}")
        self.sampler = RSPSampler(stats, length, scale)
        self.scale = float(scale)
        self.granularity = granularity
        if name:
            self.name = name

    def seed_for(self, base_seed: int, problem_id: str, attempt: int) -> int | None:
        if self.granularity == "attempt":
            return derive_seed(base_seed, "rsp", problem_id, attempt)
        if self.granularity == "problem":
            return derive_seed(base_seed, "rsp", problem_id)
        return derive_seed(base_seed, "rsp-run")

    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        if self.length == 0:
            return None
        if any(s is None for s in seeds):
            raise ValueError("every RSP attempt needs a seed")
        return self.sampler.sample([int(s) for s in seeds])  # type: ignore[arg-type]
