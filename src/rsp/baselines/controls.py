"""Control injections that isolate what about an RSP matters, each registered as an `rsp eval` method.

Importing it registers them and the trained soft prompt, with the facts `rsp sweep` reads; `rsp.methods`
imports it by name (`BUILTIN_PLUGINS`) on the registry's first lookup, never at its own import time.

Every control goes through the same slot code as the RSP (`Injection.apply` -> `fill_slots`), so a
difference in accuracy can only come from *what* is injected, not from where or how. Random controls
derive one seed per attempt (or per problem / run, for the sharing ablations) from their own named
stream, and the seed alone rebuilds the injected tensor, so every attempt is reproducible from its
JSONL record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

import torch

from rsp.baselines.soft_prompt import SoftPromptInjection, load_soft_prompt
from rsp.core.injection import Granularity, Injection
from rsp.core.insert import SlottedBatch
from rsp.core.seeds import derive_seed
from rsp.core.stats import EmbeddingStats
from rsp.methods import MethodOption, RSPConfig, embedding_stats_for, random_soft_prompt, register_method
from rsp.models.loading import ModelBase

log = logging.getLogger(__name__)

DEFAULT_NOISE_ALPHA = 5.0  # NEFTune's smallest published alpha

EmbedFn = Callable[[torch.Tensor], torch.Tensor]


def _require_seeds(name: str, seeds: Sequence[int | None]) -> list[int]:
    if any(s is None for s in seeds):
        raise ValueError(f"{name}: every attempt needs a seed")
    return [int(s) for s in seeds]  # type: ignore[arg-type]


class TokenRows(Injection):
    """L rows of the effective embedding table picked uniformly at random per attempt.

    Tests whether *off-manifold* vectors matter: these are real token embeddings, so they carry
    the table's exact geometry instead of an isotropic Gaussian's.
    """

    name = "token-rows"
    stream = "token-rows"

    def __init__(
        self,
        embed: EmbedFn,
        candidates: torch.Tensor,
        length: int,
        *,
        tokenizer=None,
        position: str = "after_generation_prompt",
    ) -> None:
        super().__init__(length, position)
        self.embed = embed
        self.candidates = candidates.long().cpu()
        self.tokenizer = tokenizer

    def seed_for(self, base_seed: int, problem_id: str, attempt: int) -> int | None:
        return derive_seed(base_seed, self.stream, problem_id, attempt)

    def token_ids(self, seeds: Sequence[int | None]) -> torch.Tensor:
        """(B, L) token ids drawn for these seeds (with replacement, one generator per attempt)."""
        picks = []
        for seed in _require_seeds(self.name, seeds):
            gen = torch.Generator(device="cpu").manual_seed(seed)
            picks.append(self.candidates[torch.randint(len(self.candidates), (self.length,), generator=gen)])
        return torch.stack(picks) if picks else torch.empty(0, self.length, dtype=torch.long)

    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        if self.length == 0:
            return None
        ids = self.token_ids(seeds)
        with torch.no_grad():
            return self.embed(ids).float()

    def text(self, seed: int) -> str:
        """The string the rows of `seed` are the embeddings of (needs the tokenizer)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name}: no tokenizer attached, cannot decode")
        return self.tokenizer.decode(self.token_ids([seed])[0].tolist(), skip_special_tokens=False)


class TokenString(TokenRows):
    """L random real *text* tokens (no special or control tokens): a seed-conditioning-style string.

    Writing a token's embedding row into a slot is exactly what the model computes for that token
    id, so this is the discrete counterpart of an RSP at the same position; `text(seed)` gives the
    string that was effectively inserted.
    """

    name = "token-string"
    stream = "token-string"


class MeanVector(Injection):
    """L copies of the embedding mean: injection with no randomness and no content."""

    name = "mean-vector"

    def __init__(
        self, stats: EmbeddingStats, length: int, *, position: str = "after_generation_prompt"
    ) -> None:
        super().__init__(length, position)
        self.mean = stats.mean_vector()

    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        if self.length == 0:
            return None
        return self.mean.expand(len(seeds), self.length, -1).clone()


