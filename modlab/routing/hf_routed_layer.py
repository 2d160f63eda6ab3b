"""Mixture-of-Depths / UniMoD token routing inside Hugging Face decoder layers (transformers 5.x).

`HFRoutedLayer` wraps one transformers decoder layer and gives it the semantics of modlab's own
`RoutedBlock` (it *is* a RoutedBlock, so `routed_blocks`, `threshold_routing`, capacity annealing
and modlab.routing.trace.record_routing work on HF models unchanged):

    each row keeps its k = ceil(C * n_valid) top-scoring valid tokens (padding never), sorted, and
    only those run the original layer:   y_i = x_i + w_i * (layer(x_sel)_i - x_i),   x_i elsewhere.

What the layer needs for the kept tokens is gathered from what the model hands it: the hidden
states, `position_ids` and the model-level RoPE `position_embeddings` (cos, sin) at the kept
*original* positions, and the 4D attention mask sliced on query rows and key columns. Slicing the
model's own mask keeps its semantics among the kept tokens: causal order, padding and, for
sliding-window layers (Gemma 2/3, Mistral, Qwen), the window measured in original positions (a
kept token never sees a kept token `window` or more positions back, however few tokens were kept
between them). When the model passes no mask (SDPA's causal fast path: no padding, window longer
than the sequence) the wrapper builds the same causal / windowed mask from the kept positions, or
passes None again when every row kept the same number of tokens (sorted kept tokens under
`is_causal` are causal in original order, and SDPA keeps its fast kernel).

The weight w is RoutedBlock's: the straight-through sigmoid (forward value exactly 1, the
sigmoid's gradient) by default. It is applied as y + (w - 1) * (y - x) rather than x + w * (y - x):
the same function and gradients, but with w == 1 the forward value is the layer's own output bit
for bit, so at capacity 1 the routed model *is* the unmodified model in fp32.

Which tokens are padding is read from the mask the layer receives (a token is valid iff it may
attend to itself), unless `HFRouting.inputs(valid=...)` says otherwise; task ids for UniMoD's
per-task routers come from `HFRouting.inputs(task=...)` (default: task 0 for every row).
"""

from __future__ import annotations

import inspect
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.cache_utils import DynamicLayer

from modlab.errors import ConfigError
from modlab.hf_layer_map import HFFamily, decoder_layers, hf_family, layer_sliding_window, text_config
from modlab.routing.install import RouteInfo
from modlab.routing.routed_block import RoutedBlock, gather_tokens
from modlab.routing.topk import topk_select

try:
    from modlab.routing.hf_row_cache import RowKVLayer
except ImportError:  # transformers (the optional `hf` extra) is missing: no model has a cache to route

    class RowKVLayer:  # nothing is ever an instance
        pass


# Attention implementations whose masks the wrapper can slice: SDPA (bool masks, or None for its
# causal fast path) and eager (additive float masks). Flash attention takes 2D padding masks and
# flex attention BlockMasks, neither of which can be restricted to a subset of tokens here.
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class HFRouteInputs:
    """Per-forward inputs of the routed layers of one model that transformers does not pass down."""

    task: torch.Tensor | None = None  # (B,) task id of each row (UniMoD); None: task 0
    valid: torch.Tensor | None = None  # (B, T) real tokens; None: read from the attention mask
    always: torch.Tensor | None = None  # (B, T) tokens that always run (not routed); None: none


