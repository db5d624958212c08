"""A lean decode loop: model forward + KV cache, no `generate()` machinery per step.

Why: `generate()` re-validates configs and rebuilds processors and inputs on every step, a large share of
a small model's CPU step. Greedy output matches `HFEngine` token for token; sampling uses the same
warpers in transformers' order and `torch.multinomial`, so it is the same distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rsp.core.injection import Injection
from rsp.core.inputs import positions_from_mask
from rsp.core.insert import PromptTokens
from rsp.engines.base import Completion, SamplingConfig
from rsp.engines.hf import HFEngine
from rsp.engines.hook import BANNED_LOGIT
from rsp.engines.kvcache import growing_cache
from rsp.engines.packed import WeightPacker


def build_warpers(sampling: SamplingConfig):
    """The logits warpers `generate()` would apply for these settings, in the same order."""
    warpers = LogitsProcessorList()
    if sampling.greedy:
        return warpers
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    if sampling.min_p:
        warpers.append(MinPLogitsWarper(sampling.min_p))
    return warpers


class LeanEngine(HFEngine):
    """`HFEngine` with the hand-written decode loop instead of `generate()` (same interface).
    `compact=False` keeps finished rows like `generate` (sampled tokens then match it row for row);
    `pack_weights` runs bf16 CPU linears on prepacked oneDNN weights (`rsp.engines.packed`);
    `preallocate_cache` appends into reserved KV room (`rsp.engines.kvcache`). All keep outputs unchanged."""

    def __init__(
        self,
        lm,
        *,
        min_batch_size: int = 1,
        compact: bool = True,
        pack_weights: bool = True,
        preallocate_cache: bool = True,
    ) -> None:
        super().__init__(lm, min_batch_size=min_batch_size)
        self.compact = compact
        self.pack_weights = pack_weights
        self.preallocate_cache = preallocate_cache
        self.packer = WeightPacker()
        self.last_batch_sizes: list[
            int
        ] = []  # rows of each decode forward pass of the last batch (benchmarks)

    def generate(
        self, prompts, injection, seeds, sampling, *, decode_seed, stop_strings=()
    ) -> list[Completion]:
        with self.packer.applied(self.lm.model) if self.pack_weights else nullcontext():
            return super().generate(
                prompts, injection, seeds, sampling, decode_seed=decode_seed, stop_strings=stop_strings
            )

    def new_cache(self, reserve: int):
        """An empty KV cache; `reserve` is how many positions to leave room for beyond the first fill."""
        config = self.lm.config
        return growing_cache(config, reserve) if self.preallocate_cache else DynamicCache(config=config)

    @torch.no_grad()
    def _decode(
        self, logits, cache, mask, next_position, sampling: SamplingConfig, stop_strings
    ) -> list[Completion]:
        """Sample up to max_new_tokens per row from last-position `logits` (B, V) and a filled cache
        (`mask` covers it; `next_position` (B,) is the first new token's position id). Rows stop at a stop
        token (kept) or a stop string; finished rows get the pad id. With `compact`, finished rows leave the
        cache, so later steps run on live rows only: greedy output is unchanged, sampling has the same
        distribution but draws other numbers than `generate`. The placeholder is never sampled."""
        lm = self.lm
        warpers = build_warpers(sampling)
        batch, device, pad = logits.shape[0], logits.device, lm.pad_token_id
        stops = torch.tensor(list(lm.stop_token_ids), device=device, dtype=torch.long)
        out = torch.full((batch, sampling.max_new_tokens), pad, dtype=torch.long, device=device)
        live = torch.arange(batch, device=device)  # original row index of each row still in the batch
        done = torch.zeros(batch, dtype=torch.bool, device=device)  # per live row (only used without compact)
        positions = next_position.to(device).long().unsqueeze(1)
        mask = mask.to(device)
        self.last_batch_sizes = []
        for step in range(sampling.max_new_tokens):
            scores = logits.float()
            scores[:, [lm.placeholder_id]] = BANNED_LOGIT
            if sampling.greedy:
                token = scores.argmax(-1)
            else:
                scores = warpers(out[live, :step], scores)
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            token = torch.where(done, torch.full_like(token, pad), token)
            out[live, step] = token
            finished = done | torch.isin(token, stops)
            if stop_strings:
                for i, row in enumerate(live.tolist()):
                    if not finished[i]:
                        text = lm.tokenizer.decode(out[row, : step + 1].tolist(), skip_special_tokens=True)
                        finished[i] = any(s in text for s in stop_strings)
            if bool(finished.all()) or step == sampling.max_new_tokens - 1:
                break
            if self.compact and bool(finished.any()):
                keep = (~finished).nonzero().squeeze(1)
                live, token, mask, positions = live[keep], token[keep], mask[keep], positions[keep]
                cache.batch_select_indices(keep)
                done = done[keep]
            else:
                done = finished
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1)
            self.last_batch_sizes.append(int(token.shape[0]))
            result = lm.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache = result.past_key_values
            logits = result.logits[:, -1, :]
            positions = positions + 1
        return [self._finish(row, sampling, stop_strings) for row in out[:, : step + 1].cpu().tolist()]

    def _prefill(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        """One forward pass over prompt embeddings into `cache`. logits_to_keep=1: only the last position's
        logits are used (as in generate()); all (B, P, vocab) would be a fifth of SmolLM2's prefill."""
        return self.lm.model(
            inputs_embeds=embeds.to(self.lm.device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )

    @torch.no_grad()
    def _generate_batch(
        self, prompts: Sequence[PromptTokens], injection: Injection, seeds, sampling, stop_strings
    ) -> list[Completion]:
        batch, embeds = self.prepare(prompts, injection, seeds)
        mask = batch.attention_mask.to(self.lm.device)
        pos = positions_from_mask(mask)
        result = self._prefill(embeds, mask, pos, self.new_cache(sampling.max_new_tokens))
        return self._decode(
            result.logits[:, -1, :], result.past_key_values, mask, pos[:, -1] + 1, sampling, stop_strings
        )
