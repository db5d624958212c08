"""The interface every generation engine implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rsp.core.injection import Injection
from rsp.core.insert import PromptTokens


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings. temperature 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256

    def validate(self) -> None:
        for ok, name, rule in (
            (self.temperature >= 0, "temperature", ">= 0"),
            (0 < self.top_p <= 1, "top_p", "in (0, 1]"),
            (self.top_k >= 0, "top_k", ">= 0"),
            (0 <= self.min_p < 1, "min_p", "in [0, 1)"),
            (self.max_new_tokens >= 1, "max_new_tokens", ">= 1"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str  # "stop" (EOS / stop string) or "length"
    # The stop token that ended generation (dropped from token_ids), or None: ended on a stop string
    # (the text is cut there, the ids end with the token that completed it) or at max_new_tokens.
    # Trainers append it to learn when to stop; the server scores it as the last completion token.
    stop_token: int | None = None


class Engine(Protocol):
    """Generate one completion per prompt; row i gets the injection drawn from seeds[i]."""

    oom_events: list[str]  # out-of-memory back-offs taken so far (reported with a run's results)

    def generate(
        self,
        prompts: Sequence[PromptTokens],
        injection: Injection,
        seeds: Sequence[int | None],
        sampling: SamplingConfig,
        *,
        decode_seed: int,
        stop_strings: Sequence[str] = (),
    ) -> list[Completion]: ...


def cut_at_stop_token(tokens: Sequence[int], stop_token_ids: Sequence[int]) -> tuple[list[int], int | None]:
    """The tokens before the first stop token, and that token (None when there is none; it is dropped)."""
    stops = set(stop_token_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return list(tokens[:i]), int(t)
    return list(tokens), None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two completions share (where two engines' greedy outputs part ways)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
