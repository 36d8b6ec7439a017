"""A KV cache that reserves room for the whole decode up front (local_sampler.py's cache).

transformers' DynamicCache grows each layer's keys and values by concatenation, so every
decode step copies the whole cache once per layer (~5 ms of a ~45 ms step at batch 8 on the
default model, bench/RESULTS.md). `reserved_cache(config, capacity)` is a DynamicCache whose
layers write new keys/values into buffers sized for `capacity` tokens and hand attention a
view of the filled part: the same tensors' values, no copy per step. A layer that outgrows its
buffer reallocates (doubling), so a wrong capacity costs time, never correctness.
Models with sliding-window or other special layers keep transformers' own layers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

ENABLED = True  # False: transformers' growing DynamicCache (for A/B measurements)


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into buffers with room to grow."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._k is None or end > self._k.shape[-2]:
            self._grow(key_states, value_states, max(end, self.capacity, 2 * self.length))
        self._k[..., self.length:end, :] = key_states
        self._v[..., self.length:end, :] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _grow(self, like_k: torch.Tensor, like_v: torch.Tensor, size: int) -> None:
        k = like_k.new_empty((*like_k.shape[:-2], size, like_k.shape[-1]))
        v = like_v.new_empty((*like_v.shape[:-2], size, like_v.shape[-1]))
        if self.length:
            k[..., :self.length, :] = self._k[..., :self.length, :]
            v[..., :self.length, :] = self._v[..., :self.length, :]
        self._k, self._v = k, v

    def _views(self) -> None:
        self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self._k, self._v = self._k[indices, ...], self._v[indices, ...]
            self._views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.length:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()
        else:
            super().crop(tokens_to_remove)

    def reset(self) -> None:
        self._k = self._v = None
        self.length = 0
        super().reset()


def reserved_cache(config: Any, capacity: int) -> DynamicCache:
    """An empty cache for up to `capacity` tokens a row (plain DynamicCache layers where the
    model's layers are not plain full-attention ones)."""
    cache = DynamicCache(config=config)
    if ENABLED and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [ReservedLayer(capacity) for _ in cache.layers]
    return cache
