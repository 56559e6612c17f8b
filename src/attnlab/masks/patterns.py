"""The mask patterns of attnlab, each a named :class:`~attnlab.masks.core.Mask`.

Conventions (``i`` = absolute query position ``q_idx``, ``j`` = absolute key position ``kv_idx``):

==========================  ==================================================================================
``causal()``                ``j <= i``
``bidirectional()``         every key
``sliding_window(w)``       ``0 <= i - j < w``: the query itself and the ``w - 1`` keys before it
                            (``causal=False``: the symmetric band ``|i - j| < w``)
``strided(s)``              ``i - j < s`` or ``(i - j) % s == 0``, with ``j <= i``  (Child et al. 2019)
                            (``causal=False``: the same on ``|i - j|``)
``fixed(block, summary)``   ``j // block == i // block`` or ``j % block >= block - summary``, with ``j <= i``
``bigbird(...)``            sliding window + the first ``n_global`` positions as global tokens (they see and
                            are seen by everyone) + ``n_random`` random keys per query, from ``seed``
``prefix_lm(p)``            ``j <= i`` or ``j < p``: bidirectional inside the prefix, causal after it
``document(ids)``           ``ids[i] == ids[j]``: block-diagonal for packed sequences
==========================  ==================================================================================
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab._validation import check_int
from attnlab.masks.core import Mask

__all__ = [
    "causal",
    "bidirectional",
    "sliding_window",
    "strided",
    "fixed",
    "bigbird",
    "prefix_lm",
    "document",
]


def causal() -> Mask:
    """Standard causal mask: key ``j`` is visible to query ``i`` iff ``j <= i``."""
    return Mask(name="causal", fn=lambda b, h, q, kv: kv <= q, causal=True, plain_causal=True)


def bidirectional() -> Mask:
    """No masking: every key is visible to every query."""
    return Mask(name="bidirectional", fn=lambda b, h, q, kv: torch.ones_like(q - kv, dtype=torch.bool), full=True)


def sliding_window(window: int, *, causal: bool = True) -> Mask:
    """Local attention over a window that **counts the current token**.

    Causal: query ``i`` sees keys ``j`` with ``i - window < j <= i`` (itself and the ``window - 1`` keys before).
    ``window=1`` sees only itself. ``causal=False`` gives the symmetric band ``|i - j| < window``.
    """
    w = check_int("window", window, 1)
    if causal:
        return Mask(
            name=f"sliding_window(window={w})",
            fn=lambda b, h, q, kv: (kv <= q) & (q - kv < w),
            causal=True,
            window=w,
        )
    return Mask(name=f"sliding_window(window={w}, causal=False)", fn=lambda b, h, q, kv: (q - kv).abs() < w)


def strided(stride: int, *, causal: bool = True) -> Mask:
    """The strided pattern of the Sparse Transformer (Child et al. 2019, eq. 3.2.1).

    Key ``j`` is visible to query ``i`` iff ``i - j < stride`` or ``(i - j) % stride == 0`` (and ``j <= i`` when
    causal). ``causal=False`` applies the same rule to ``|i - j|``.
    """
    s = check_int("stride", stride, 1)
    if causal:
        def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            d = q - kv
            return (d >= 0) & ((d < s) | (torch.remainder(d, s) == 0))

        return Mask(name=f"strided(stride={s})", fn=fn, causal=True)

    def fn_bi(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        d = (q - kv).abs()
        return (d < s) | (torch.remainder(d, s) == 0)

    return Mask(name=f"strided(stride={s}, causal=False)", fn=fn_bi)


def fixed(block: int, summary: int = 1, *, causal: bool = True) -> Mask:
    """The fixed pattern of the Sparse Transformer (Child et al. 2019).

    Key ``j`` is visible to query ``i`` iff it lies in the same block of length ``block``
    (``j // block == i // block``) or it is one of the last ``summary`` positions of its own block
    (``j % block >= block - summary``); when causal, additionally ``j <= i``.
    """
    c = check_int("block", block, 1)
    if isinstance(summary, bool) or not isinstance(summary, int) or not 1 <= summary <= c:
        raise ValueError(f"summary must be an int in [1, block={c}], got {summary!r}")

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        same = torch.div(q, c, rounding_mode="floor") == torch.div(kv, c, rounding_mode="floor")
        summ = torch.remainder(kv, c) >= c - summary
        vis = same | summ
        return vis & (kv <= q) if causal else vis

    suffix = "" if causal else ", causal=False"
    return Mask(name=f"fixed(block={c}, summary={summary}{suffix})", fn=fn, causal=causal)


_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer finaliser (xor-shift / multiply) on int64 tensors holding values in ``[0, 2**32)``.

    Every product stays below ``2**59``, so nothing overflows int64 on any device.
    """
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def _random_key_base(seed: int, h: Tensor, q: Tensor) -> Tensor:
    """The part of the random-key hash shared by a query's ``n_random`` draws: ``broadcast(h, q)``, int64."""
    x = _mix32((h.to(torch.int64) & _M32) ^ (seed & _M32))
    x = _mix32(x ^ ((seed >> 32) & _M32) ^ 0x9E3779B9)
    return _mix32(x ^ (q.to(torch.int64) & _M32))


def _random_key(base: Tensor, q: Tensor, r: int, kv_len: int | None) -> Tensor:
    """Draw ``r`` (a Python int) of every (head, query): a key position, ``broadcast(base, q)``.

    A counter-based hash of ``(seed, h, q, r)`` (``base`` from :func:`_random_key_base`): no random-number generator
    and no table, so it is reproducible, independent of the sequence length and of the device, and safe under
    ``torch.vmap`` and ``torch.compile``. Each draw is one pointwise expression (no ``arange`` over ``r``, no
    reduction): Inductor lowers FlexAttention's ``mask_mod`` as a pointwise subgraph, where neither is allowed
    (an H200 run raised ``SubgraphLoweringException``). Causal masks draw from ``[0, q]``, others from
    ``[0, kv_len)``.
    """
    hi = (q.to(torch.int64) + 1) if kv_len is None else kv_len
    return torch.remainder(_mix32(base ^ r), hi)


def bigbird(
    window: int,
    n_global: int,
    n_random: int,
    seed: int = 0,
    *,
    causal: bool = True,
    n_heads: int | None = None,
    max_len: int = 16384,
    kv_len: int | None = None,
) -> Mask:
    """BigBird-style sparse attention (Zaheer et al. 2020), at token granularity.

    A key is visible when any of these holds:

    * **window**: it lies in the sliding window of :func:`sliding_window` (``window`` counts the query itself);
    * **global**: the key is one of the first ``n_global`` positions, or the query is (global queries see
      every key);
    * **random**: it is one of ``n_random`` keys drawn for this query from ``seed``. Causal masks draw from
      ``[0, i]``; ``causal=False`` draws from ``[0, kv_len)`` and needs ``kv_len``. The draws are a
      counter-based hash of ``(seed, head, i, r)`` (see ``_random_key``): identical on every device and for
      every sequence length, and computable inside ``torch.vmap``/``torch.compile``. Draws may repeat, so a row
      has *at most* ``n_random`` random keys.

    With ``causal=True`` everything is additionally restricted to ``j <= i``. ``n_heads`` draws a different
    random set per head (otherwise all heads share one). Positions must be below ``max_len``.
    """
    w = check_int("window", window, 1)
    g = check_int("n_global", n_global, 0)
    r = check_int("n_random", n_random, 0)
    check_int("seed", seed, 0)
    check_int("max_len", max_len, 1)
    if n_heads is not None:
        check_int("n_heads", n_heads, 1)
    if not causal and r > 0:
        if kv_len is None:
            raise ValueError("bigbird(causal=False, n_random>0) needs kv_len, the range random keys are drawn from")
        check_int("kv_len", kv_len, 1)
    per_head = n_heads is not None
    rand_range = None if causal else kv_len

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        d = q - kv
        local = (d >= 0) & (d < w) if causal else d.abs() < w
        glob = (kv < g) | (q < g)
        vis = local | glob
        if r > 0:
            hh = h if per_head else torch.zeros_like(h)
            base = _random_key_base(seed, hh, q)
            for i in range(r):  # r is a small Python int: one pointwise comparison per draw, OR-ed
                vis = vis | (_random_key(base, q, i, rand_range) == kv)
        return vis & (kv <= q) if causal else vis

    parts = [f"window={w}", f"n_global={g}", f"n_random={r}", f"seed={seed}"]
    if not causal:
        parts.append("causal=False")
    if per_head:
        parts.append(f"n_heads={n_heads}")
    return Mask(name=f"bigbird({', '.join(parts)})", fn=fn, causal=causal, max_len=max_len, per_head=per_head)


def prefix_lm(prefix_len: int) -> Mask:
    """Prefix-LM mask: bidirectional inside the first ``prefix_len`` positions, causal after.

    Key ``j`` is visible to query ``i`` iff ``j <= i`` or ``j < prefix_len``.
    """
    p = check_int("prefix_len", prefix_len, 0)
    return Mask(name=f"prefix_lm(prefix_len={p})", fn=lambda b, h, q, kv: (kv <= q) | (kv < p))


def document(doc_ids: Tensor, kv_doc_ids: Tensor | None = None) -> Mask:
    """Block-diagonal mask for packed sequences: a query sees only keys of its own document.

    Args:
        doc_ids: integer document id per position, shape ``(T,)`` (shared by the batch) or ``(B, T)``.
        kv_doc_ids: ids of the key positions when they differ from the queries' (cross-attention), ``(S,)`` or
            ``(B, S)`` (the same ``B`` as a 2-d ``doc_ids``; a 1-d side is shared by the batch); defaults to
            ``doc_ids``.

    Combine with :func:`causal` (``document(ids) & causal()``) for packed causal LM training.
    """
    ids_q = torch.as_tensor(doc_ids)
    ids_kv = ids_q if kv_doc_ids is None else torch.as_tensor(kv_doc_ids)
    for name, ids in (("doc_ids", ids_q), ("kv_doc_ids", ids_kv)):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.ndim not in (1, 2):
            raise ValueError(f"{name} must be an integer tensor of shape (T,) or (B, T), got {ids.dtype} {tuple(ids.shape)}")
    if ids_q.ndim == 2 and ids_kv.ndim == 2 and ids_q.shape[0] != ids_kv.shape[0]:
        raise ValueError(f"kv_doc_ids must have the batch size of doc_ids (B={ids_q.shape[0]}), "
                         f"got shape {tuple(ids_kv.shape)}")
    per_batch = ids_q.ndim == 2 or ids_kv.ndim == 2
    n_rows = max(ids_q.shape[0] if ids_q.ndim == 2 else 1, ids_kv.shape[0] if ids_kv.ndim == 2 else 1)
    # one row per batch element on both sides (a (T,) side is shared by the batch of the (B, T) side)
    qi = (ids_q if ids_q.ndim == 2 else ids_q.unsqueeze(0)).expand(n_rows, -1)  # (B or 1, T)
    ki = (ids_kv if ids_kv.ndim == 2 else ids_kv.unsqueeze(0)).expand(n_rows, -1)  # (B or 1, S)
    cache: dict[str, tuple[Tensor, Tensor]] = {}

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        key = str(q.device)
        if key not in cache:
            cache[key] = (qi.to(q.device), ki.to(q.device))
        a, c = cache[key]
        bb = b if per_batch else torch.zeros_like(b)
        return a[bb, q] == c[bb, kv]

    n_docs = int(torch.unique(ids_q).numel())
    return Mask(
        name=f"document(n_docs={n_docs}, len={ids_q.shape[-1]})",
        fn=fn,
        max_len=min(ids_q.shape[-1], ids_kv.shape[-1]) if kv_doc_ids is None else None,
        per_batch=per_batch,
    )
