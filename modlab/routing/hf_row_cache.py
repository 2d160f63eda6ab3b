"""A per-row KV cache layer for a routed full-attention layer of a transformers model (5.x).

transformers' DynamicLayer grows every row of the batch by the same number of slots per call. A
routed layer keeps different tokens per row, so with it rows that ran nothing had to write a
dummy slot, and a decode step had to run the layer on every row and mask it afterwards.
`RowKVLayer` instead keeps, like modlab's own cache (modlab.models.kv_cache), a padded buffer per
layer with each row's entry count and the original position of each entry:

- a prefill writes each row's kept tokens compactly (slots 0 .. k_b - 1);
- a decode step (`select(rows)`, then the attention's usual `update`) writes the new token of
  the rows that run the layer at slot length[b] and returns those rows' keys and values; the
  routed layer masks them by length (`step_mask`), so nothing is built per entry or per row and
  nothing waits on the device (the attended span is a host-side upper bound, grown by one per
  step in which some row ran).

It stands in for the DynamicLayer in the model's DynamicCache (`RowKVLayer.install`), so every
other layer and transformers' own mask sizing (layers that are never routed) are untouched.
Sliding-window layers keep transformers' DynamicSlidingWindowLayer (the routed layer's older,
slot-by-slot path), which trims to the window.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class RowKVLayer(DynamicLayer):
    """Keys and values (B, H, slots, head_dim) with each row's entry count and entry positions."""

    def __init__(self):
        super().__init__()
        self.length: torch.Tensor | None = None  # (B,) entries per row
        self.positions: torch.Tensor | None = None  # (B, slots) original position of each entry
        self.span = 0  # host-side upper bound of length.max()
        self._rows: torch.Tensor | None = None  # the rows of the next decode step (None: all)
        self._write: tuple[torch.Tensor, torch.Tensor] | None = None  # (slot_ok, positions) of the next write
        self._step_positions: torch.Tensor | None = None  # (n,) positions of a decode step's tokens

    @staticmethod
    def install(cache, layer_idx: int) -> RowKVLayer | None:
        """The cache's layer `layer_idx` as a RowKVLayer, replacing an empty full-attention
        DynamicLayer (or appending to a lazily grown cache); None where the layer is another kind
        (a sliding window, a static cache: left as it is)."""
        layers = getattr(cache, "layers", None)
        if layers is None:
            return None
        if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
            while len(layers) < layer_idx:
                layers.append(DynamicLayer())
            if len(layers) == layer_idx:
                layers.append(RowKVLayer())
        if layer_idx >= len(layers):
            return None
        layer = layers[layer_idx]
        if isinstance(layer, RowKVLayer):
            return layer
        if type(layer) is DynamicLayer and not layer.is_initialized:
            layers[layer_idx] = RowKVLayer()
            return layers[layer_idx]
        return None

    # ---- what the routed layer says before calling the wrapped layer --------------------------

    def select(self, rows: torch.Tensor | None, positions: torch.Tensor) -> None:
        """The next update is a decode step of these rows (one new token each; None: every row)
        at these original positions (n,)."""
        self._rows, self._write, self._step_positions = rows, None, positions

    def expect(self, slot_ok: torch.Tensor, positions: torch.Tensor) -> None:
        """The next update brings (B, K) tokens, of which the `slot_ok` ones are real (stored)."""
        self._rows, self._write = None, (slot_ok, positions)

    def step_mask(self, rows: torch.Tensor | None, attn_implementation: str, dtype: torch.dtype):
        """The mask of a decode step of `rows` over the span it will return, (n, 1, 1, span + 1):
        each row's entries and its new token. None for a batch of one row (every slot is real)."""
        length = self.length if rows is None else self.length[rows]
        if self.length.shape[0] == 1:
            return None
        allowed = (torch.arange(self.span + 1, device=length.device) <= length[:, None])[:, None, None, :]
        if attn_implementation == "sdpa":
            return allowed
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=length.device), torch.finfo(dtype).min)

    # ---- transformers' cache-layer interface --------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._write is None:
            return self._step(key_states, value_states, self._rows)
        slot_ok, positions = self._write
        self._write = None
        return self._extend(key_states, value_states, slot_ok, positions)

    def _step(self, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None):
        n = k.shape[0]
        L = self.span + 1
        self._reserve(k, L)
        at = torch.arange(n, device=k.device) if rows is None else rows
        length = self.length[at]
        self.keys[at, :, length] = k[:, :, 0]
        self.values[at, :, length] = v[:, :, 0]
        self.positions[at, length] = self._step_positions
        self.length = self.length.index_add(0, at, torch.ones_like(length))
        self.span = L
        if rows is None:
            return self.keys[:, :, :L], self.values[:, :, :L]
        return self.keys[rows, :, :L], self.values[rows, :, :L]

    def _extend(self, k: torch.Tensor, v: torch.Tensor, slot_ok: torch.Tensor, positions: torch.Tensor):
        """Store the slot_ok tokens of (B, H, K, D) after each row's entries; return what the
        call attends to: the keys as given with no past, else the past span and them."""
        B, K = slot_ok.shape
        before_span = self.span
        if self.length is None:
            self.length = torch.zeros(B, dtype=torch.long, device=k.device)
        before = self.length
        self.length = before + slot_ok.sum(1)
        self.span = max(int(self.length.max()), before_span)
        past_keys = self.keys[:, :, :before_span] if before_span else None
        past_values = self.values[:, :, :before_span] if before_span else None
        self._reserve(k, self.span)
        rows, cols = slot_ok.nonzero(as_tuple=True)
        slots = (before[:, None] + slot_ok.cumsum(1) - 1)[rows, cols]
        self.keys[rows, :, slots] = k[rows, :, cols]
        self.values[rows, :, slots] = v[rows, :, cols]
        self.positions[rows, slots] = positions[rows, cols]
        if past_keys is None:
            return k, v
        return torch.cat([past_keys, k], -2), torch.cat([past_values, v], -2)

    def _reserve(self, k: torch.Tensor, n: int) -> None:
        """Room for n slots per row; the buffer doubles when full (zeros: masked, still multiplied)."""
        have = self.keys.shape[2] if isinstance(self.keys, torch.Tensor) and self.keys.dim() == 4 else 0
        if n <= have:
            return
        B, H, D = self.length.shape[0], k.shape[1], k.shape[3]
        size = max(n, 2 * have, 64)
        keys, values = k.new_zeros(B, H, size, D), k.new_zeros(B, H, size, D)
        positions = torch.zeros(B, size, dtype=torch.long, device=k.device)
        if have:
            keys[:, :, :have], values[:, :, :have] = self.keys, self.values
            positions[:, :have] = self.positions
        self.keys, self.values, self.positions = keys, values, positions

    def past(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(positions, holds a token), each (B, span), of the slots a call attends to; None when empty."""
        if self.length is None or self.span == 0:
            return None
        slots = torch.arange(self.span, device=self.length.device)
        return self.positions[:, : self.span], slots[None] < self.length[:, None]

    def reset(self) -> None:
        super().reset()
        self.length, self.positions, self.span = None, None, 0

    def get_seq_length(self) -> int:
        """Entries of the row that holds most (a batch of one: the entries the layer holds)."""
        return int(self.length.max()) if self.length is not None else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.span + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a routed layer's per-row KV cache cannot be cropped")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a routed layer's per-row KV cache cannot be repeated")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a routed layer's per-row KV cache cannot be re-indexed")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("a routed layer's per-row KV cache cannot be reordered (beam search)")