class HFRoutedLayer(RoutedBlock):
    """A transformers decoder layer that only its kept tokens run (see the module docstring)."""

    def __init__(
        self,
        layer: nn.Module,
        d_model: int,
        capacity: list[float],
        *,
        layer_idx: int,
        sliding_window: int | None,
        attn_implementation: str,
        returns_tuple: bool,
        inputs: HFRouteInputs,
        weight: str = "ste_sigmoid",
        causal: str = "none",
        **options,
    ):
        super().__init__(layer, d_model, capacity, weight, causal, **options)
        self.layer_idx, self.sliding_window = layer_idx, sliding_window
        self.layer_index = layer_idx  # what routing traces report
        self.attn_implementation, self.returns_tuple = attn_implementation, returns_tuple
        self.inputs = inputs
        # transformers calls layers with keywords, but map positional arguments by the layer's own signature
        self._arg_names = list(inspect.signature(layer.forward).parameters)
        self.sizes_decode_masks = False  # set by install_hf_routing (see HFRoutedLayer.forward)
        self._entries = None  # (cache, positions, holds a token) of the cached slots; see _record_entries
        if hasattr(layer, "attention_type"):  # some model loops read it off the layer
            self.attention_type = layer.attention_type

    def extra_repr(self) -> str:
        caps = [round(c, 4) for c in self.capacity.tolist()]
        return (
            f"layer_idx={self.layer_idx}, capacity={caps}, sliding_window={self.sliding_window}, causal={self.causal}"
        )

    # ---- the forward ------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        kwargs.update(zip(self._arg_names[1:], args))
        x = hidden_states
        B, T, _ = x.shape
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        row_cache = self._cache_layer(cache)
        if T == 1 and isinstance(row_cache, RowKVLayer) and row_cache.span > 0 and not self.sizes_decode_masks:
            self.require_causal_decision()
            return self._as_layer_output(self._decode_step(x, kwargs, row_cache))
        self._require_growing_cache(cache)
        decoding = cache is not None and self._stored_entries(cache) > 0
        if decoding:
            self.require_causal_decision()
            if self.sizes_decode_masks:
                raise ConfigError(
                    f"layer {self.layer_idx} cannot be routed while decoding with a KV cache: transformers sizes "
                    "the decode masks and positions of its attention type from it; route later layers"
                )
        elif cache is not None and self.sliding_window is None:
            RowKVLayer.install(cache, self.layer_idx)  # a full-attention layer keeps per-row entries
        valid = self._valid_tokens(kwargs.get("attention_mask"), B, T, x.device)
        task = self.inputs.task if self.inputs.task is not None else torch.zeros(B, dtype=torch.long, device=x.device)
        always = self.inputs.always
        always = always.to(device=x.device, dtype=torch.bool) if always is not None and always.shape == (B, T) else None
        route = RouteInfo(task=task, valid=valid, always=always)
        scores = self.router(x, task)  # (B, T) logits

        def run_rows(rows, eligible, capacity, forced=None):
            if rows is None:
                return self._route_rows(x, kwargs, eligible, scores, capacity, forced)
            kw = self._take_rows(kwargs, rows, B)
            return self._route_rows(x[rows], kw, eligible, scores[rows], capacity, forced)

        # the decision is RoutedBlock's (threshold / top-k, per-task groups, causal loss, traces);
        # a KV cache takes whole-batch updates only, so with one the batch goes in one call
        out = self.route(x, route, scores, run_rows, x.clone(), one_call=cache is not None)
        return self._as_layer_output(out)

    def _route_rows(self, x, kwargs, eligible, scores, capacity, forced=None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The new hidden states of these rows, which of their tokens ran the layer (B, T), and
        the batched call's K."""
        B, T, d = x.shape
        idx, slot_ok = topk_select(scores.detach(), eligible, capacity, forced)
        K = idx.shape[1]
        # unused slots are sent to a dummy token T, which is dropped: no token is written twice
        idx_or_dummy = idx.masked_fill(~slot_ok, T)
        selected = torch.zeros(B, T + 1, dtype=torch.bool, device=x.device).scatter(1, idx_or_dummy, True)[:, :T]
        if K == 0:  # threshold routing kept no token in any row
            return x, selected, 0
        gate = self.router_weight(scores)
        if forced is not None:  # tokens that are not routed run with weight 1: the router learns nothing from them
            gate = torch.where(forced, torch.ones_like(gate), gate)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = self._past_entries(cache, B)
        positions = kwargs.get("position_ids")
        positions = positions.expand(B, T) if positions is not None else torch.arange(T, device=x.device).expand(B, T)
        if K == T and bool(slot_ok.all()):
            # every token runs: the layer gets exactly the model's own inputs (mask, cache and all),
            # except while decoding, where the mask comes from this layer's own cache
            if past is not None:
                kwargs = dict(kwargs, attention_mask=self._decode_mask(past, positions, slot_ok, x.dtype))
            self._expect_write(cache, slot_ok, positions)
            out = self._mix(x, self._call_layer(x, kwargs), gate)
            self._record_entries(cache, past, positions, slot_ok)
            return out, selected, K
        kept_kwargs = dict(kwargs)
        kept_positions = positions.gather(1, idx)
        if past is None:
            kept_kwargs["attention_mask"] = self._kept_mask(kwargs.get("attention_mask"), idx, slot_ok, T, x.dtype)
        else:
            # decoding: transformers sized its mask from another layer's cache; this layer's own
            # entries (their positions and which slots hold a token) decide what the kept tokens see
            kept_kwargs["attention_mask"] = self._decode_mask(past, kept_positions, slot_ok, x.dtype)
        if kwargs.get("position_ids") is not None:
            kept_kwargs["position_ids"] = kept_positions
        if kwargs.get("position_embeddings") is not None:
            kept_kwargs["position_embeddings"] = tuple(
                gather_tokens(t.expand(B, *t.shape[1:]), idx) for t in kwargs["position_embeddings"]
            )
        x_kept = gather_tokens(x, idx)
        self._expect_write(cache, slot_ok, kept_positions)
        new_kept = self._mix(x_kept, self._call_layer(x_kept, kept_kwargs), gather_tokens(gate, idx))
        self._record_entries(cache, past, kept_positions, slot_ok)
        padded = torch.cat([x, x.new_zeros(B, 1, d)], 1)
        out = padded.scatter(1, idx_or_dummy[..., None].expand(B, K, d), new_kept.to(x.dtype))
        return out[:, :T], selected, K

    def _decode_step(self, x, kwargs, row_cache: RowKVLayer) -> torch.Tensor:
        """One token per row with the per-row cache (threshold routing): the rows whose token runs
        the layer run it, and only they, against their own entries masked by length; the others
        pass through and write nothing. The rows that run are the step's one host sync (they size
        the call); a batch in which every row runs takes no row gather at all."""
        B = x.shape[0]
        valid = self._valid_tokens(kwargs.get("attention_mask"), B, 1, x.device)
        task = self.inputs.task if self.inputs.task is not None else torch.zeros(B, dtype=torch.long, device=x.device)
        always = self.inputs.always
        always = always.to(device=x.device, dtype=torch.bool) if always is not None and always.shape == (B, 1) else None
        route = RouteInfo(task=task, valid=valid, always=always)
        scores = self.router(x, task)  # (B, 1) logits
        runs = self.threshold_runs(x, route, scores)  # (B, 1)
        rows = runs[:, 0].nonzero()[:, 0]
        n = rows.shape[0]
        out = x
        if n:
            every = n == B
            pick = (lambda t: t) if every else (lambda t: t[rows])
            kw = dict(kwargs)
            positions = kwargs.get("position_ids")
            positions = (
                positions.expand(B, 1) if positions is not None else torch.full((B, 1), row_cache.span, device=x.device)
            )
            if kwargs.get("position_ids") is not None:
                kw["position_ids"] = pick(positions)
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                kw["position_embeddings"] = tuple(pick(t.expand(B, *t.shape[1:])) for t in pe)
            kw["attention_mask"] = row_cache.step_mask(None if every else rows, self.attn_implementation, x.dtype)
            row_cache.select(None if every else rows, pick(positions)[:, 0])
            x_rows = pick(x)
            new = self._call_layer(x_rows, kw)
            if not self.weight.startswith("ste_") or torch.is_grad_enabled():
                w = self.router_weight(pick(scores))
                if route.always is not None:  # tokens that are not routed run with weight 1
                    w = torch.where(pick(route.always), torch.ones_like(w), w)
                new = self._mix(x_rows, new, w)
            # else the straight-through weight is exactly 1: the layer's output as it is (what _mix gives)
            new = new.to(x.dtype)
            out = new if every else x.index_copy(0, rows, new)
        self._trace("threshold", route, runs, [(n, 1)])
        return out

    def _expect_write(self, cache, slot_ok: torch.Tensor, positions: torch.Tensor) -> None:
        """Tell a per-row cache layer which of the call's (B, K) tokens it stores, at which positions."""
        layer = self._cache_layer(cache)
        if isinstance(layer, RowKVLayer):
            layer.expect(slot_ok, positions)

    def _mix(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x + w * (y - x) with RoutedBlock's router weight w, written so that w == 1 gives y exactly."""
        if self.weight.startswith("ste_"):
            # w - 1 = (g - stopgrad(g) + 1) - 1: exactly 0 forward, g's gradient backward
            return y + (w - 1.0)[..., None].to(y.dtype) * (y - x)
        return x + w[..., None].to(y.dtype) * (y - x)

    def _call_layer(self, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
        out = self.block(x, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _as_layer_output(self, out: torch.Tensor):
        # per-token extras of a tuple-returning layer (attention weights) describe kept tokens only: dropped
        return (out, None) if self.returns_tuple else out

    # ---- masks, padding, rows ---------------------------------------------------------------------

    def _valid_tokens(self, mask, B: int, T: int, device) -> torch.Tensor:
        """(B, T) tokens that may be routed: given by HFRouting.inputs, else those the mask lets
        attend to themselves (padding may not), else all."""
        valid = self.inputs.valid
        if valid is not None and valid.shape == (B, T):
            return valid.to(device=device, dtype=torch.bool)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            return torch.ones(B, T, dtype=torch.bool, device=device)
        past = mask.shape[-1] - mask.shape[-2]  # keys of earlier tokens in a cache come first
        diag = mask[:, 0].diagonal(offset=past, dim1=-2, dim2=-1)
        allowed = diag if diag.dtype == torch.bool else diag == 0
        return allowed.expand(B, T)

    def _kept_mask(self, mask, idx: torch.Tensor, slot_ok: torch.Tensor, T: int, dtype: torch.dtype):
        """The attention mask among the kept tokens, (B, 1 or heads, K, K), in the model's format.
        Unused slots are never attended to; every slot sees itself (no empty softmax rows)."""
        B, K = idx.shape
        window = self.sliding_window
        eye = torch.eye(K, dtype=torch.bool, device=idx.device)
        if mask is None:
            if self.attn_implementation == "sdpa" and bool(slot_ok.all()) and (window is None or T <= window):
                return None  # SDPA's is_causal over the sorted kept tokens is causal in original order
            q, k = idx[:, :, None], idx[:, None, :]
            allowed = (k <= q) & slot_ok[:, None, :]
            if window is not None:
                allowed &= q - k < window  # the window in original positions, as transformers builds it
            allowed = (allowed | eye)[:, None]
            if self.attn_implementation == "sdpa":
                return allowed
            zero = torch.zeros((), dtype=dtype, device=idx.device)
            return torch.where(allowed, zero, torch.finfo(dtype).min)
        mask = mask.expand(B, *mask.shape[1:])
        H, Tk = mask.shape[1], mask.shape[-1]
        key_idx = idx + (Tk - mask.shape[-2])  # past keys (a cache) come before this step's tokens
        rows = mask.gather(2, idx[:, None, :, None].expand(B, H, K, Tk))
        sub = rows.gather(3, key_idx[:, None, None, :].expand(B, H, K, K))
        unused_key = ~slot_ok[:, None, None, :]
        if sub.dtype == torch.bool:
            return (sub & ~unused_key) | eye
        return sub.masked_fill(unused_key, torch.finfo(sub.dtype).min).masked_fill(eye, 0.0)

    @staticmethod
    def _take_rows(kwargs: dict, rows: torch.Tensor, B: int) -> dict:
        """The layer arguments of a subset of the batch's rows (batch-1 broadcasts stay as they are)."""
        out = dict(kwargs)
        for name in ("attention_mask", "position_ids"):
            t = kwargs.get(name)
            if isinstance(t, torch.Tensor) and t.shape[0] == B and B > 1:
                out[name] = t[rows]
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            out["position_embeddings"] = tuple(t[rows] if t.shape[0] == B and B > 1 else t for t in pe)
        return out

    # ---- the compact KV cache --------------------------------------------------------------------
    #
    # Only kept tokens reach the attention, so only they write K/V into this layer's entry of the
    # model's cache (a DynamicCache layer grows by what it is given): a token that skipped the
    # layer has no entry there. Rows of a batch keep different counts, so a step appends
    # K = max kept slots per row; `_entries` remembers, per cached slot, the original position of
    # its token and whether it holds one, and the decode mask is built from that.

    def _cache_layer(self, cache):
        layers = getattr(cache, "layers", None)
        return layers[self.layer_idx] if layers is not None and self.layer_idx < len(layers) else None

    def _require_growing_cache(self, cache) -> None:
        """A preallocated (static) cache layer reports its full length as stored and holds slots
        nobody wrote: the compact cache would attend to them and decode wrong tokens, silently
        (e.g. Janus's image generation builds a StaticCache by default). Refuse it in one line."""
        layer = self._cache_layer(cache)
        if layer is not None and not isinstance(layer, DynamicLayer):
            raise ConfigError(
                f"layer {self.layer_idx} is token-routed and needs a growing KV cache (DynamicCache), got "
                f"{type(layer).__name__} in a {type(cache).__name__} (generate(..., cache_implementation='dynamic'))"
            )

    def _stored_entries(self, cache) -> int:
        """Cached slots this layer holds now (a sliding-window layer keeps the last window - 1)."""
        layer = self._cache_layer(cache)
        if isinstance(layer, RowKVLayer):
            return layer.span
        keys = getattr(layer, "keys", None)
        return int(keys.shape[-2]) if isinstance(keys, torch.Tensor) and keys.numel() else 0

    def _past_entries(self, cache, B: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(positions, holds a token), each (B, L), of this layer's cached slots; None before the first write."""
        if cache is None or self._stored_entries(cache) == 0:
            return None
        layer = self._cache_layer(cache)
        if isinstance(layer, RowKVLayer):
            return layer.past()
        entries = self._entries
        if entries is None or entries[0]() is not cache:
            raise ConfigError(f"layer {self.layer_idx}'s KV cache was not written by this routed layer")
        return entries[1], entries[2]

    def _record_entries(self, cache, past, positions: torch.Tensor, slot_ok: torch.Tensor) -> None:
        layer = self._cache_layer(cache)
        if layer is None or isinstance(layer, RowKVLayer):  # a per-row cache layer keeps its own
            return
        if past is not None:
            positions, slot_ok = torch.cat([past[0], positions], 1), torch.cat([past[1], slot_ok], 1)
        stored = self._stored_entries(cache)
        if stored < positions.shape[1]:
            # a sliding-window cache layer keeps its last window - 1 slots; with more than one row,
            # slots that hold no token could push a row's in-window entries out, so refuse
            if positions.shape[0] > 1 and not bool(slot_ok.all()):
                raise ConfigError(
                    f"layer {self.layer_idx} has a sliding-window KV cache: decode it with one row at a time"
                )
            positions, slot_ok = positions[:, -stored:], slot_ok[:, -stored:]
        self._entries = (weakref.ref(cache), positions, slot_ok)

    def _decode_mask(self, past, q_pos: torch.Tensor, q_ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, K, L + K): the kept new tokens attend to this layer's cached entries and to each
        other, causally and within the sliding window, by original position."""
        k_pos = torch.cat([past[0], q_pos], 1)
        k_ok = torch.cat([past[1], q_ok], 1)
        q, k = q_pos[:, :, None], k_pos[:, None, :]
        allowed = (k <= q) & k_ok[:, None, :]
        if self.sliding_window is not None:
            allowed &= q - k < self.sliding_window
        K, L = q_pos.shape[1], past[0].shape[1]
        if self.attn_implementation == "sdpa" and K == 1 and self.sliding_window is None and bool(k_ok.all()):
            return None  # one new token that may see every cached entry: SDPA's unmasked path
        eye = torch.zeros(K, L + K, dtype=torch.bool, device=q_pos.device)
        eye[:, L:] = torch.eye(K, dtype=torch.bool, device=q_pos.device)
        allowed = (allowed | eye)[:, None]
        if self.attn_implementation == "sdpa":
            return allowed
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=q_pos.device), torch.finfo(dtype).min)

    def cache_entries(self, cache) -> torch.Tensor:
        """(B,) cached K/V entries of this layer that hold a token (a sliding-window layer keeps
        only its last window - 1 slots)."""
        layer = self._cache_layer(cache)
        if isinstance(layer, RowKVLayer):
            return layer.length if layer.length is not None else torch.zeros(0, dtype=torch.long)
        past = self._past_entries(cache, 0)
        if past is None:
            return torch.zeros(0, dtype=torch.long)
        return past[1].sum(1)


class HFRouting:
    """The routed layers installed into one transformers CausalLM, and their per-forward inputs."""

    def __init__(self, model: nn.Module, family: HFFamily, layers: dict[int, HFRoutedLayer], inputs: HFRouteInputs):
        self.model, self.family, self.layers, self._inputs = model, family, layers, inputs

    @contextmanager
    def inputs(
        self, task: torch.Tensor | None = None, valid: torch.Tensor | None = None, always: torch.Tensor | None = None
    ):
        """Around a forward: each row's task id (UniMoD's per-task routers) and, optionally, the
        valid tokens (by default read from the attention mask each layer receives) and the tokens
        that always run (not routed: e.g. all but the image tokens)."""
        old = (self._inputs.task, self._inputs.valid, self._inputs.always)
        self._inputs.task, self._inputs.valid, self._inputs.always = task, valid, always
        try:
            yield
        finally:
            self._inputs.task, self._inputs.valid, self._inputs.always = old

    def cache_entries(self, cache) -> dict[int, torch.Tensor]:
        """(B,) cached K/V entries that hold a token, per routed layer."""
        return {i: layer.cache_entries(cache) for i, layer in self.layers.items()}


def install_hf_routing(
    model: nn.Module,
    layer_capacity: dict[int, list[float]],
    weight: str = "ste_sigmoid",
    causal: str = "none",
    **options,
) -> HFRouting:
    """Wrap decoder layer i of a transformers CausalLM in an HFRoutedLayer for every routed layer
    i; `layer_capacity[i]` holds one capacity per router (one: MoD; one per task id: UniMoD);
    `options`: RoutedBlock's temperature, router_input, aux_margin.
    Every way the request can be wrong is a one-line ConfigError."""
    family = hf_family(model.config)
    config = text_config(model.config)  # sizes and layer types of the language decoder
    attn = getattr(config, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", None)
    attn = attn or "eager"
    if attn not in SUPPORTED_ATTENTION:
        raise ConfigError(
            f"token routing needs attn_implementation {' or '.join(SUPPORTED_ATTENTION)}, the model uses '{attn}'"
        )
    blocks = decoder_layers(model, family)
    inputs = HFRouteInputs()
    # transformers sizes decode masks and positions from layer 0 and the first layer of each
    # attention type; with a compact cache those layers must keep every token
    layer_types = list(getattr(config, "layer_types", None) or [])
    sizes_masks = {0} | {layer_types.index(t) for t in set(layer_types)}
    routed: dict[int, HFRoutedLayer] = {}
    for i, caps in sorted(layer_capacity.items()):
        if not 0 <= i < len(blocks):
            raise ConfigError(f"routed layer {i} is out of range (the model has layers 0..{len(blocks) - 1})")
        if isinstance(blocks[i], HFRoutedLayer):
            raise ConfigError(f"layer {i} is already routed")
        if not caps or not all(0.0 < c <= 1.0 for c in caps):
            raise ConfigError(f"capacities must be in (0, 1], got {list(caps)} for layer {i}")
        layer = HFRoutedLayer(
            blocks[i],
            config.hidden_size,
            list(caps),
            layer_idx=i,
            sliding_window=layer_sliding_window(model.config, family, i),
            attn_implementation=attn,
            returns_tuple=family.layer_returns_tuple,
            inputs=inputs,
            weight=weight,
            causal=causal,
            **options,
        )
        layer.sizes_decode_masks = i in sizes_masks
        param = next(blocks[i].parameters(), None)
        if param is not None:  # routers live where the layer lives, in its dtype
            layer.router.to(device=param.device, dtype=param.dtype)
            if layer.predictor is not None:
                layer.predictor.to(device=param.device, dtype=param.dtype)
        layer.train(blocks[i].training)
        blocks[i] = layer
        routed[i] = layer
    return HFRouting(model, family, routed, inputs)


def apply_hf_routing(model: nn.Module, cfg) -> HFRouting:
    """Install the routing a modlab RoutingConfig describes into a transformers CausalLM."""
    n_layer = len(decoder_layers(model))
    return install_hf_routing(model, cfg.layer_capacities(n_layer), **cfg.block_options())


@contextmanager
def unrouted(routing: HFRouting):
    """The model with its routed layers replaced by the layers they wrap: every token runs every layer."""
    blocks = decoder_layers(routing.model, routing.family)
    # only where the routed layer still sits (an analysis may have put a stand-in there)
    swapped = [i for i, layer in routing.layers.items() if blocks[i] is layer]
    for i in swapped:
        blocks[i] = routing.layers[i].block
    try:
        yield
    finally:
        for i in swapped:
            blocks[i] = routing.layers[i]
