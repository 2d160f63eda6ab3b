"""The KV cache of modlab's own transformer (modlab.models.transformer.Attention).

Each layer keeps its own entries, and each row of the batch its own number of them: a routed
layer (modlab.routing.routed_block) stores the K/V of the tokens that ran it and nothing for a
token that skipped it, so rows that routed differently hold different counts (the compact
cache); padding stores nothing either. Row b's entries fill slots [0, length[b]) of a padded
buffer, in the order they were written (causal order).

Decoding is causal: everything cached precedes the tokens of a new call and is a real key, so a
new query sees all of its row's entries, plus those of the call's own tokens that the call's
mask allows (the same mask as without a cache, e.g. causal among a prefill's tokens).

A one-token decode step (`LayerKV.step`, and `LayerKV.rows(rows).step` for the rows that run a
routed layer) writes each row's new entry at slot length[b] and masks by lengths alone: no
nonzero / cumsum / per-row mask scatter, and no host sync (the attended span is a host-side upper
bound of the longest row, grown by one per step; slots past a row's length are masked out).
"""

from __future__ import annotations

import torch


class LayerKV:
    """One layer's keys and values, (B, H, slots, head_dim), with each row's entry count. The
    buffer doubles when full (torch.cat on every decode step would copy the whole cache per token)."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length: torch.Tensor | None = None  # (B,) entries per row; None before the first write
        self.span = 0  # host-side upper bound of length.max(): the slots a decode step attends over

    def extend(
        self, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store the K/V (B, H, T, head_dim) of this call's `keep` tokens (B, T; None: all) after
        each row's entries; return the keys and values the call's queries attend to, (B, H, L,
        head_dim), and their mask (B, 1, T, L): the row's earlier entries, and of this call's
        kept tokens those that `attn_mask` (B or 1, 1, T, T) allows."""
        B, H, T, D = k.shape
        if keep is None:
            keep = torch.ones(B, T, dtype=torch.bool, device=k.device)
        before = self.length if self.length is not None else torch.zeros(B, dtype=torch.long, device=k.device)
        self.length = before + keep.sum(1)
        L = max(int(self.length.max()), 1)  # at least one slot, so no query has an empty softmax
        self.span = L
        self._reserve(k, v, L)
        rows, cols = keep.nonzero(as_tuple=True)
        slots = (before[:, None] + keep.cumsum(1) - 1)[rows, cols]  # each kept token's slot in its row
        self.k[rows, :, slots] = k[rows, :, cols]
        self.v[rows, :, slots] = v[rows, :, cols]
        mask = (torch.arange(L, device=k.device) < before[:, None])[:, None, None, :].repeat(1, 1, T, 1)
        mask[rows, :, :, slots] = attn_mask.expand(B, 1, T, T)[rows, :, :, cols]
        # a query that may see no key (a token that stores nothing, in a row with no entry yet:
        # an unused slot of a routed call) looks at slot 0, which holds finite values: its output
        # is thrown away, but a NaN would leak through the zero weight that discards it
        alone = ~mask.any(-1)
        mask[..., 0] |= alone
        return self.k[:, :, :L], self.v[:, :, :L], mask

    def step(
        self, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token per row, (n, H, 1, head_dim), for `rows` (n,) of the batch (None: all):
        the same as `extend` with a (1, 1) mask, without its per-token bookkeeping. `keep` (n, 1):
        which of them store their K/V (None: all). Returns the keys and values the rows attend
        to, (n, H, L, head_dim), and their mask (n, 1, 1, L)."""
        n, H, _, D = k.shape
        if self.length is None:
            B = n if rows is None else None
            if B is None:
                raise ValueError("a row subset cannot start a layer's cache")
            self.length = torch.zeros(B, dtype=torch.long, device=k.device)
        L = self.span + 1  # no row grows by more than one entry
        self._reserve(k, v, L)
        length = self.length if rows is None else self.length[rows]
        at = torch.arange(n, device=k.device) if rows is None else rows
        self.k[at, :, length] = k[:, :, 0]  # a row that does not keep it writes past its length: unseen
        self.v[at, :, length] = v[:, :, 0]
        new = length + (1 if keep is None else keep[:, 0].long())
        if rows is None:
            self.length = new
        else:
            self.length = self.length.index_copy(0, rows, new)
        self.span = L
        slots = torch.arange(L, device=k.device)
        # a row with no entry at all (it stored nothing yet) looks at slot 0: finite, output discarded
        mask = (slots < new[:, None]) | ((slots == 0) & (new == 0)[:, None])
        if rows is None:
            keys, values = self.k[:, :, :L], self.v[:, :, :L]
        else:
            keys, values = self.k[rows, :, :L], self.v[rows, :, :L]
        return keys, values, mask[:, None, None, :]

    def rows(self, rows: torch.Tensor) -> LayerKVRows:
        """This layer's cache as seen by a call on `rows` of the batch only (a routed layer's decode step)."""
        return LayerKVRows(self, rows)

    def _reserve(self, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        """Room for n slots per row. Zeros, not empty memory: slots past a row's entries are
        masked out, but still multiplied by their zero attention weight."""
        have = self.k.shape[2] if self.k is not None else 0
        if n <= have:
            return
        size = max(n, 2 * have, 64)
        B = self.length.shape[0]  # the whole batch (a decode step may bring a subset of its rows)
        grown_k = k.new_zeros(B, k.shape[1], size, k.shape[3])
        grown_v = v.new_zeros(B, v.shape[1], size, v.shape[3])
        if self.k is not None:
            grown_k[:, :, :have] = self.k
            grown_v[:, :, :have] = self.v
        self.k, self.v = grown_k, grown_v


class LayerKVRows:
    """A LayerKV restricted to some rows of the batch: what the rows that run a routed layer's
    decode step read and write (the others keep their entries untouched)."""

    def __init__(self, layer: LayerKV, rows: torch.Tensor):
        self.layer, self.index = layer, rows

    def step(self, k, v, keep=None, rows=None):
        return self.layer.step(k, v, keep, self.index)

    def extend(self, k, v, attn_mask, keep=None):
        if k.shape[2] != 1:
            raise ValueError("a row subset of a KV cache takes one-token decode steps only")
        return self.layer.step(k, v, keep, self.index)


class KVCache:
    """Per-layer caches plus the number of tokens seen (the next position of unpadded rows)."""

    def __init__(self, n_layer: int):
        self.layers = [LayerKV() for _ in range(n_layer)]
        self.length = 0

    def entries(self) -> list[int]:
        """Entries per layer of the row that holds most (rows of a dense causal LM hold the same
        number; 0 for a layer whose attention never ran)."""
        return [int(layer.length.max()) if layer.length is not None else 0 for layer in self.layers]

    def row_entries(self) -> list[torch.Tensor | None]:
        """(B,) entries per row, per layer (None for a layer whose attention never ran)."""
        return [layer.length for layer in self.layers]

    def entry_bytes(self) -> int:
        """Bytes of the K/V entries held (not the padded buffers around them)."""
        total = 0
        for layer in self.layers:
            if layer.length is not None:
                H, D = layer.k.shape[1], layer.k.shape[3]
                total += int(layer.length.sum()) * 2 * H * D * layer.k.element_size()
        return total