class EmbeddingNoise(Injection):
    """NEFTune-style noise on the prompt's own token rows, with no slots appended.

    Noise per entry is uniform(-1, 1) * alpha / sqrt(T * d) * embed_scale, with T the number of real
    (unpadded) prompt tokens: NEFTune's magnitude, expressed in the effective embedding space (for
    Gemma the table is scaled by sqrt(d) before the first block, and the noise is scaled with it).
    Noise is drawn per attempt over the unpadded tokens only, so it does not depend on batching.
    """

    name = "embed-noise"

    def __init__(
        self,
        dim: int,
        *,
        alpha: float = DEFAULT_NOISE_ALPHA,
        embed_scale: float = 1.0,
        position: str = "after_generation_prompt",
    ) -> None:
        super().__init__(0, position)
        if alpha < 0:
            raise ValueError(f"embed-noise: noise_alpha must be >= 0, got {alpha}")
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.embed_scale = float(embed_scale)

    def seed_for(self, base_seed: int, problem_id: str, attempt: int) -> int | None:
        return derive_seed(base_seed, "embed-noise", problem_id, attempt)

    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        return None

    def noise(self, seed: int, tokens: int) -> torch.Tensor:
        """(tokens, d) fp32 noise for one attempt whose prompt has `tokens` real tokens."""
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        magnitude = self.alpha / (tokens * self.dim) ** 0.5 * self.embed_scale
        return (torch.rand(tokens, self.dim, generator=gen, dtype=torch.float32) * 2 - 1) * magnitude

    def transform_prompt(
        self, embeds: torch.Tensor, batch: SlottedBatch, seeds: Sequence[int | None]
    ) -> torch.Tensor:
        out = embeds.clone()
        mask = batch.attention_mask.bool()
        for i, seed in enumerate(_require_seeds(self.name, seeds)):
            cols = mask[i].nonzero(as_tuple=True)[0].to(embeds.device)
            noise = self.noise(seed, len(cols)).to(embeds.device)
            out[i, cols] = (embeds[i, cols].float() + noise).to(embeds.dtype)
        return out


def text_token_pool(tokenizer, vocab_rows: int, *, exclude: Sequence[int] = ()) -> torch.Tensor:
    """Ids of real text tokens: not special, not added/control tokens, decoding to non-empty valid text."""
    size = min(len(tokenizer), vocab_rows)
    banned = set(int(i) for i in exclude)
    banned.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        banned.update(int(i) for i in added().values())
    specials = (getattr(tokenizer, f"{kind}_token_id", None) for kind in ("bos", "eos", "pad", "unk"))
    banned.update(i for i in specials if isinstance(i, int))
    ids = [i for i in range(size) if i not in banned]
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    keep = [i for i, t in zip(ids, texts, strict=True) if t and "\ufffd" not in t]
    if not keep:
        raise ValueError("token-string: the tokenizer has no plain text tokens to draw from")
    return torch.tensor(keep, dtype=torch.long)


def _float_option(o: RSPConfig, key: str, default: float) -> float:
    value = o.method_options.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"method option {key} must be a number, got {value!r}") from None


_SHARED_RSPS: tuple[tuple[str, Granularity, str], ...] = (
    ("rsp-fixed", "run", "one RSP drawn once and reused for every attempt and problem"),
    ("rsp-shared", "problem", "one RSP per problem, shared by its N attempts"),
)
for _name, _granularity, _what in _SHARED_RSPS:
    register_method(_name, f"control: {_what}", per_attempt=False, options=())(
        partial(random_soft_prompt, granularity=_granularity)
    )


