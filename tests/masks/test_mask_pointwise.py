"""Mask functions are pointwise: FlexAttention's compiled kernel lowers ``mask_mod`` as a pointwise subgraph, where
Inductor cannot create buffers (no ``arange``/``iota``, no reduction). On an H200 (torch 2.11) BigBird's random keys,
then drawn as ``arange(n_random)`` and reduced with ``.any(-1)``, raised ``SubgraphLoweringException``. Here:

* the BigBird mask of the per-draw loop is bit-identical to the old ``arange``/``any`` formula (kept below as the
  oracle) for several seeds, shapes, offsets, per-head draws, causal and not;
* every mask constructor of :mod:`attnlab.masks` traces (``make_fx`` on 0-dim int32 indices, as FlexAttention
  calls ``mask_mod``) to a graph without ``arange``/``iota`` and without reductions. The old formula is the
  positive control of that check. (The CPU Inductor lowering of FlexAttention does not raise on the old formula,
  so the lowering itself is only exercised in the GPU tier.)
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

from attnlab import masks as M

_M32 = 0xFFFFFFFF


# ------------------------------------------------------------------- the old BigBird formula (oracle, do not change)
def _old_mix32(x: Tensor) -> Tensor:
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def _old_random_keys(seed: int, h: Tensor, q: Tensor, n_random: int, kv_len: int | None) -> Tensor:
    r = torch.arange(n_random, device=q.device, dtype=torch.int64)  # (R,)
    x = _old_mix32((h.to(torch.int64).unsqueeze(-1) & _M32) ^ (seed & _M32))  # (..., 1)
    x = _old_mix32(x ^ ((seed >> 32) & _M32) ^ 0x9E3779B9)
    x = _old_mix32(x ^ (q.to(torch.int64).unsqueeze(-1) & _M32))
    x = _old_mix32(x ^ r)  # (..., R)
    hi = (q.to(torch.int64).unsqueeze(-1) + 1) if kv_len is None else kv_len
    return torch.remainder(x, hi)


def _old_bigbird_fn(w: int, g: int, r: int, seed: int, causal: bool, per_head: bool, kv_len: int | None):
    rand_range = None if causal else kv_len

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        d = q - kv
        local = (d >= 0) & (d < w) if causal else d.abs() < w
        glob = (kv < g) | (q < g)
        vis = local | glob
        if r > 0:
            hh = h if per_head else torch.zeros_like(h)
            rand = (_old_random_keys(seed, hh, q, r, rand_range) == kv.unsqueeze(-1)).any(-1)
            vis = vis | rand
        return vis & (kv <= q) if causal else vis

    return fn


# (window, n_global, n_random, seed, causal, n_heads, T, S, q_offset)
BIGBIRD_CASES = [
    (2, 1, 2, 0, True, None, 13, 13, 0),
    (3, 0, 3, 7, True, 4, 9, 21, 12),
    (1, 2, 5, 2**33 + 5, True, 3, 17, 17, 0),  # a seed above 2**32 (its high word enters the hash)
    (2, 1, 2, 5, False, None, 13, 29, 0),
    (4, 0, 4, 123, False, 2, 11, 40, 3),
    (2, 2, 1, 99, True, 5, 40, 40, 0),
    (3, 1, 0, 1, True, 2, 8, 8, 0),  # no random keys
]


@pytest.mark.parametrize("case", BIGBIRD_CASES, ids=[f"case{i}" for i in range(len(BIGBIRD_CASES))])
def test_bigbird_loop_is_bit_identical_to_the_old_formula(case) -> None:
    w, g, r, seed, causal, n_heads, T, S, off = case
    kv_len = None if causal else S
    mask = M.bigbird(w, g, r, seed, causal=causal, n_heads=n_heads, kv_len=kv_len)
    H = n_heads or 2
    old = M.Mask(name="old", fn=_old_bigbird_fn(w, g, r, seed, causal, n_heads is not None, kv_len))
    want = M.dense(old, T, S, batch_size=2, n_heads=H, q_offset=off)  # (B, H, T, S)
    got = M.dense(mask, T, S, batch_size=2, n_heads=H, q_offset=off)
    assert torch.equal(got, want)
    if r:
        assert (got & ~M.dense(M.bigbird(w, g, 0, seed, causal=causal, kv_len=kv_len), T, S, batch_size=2,
                                       n_heads=H, q_offset=off)).any()  # the random keys do add something


def test_bigbird_loop_matches_the_old_formula_under_vmap() -> None:
    """FlexAttention's create_block_mask evaluates mask_mod under nested vmap over (b, h, q, kv)."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask = M.bigbird(2, 1, 3, seed=11, n_heads=4)
    old = _old_bigbird_fn(2, 1, 3, 11, True, True, None)
    a = create_block_mask(mask.fn, B=None, H=4, Q_LEN=40, KV_LEN=40, device="cpu", BLOCK_SIZE=4)
    b = create_block_mask(old, B=None, H=4, Q_LEN=40, KV_LEN=40, device="cpu", BLOCK_SIZE=4)
    assert torch.equal(a.to_dense(), b.to_dense())


