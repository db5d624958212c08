"""Prefix-shared branching: prefill each distinct prompt once, then branch its cache N ways.

Why: the N attempts at a problem differ only in their injected rows, so the tokens before the insertion
point give the same keys/values in every attempt; computing them once divides the prefill cost by about
N. Layout per row: [left pad | shared prefix | pad | slots + rest of prompt | new tokens], with zeros in
the mask's gap and positions counted over attended tokens, so each row sees what the unshared batch sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rsp.core.injection import Injection
from rsp.core.inputs import positions_from_mask
from rsp.core.insert import PromptTokens, build_slotted_batch
from rsp.engines.base import Completion
from rsp.engines.lean import LeanEngine


def has_sliding_layers(model: torch.nn.Module) -> bool:
    """Sliding-window masks count cache columns, so a padding gap would shift the window."""
    cfg = getattr(model, "config", None)
    layer_types = getattr(cfg, "layer_types", None) or ()
    return any("sliding" in str(t) for t in layer_types) or bool(
        getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and layer_types
    )


class PrefixEngine(LeanEngine):
    """Same interface and results as `HFEngine`, with one prompt prefill per distinct prompt; the unshared
    lean loop where nothing can be shared (prepend, injections that rewrite prompt rows, sliding windows)."""

    last_shared = False  # whether the last batch was shared, and over how many prompt prefills
    last_prefill_rows = 0

    def can_share(self, injection: Injection) -> bool:
        return (
            injection.position != "prepend"
            and not injection.changes_prompt_rows
            and not has_sliding_layers(self.lm.model)
        )

    @torch.no_grad()
    def _generate_batch(
        self, prompts: Sequence[PromptTokens], injection: Injection, seeds, sampling, stop_strings
    ) -> list[Completion]:
        length = injection.length
        cuts: list[tuple[int, int]] = []  # (shared prefix length, slot offset within the tail)
        for p in prompts if self.can_share(injection) else ():
            at = p.insert_index(injection.position)
            share = at if (length > 0 or at < len(p.ids)) else at - 1  # keep >= 1 token for the logits
            cuts.append((share, at - share))
        self.last_shared = bool(cuts) and min(share for share, _ in cuts) > 0
        if not self.last_shared:
            return super()._generate_batch(prompts, injection, seeds, sampling, stop_strings)

        groups: dict[tuple[int, ...], int] = {}
        row_group = [
            groups.setdefault(tuple(p.ids[:share]), len(groups))
            for p, (share, _) in zip(prompts, cuts, strict=True)
        ]
        prefixes, pad = list(groups), self.lm.pad_token_id
        prefix_batch = build_slotted_batch(prefixes, [len(x) for x in prefixes], 0, pad_id=pad)
        tails = [p.ids[share:] for p, (share, _) in zip(prompts, cuts, strict=True)]
        tail_batch = build_slotted_batch(tails, [off for _, off in cuts], length, pad_id=pad)

        device = self.lm.device
        select = torch.tensor(row_group, dtype=torch.long, device=device)
        prefix_mask = prefix_batch.attention_mask.to(device)
        cache = self.new_cache(tail_batch.input_ids.shape[1] + sampling.max_new_tokens)
        prefix_embeds = self.lm.embed(prefix_batch.input_ids)
        self._prefill(prefix_embeds, prefix_mask, positions_from_mask(prefix_mask), cache)
        cache.batch_select_indices(select)
        mask = torch.cat([prefix_mask.index_select(0, select), tail_batch.attention_mask.to(device)], dim=1)
        pos = positions_from_mask(mask)
        tail_embeds = injection.apply(self.lm.embed(tail_batch.input_ids), tail_batch, seeds)
        result = self._prefill(tail_embeds, mask, pos[:, prefix_mask.shape[1] :], cache)
        self.last_prefill_rows = len(prefixes)
        return self._decode(
            result.logits[:, -1, :], result.past_key_values, mask, pos[:, -1] + 1, sampling, stop_strings
        )
