"""A KV cache that writes new keys/values into preallocated room instead of re-concatenating.

Why: transformers' `DynamicLayer.update` copies the whole cache (`torch.cat`) in every layer at every
decode step, about a tenth of a batch-32 SmolLM2 step on the CPU. Here each layer keeps a buffer with
room to spare and hands attention a view of the filled part: the same values and shapes, so outputs are
unchanged (unlike a static cache). Sliding-window layers keep transformers' own class.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` with amortised appends: buffers grow by `reserve` positions when full."""

    def __init__(self, reserve: int = 128) -> None:
        super().__init__()
        self.reserve = max(1, int(reserve))
        self._kbuf = self._vbuf = torch.empty(0, 0)  # no room yet: the first update grows them
        self._len = 0

    def _views(self) -> None:
        self.keys = self._kbuf[..., : self._len, :]
        self.values = self._vbuf[..., : self._len, :]

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        capacity = needed + self.reserve
        k = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        v = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if self._len:
            k[..., : self._len, :] = self._kbuf[..., : self._len, :]
            v[..., : self._len, :] = self._vbuf[..., : self._len, :]
        self._kbuf, self._vbuf = k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._len + new > self._kbuf.shape[-2]:
            self._grow(key_states, value_states, self._len + new)
        self._kbuf[..., self._len : self._len + new, :] = key_states
        self._vbuf[..., self._len : self._len + new, :] = value_states
        self._len += new
        self._views()
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:  # legacy meaning: the final absolute length
            tokens_to_remove = max(0, self._len - tokens_to_remove)
        self._len = max(0, self._len - abs(tokens_to_remove))
        if self.is_initialized:
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._len:
            self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
            self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._len:
            self._kbuf = self._kbuf[indices, ...]
            self._vbuf = self._vbuf[indices, ...]
            self._views()


def growing_cache(config, reserve: int) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers are `GrowingLayer`s."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