@register_method(
    "rsp-scaled",
    "control: RSP with std multiplied by the scale (--rsp-scale or --method-option rsp_scale=)",
    options=(
        MethodOption(
            "rsp_scale",
            "std multiplier, instead of --rsp-scale (a sweep's --rsp-scales grid sets it)",
            metavar="SCALE",
            swept=False,
        ),
    ),
)
def _rsp_scaled(lm: ModelBase, o: RSPConfig) -> Injection:
    scale = _float_option(o, "rsp_scale", o.scale)
    if scale < 0:
        raise ValueError(f"rsp-scaled: rsp_scale must be >= 0, got {scale}")
    return random_soft_prompt(lm, o, scale=scale)


@register_method(
    "token-rows",
    "control: L random rows of the real embedding table per attempt",
    uses_scale=False,
    options=(),
)
def _token_rows(lm: ModelBase, o: RSPConfig) -> Injection:
    rows = min(lm.vocab_rows, len(lm.tokenizer)) if o.stats_rows == "tokens" else lm.vocab_rows
    return TokenRows(lm.embed, torch.arange(rows), o.length, position=o.position)


@register_method(
    "token-string",
    "control: L random real text tokens per attempt (seed-conditioning style)",
    uses_scale=False,
    options=(),
)
def _token_string(lm: ModelBase, o: RSPConfig) -> Injection:
    pool = text_token_pool(lm.tokenizer, lm.vocab_rows, exclude=(*lm.stop_token_ids, lm.pad_token_id))
    return TokenString(lm.embed, pool, o.length, tokenizer=lm.tokenizer, position=o.position)


@register_method(
    "embed-noise",
    "control: NEFTune-style noise on the prompt's own embeddings, nothing appended "
    "(--method-option noise_alpha=, default 5)",
    uses_length=False,
    uses_scale=False,
    options=(
        MethodOption(
            "noise_alpha",
            f"NEFTune's alpha, the noise magnitude (default {DEFAULT_NOISE_ALPHA:g})",
            metavar="A",
        ),
    ),
)
def _embed_noise(lm: ModelBase, o: RSPConfig) -> Injection:
    return EmbeddingNoise(
        lm.hidden_size,
        alpha=_float_option(o, "noise_alpha", DEFAULT_NOISE_ALPHA),
        embed_scale=lm.embed_scale,
        position=o.position,
    )


@register_method(
    "mean-vector",
    "control: L copies of the mean embedding (injection without randomness)",
    uses_scale=False,
    per_attempt=False,
    options=(),
)
def _mean_vector(lm: ModelBase, o: RSPConfig) -> Injection:
    return MeanVector(embedding_stats_for(lm, o), o.length, position=o.position)


@register_method(
    "soft-prompt",
    "baseline: trained soft prompt (--method-option soft_prompt=FILE.safetensors "
    "or a PEFT prompt-tuning adapter dir); L and position come from the file",
    category="trained",
    uses_length=False,
    uses_scale=False,
    per_attempt=False,
    options=(
        MethodOption(
            "soft_prompt",
            "a file from `rsp train-soft-prompt` or a PEFT prompt-tuning adapter",
            required=True,
            metavar="PATH",
        ),
        MethodOption(
            "soft_prompt_position",
            "insertion point, instead of the one the file was trained at",
            metavar="POS",
        ),
    ),
    length_of=lambda o: load_soft_prompt(o.method_options["soft_prompt"]).length,
)
def _soft_prompt(lm: ModelBase, o: RSPConfig) -> Injection:
    path = o.method_options.get("soft_prompt")
    if not path:
        what = "a file from `rsp train-soft-prompt` or a PEFT prompt-tuning adapter"
        raise ValueError(f"soft-prompt needs --method-option soft_prompt=PATH ({what})")
    soft = load_soft_prompt(path)
    position = str(o.method_options.get("soft_prompt_position", soft.position))
    if position != soft.position:
        log.warning("soft prompt %s was trained at %s but is evaluated at %s", path, soft.position, position)
    soft.check_compatible(lm)
    return SoftPromptInjection(soft.vectors, position=position)
