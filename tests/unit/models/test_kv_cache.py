"""The per-layer KV cache of modlab's transformer: rows keep their own entry counts (a routed
layer stores only the tokens that ran it), new queries see every earlier entry of their row and
this call's stored tokens as the call's mask allows, and no query is left with an empty softmax."""

from __future__ import annotations

import torch

from modlab.models.kv_cache import LayerKV
from modlab.models.transformer import attend


def test_rows_keep_their_own_entries_and_masks():
    cache = LayerKV()
    k = torch.arange(2 * 3, dtype=torch.float32).view(2, 1, 3, 1)
    causal = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    keep = torch.tensor([[True, False, True], [False, False, False]])
    keys, _, mask = cache.extend(k, k, causal, keep)
    assert cache.length.tolist() == [2, 0]
    assert keys[0, 0, :, 0].tolist() == [0.0, 2.0]  # row 0's kept tokens 0 and 2, in order
    assert mask[0, 0].tolist() == [[True, False], [True, False], [True, True]]
    # row 1 stores nothing and has no entry: its queries look at slot 0 rather than at no key
    assert mask[1, 0].tolist() == [[True, False]] * 3
    # a decode step: row 0 sees its two entries and itself; row 1 only its first entry, itself
    keys, _, mask = cache.extend(torch.full((2, 1, 1, 1), 9.0), torch.zeros(2, 1, 1, 1), causal[..., :1, :1])
    assert cache.length.tolist() == [3, 1]
    assert keys[:, 0, :, 0].tolist() == [[0.0, 2.0, 9.0], [9.0, 0.0, 0.0]]
    assert mask[:, 0, 0].tolist() == [[True, True, True], [True, False, False]]


def test_a_query_with_nothing_to_see_gets_a_finite_output():
    """E.g. the unused slots of a routed call in a row that has run nothing yet."""
    q = torch.randn(1, 2, 2, 4)
    keep_none = torch.zeros(1, 2, dtype=torch.bool)
    keys, values, mask = LayerKV().extend(q, q, torch.ones(1, 1, 2, 2, dtype=torch.bool), keep_none)
    assert torch.isfinite(attend(q, keys, values, mask)).all()