# ------------------------------------------------------------------------------------------ pointwise structure
_aten = torch.ops.aten
FORBIDDEN = {
    _aten.arange, _aten.any, _aten.all, _aten.sum, _aten.amax, _aten.amin, _aten.max, _aten.min, _aten.prod,
    _aten.mean, _aten.cumsum, _aten.argmax, _aten.argmin, _aten.logsumexp,
}


def _forbidden_ops(fn) -> list[str]:
    # (torch-internal: FlexAttention traces mask_mod under this mode, so that indexing a captured tensor with 0-dim
    # index tensors becomes aten.index rather than a read of their values)
    from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex

    idx = [torch.tensor(v, dtype=torch.int32) for v in (1, 2, 9, 4)]  # b, h, q_idx, kv_idx: 0-dim, as in the kernel
    with TransformGetItemToIndex():
        gm = make_fx(fn)(*idx)
    bad = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        packet = getattr(node.target, "overloadpacket", None)
        name = str(node.target)
        if packet in FORBIDDEN or "iota" in name:
            bad.append(name)
    return bad


def _all_masks() -> dict[str, M.Mask]:
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    vis = torch.tensor([False, True, True, True, False, False, True, True, False, False, False, False])
    keep = torch.ones(12, dtype=torch.bool)
    keep[-2:] = False
    return {
        "causal": M.causal(),
        "sliding_window": M.sliding_window(3),
        "sliding_window_bi": M.sliding_window(3, causal=False),
        "strided": M.strided(3),
        "strided_bi": M.strided(3, causal=False),
        "fixed": M.fixed(4, 2),
        "fixed_bi": M.fixed(4, 1, causal=False),
        "bigbird": M.bigbird(2, 1, 3, seed=7),
        "bigbird_per_head": M.bigbird(2, 1, 3, seed=3, n_heads=4),
        "bigbird_bi": M.bigbird(2, 1, 2, seed=5, causal=False, kv_len=12),
        "prefix_lm": M.prefix_lm(3),
        "document": M.document(ids),
        "document_batch": M.document(torch.stack([ids, ids.flip(0)])),
        "key_padding": M.key_padding(keep),
        "and_or": M.or_masks(M.sliding_window(2), M.prefix_lm(2)) & M.causal(),
        "future_full": M.future_full(vis, keep=keep),
        "future_v2v": M.future_v2v(vis),
        "future_v2t": M.future_v2t(vis, semantics="R"),
        "vlm_causal": M.vlm_causal(vis, keep=keep),
    }


@pytest.mark.parametrize("name", list(_all_masks()))
def test_mask_functions_trace_to_pointwise_graphs(name: str) -> None:
    assert _forbidden_ops(_all_masks()[name].fn) == []


def test_the_pointwise_check_catches_the_old_bigbird_formula() -> None:
    bad = _forbidden_ops(_old_bigbird_fn(2, 1, 3, 7, True, True, None))
    assert any("arange" in b for b in bad) and any("any" in b for b in bad)
