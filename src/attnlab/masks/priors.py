"""Prior-knowledge masks for variable tokens: keep user-excluded causal links out of a whole attention stack.

Shape legend: N variables, K tokens (``K = N`` with one token per variable, ``N * P`` with one per (variable, lag)),
L layers.

The exclusion matrix ``excl (N, N)`` is boolean with **row = effect, column = cause**: ``excl[i, j]`` means "variable
``j`` does not cause variable ``i`` at any lag" (spec ``time_series.md`` D.3). ``token_var (K,)`` says which variable
each token carries. Two exact constructions (both reconstructions, not stated in the paper):

* :func:`propagated_masks`, construction **(a), source-set propagation.** ``S⁰[k] = {token_var[k]}``. At layer ``l``
  query ``q`` may read key ``k`` iff ``S^l[k] ∩ excl[token_var[q]] = ∅``; then
  ``S^{l+1}[q] = S^l[q] ∪ ⋃ S^l[k]``
  over the keys it may read. The masks depend on ``excl`` only, so they are computed once. Because a token's
  sources grow layer by layer, deeper layers also block tokens that absorbed an excluded source, true parents'
  tokens included: the construction is exact but conservative.
* :func:`stream_masks`, construction **(b), per-target streams.** Stream ``i`` serves the forecast of variable
  ``i``: in it no query may read a key of a variable in ``excl[i]`` (in any layer), so nothing from those variables
  ever reaches a token other than their own, and ``x̂_i`` is read from stream ``i``. Exact and not conservative;
  ``N`` streams cost an ``N``-fold batch.

In both, every token may always read itself, so no row is ever fully masked. :func:`table_mask` wraps a boolean
table as a :class:`~attnlab.masks.Mask` (the attention layers apply it as ``-inf`` before the softmax, so excluded
gradients are exactly zero, not merely small).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.masks.core import Mask

__all__ = ["check_exclusions", "propagated_masks", "stream_masks", "table_mask"]


def check_exclusions(excl: object, n_vars: int | None = None, *, allow_self: bool = False) -> Tensor:
    """``excl`` as a ``(N, N)`` bool tensor, checked: square, boolean (or 0/1), and (unless ``allow_self``) no
    variable excluded from its own past. ``n_vars``, when given, must equal ``N``."""
    if not isinstance(excl, Tensor):
        raise ValueError(f"excl must be a (N, N) boolean tensor, got {type(excl).__name__}")
    if excl.ndim != 2 or excl.shape[0] != excl.shape[1]:
        raise ValueError(f"excl must be a square (N, N) tensor (row = effect, column = cause), got {tuple(excl.shape)}")
    if n_vars is not None and excl.shape[0] != n_vars:
        raise ValueError(f"excl is {tuple(excl.shape)} but there are n_vars={n_vars} variables")
    if excl.dtype != torch.bool:
        if not bool(((excl == 0) | (excl == 1)).all()):
            raise ValueError("excl must be boolean (or hold only 0 and 1)")
        excl = excl.bool()
    if not allow_self and bool(excl.diagonal().any()):
        i = int(excl.diagonal().nonzero()[0])
        raise ValueError(f"excl[{i}, {i}] excludes variable {i}'s own past; self-links cannot be excluded")
    return excl


def _token_var(token_var: object, n_vars: int) -> Tensor:
    if not isinstance(token_var, Tensor) or token_var.ndim != 1 or token_var.dtype not in (torch.int64, torch.int32):
        raise ValueError("token_var must be a (K,) integer tensor (the variable of each token)")
    if token_var.numel() and (int(token_var.min()) < 0 or int(token_var.max()) >= n_vars):
        raise ValueError(f"token_var must hold variable indices in [0, {n_vars}), got values in "
                         f"[{int(token_var.min())}, {int(token_var.max())}]")
    return token_var.long()


def propagated_masks(excl: Tensor, n_layers: int, token_var: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Construction (a): per-layer masks and the source sets they leave.

    Args:
        excl: ``(N, N)`` bool, ``excl[i, j]``: ``j`` does not cause ``i`` (row = effect).
        n_layers: ``L >= 1``.
        token_var: ``(K,)`` variable of each token (default: ``arange(N)``, one token per variable).

    Returns:
        ``(allowed, sources)``: ``allowed (L, K, K)`` bool, ``allowed[l, q, k]`` = query ``q`` may read key ``k`` at
        layer ``l``; ``sources (L + 1, K, N)`` bool, ``sources[l, k]`` = the variables token ``k`` may depend on
        before layer ``l`` (``sources[L]``: after the last layer). Invariant (spec D.9 oracle 2):
        ``sources[L][q] ∩ excl[token_var[q]] = ∅`` for every token.
    """
    excl = check_exclusions(excl).cpu()  # (masks are built on the CPU, also under a meta-device context)
    N = excl.shape[0]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an int >= 1, got {n_layers!r}")
    tv = _token_var(token_var if token_var is not None else torch.arange(N, device="cpu"), N).cpu()
    K = tv.numel()
    forbidden = excl[tv]  # (K, N): the variables each token's target must not depend on
    src = torch.zeros(K, N, dtype=torch.bool, device="cpu")
    src[torch.arange(K, device="cpu"), tv] = True  # S⁰[k] = {token_var[k]}
    allowed, sources = [], [src]
    for _ in range(n_layers):
        # query q may read key k iff sources[k] ∩ forbidden[q] = ∅
        a = ~(forbidden.float() @ src.float().T).bool()  # (K, K)
        a |= torch.eye(K, dtype=torch.bool, device="cpu")  # (already true: sources never meet their own exclusions)
        src = src | (a.float() @ src.float()).bool()  # (K, N): S^{l+1}[q] = S^l[q] ∪ ⋃_{allowed k} S^l[k]
        allowed.append(a)
        sources.append(src)
    return torch.stack(allowed), torch.stack(sources)


def stream_masks(excl: Tensor, token_var: Tensor | None = None) -> Tensor:
    """Construction (b): ``allowed (N, K, K)`` bool, the mask of stream ``i`` (the same in every layer): query ``q``
    may read key ``k`` iff ``token_var[k] ∉ excl[i]`` or ``q == k``."""
    excl = check_exclusions(excl).cpu()  # (masks are built on the CPU, also under a meta-device context)
    N = excl.shape[0]
    tv = _token_var(token_var if token_var is not None else torch.arange(N, device="cpu"), N).cpu()
    K = tv.numel()
    key_ok = ~excl[:, tv]  # (N, K): stream i's readable keys
    return key_ok[:, None, :].expand(N, K, K) | torch.eye(K, dtype=torch.bool, device="cpu")  # (N, K, K)


def table_mask(table: Tensor, *, name: str = "prior") -> Mask:
    """A :class:`~attnlab.masks.Mask` reading a precomputed boolean ``table``: ``(K, K)`` (the same for every batch
    row) or ``(n, K, K)`` (batch row ``b`` uses ``table[b % n]``: e.g. ``n`` streams laid out stream-fastest). Keys
    and queries beyond ``K`` are refused by ``max_len``."""
    if not isinstance(table, Tensor) or table.dtype != torch.bool or table.ndim not in (2, 3) \
            or table.shape[-1] != table.shape[-2]:
        raise ValueError("table must be a boolean (K, K) or (n, K, K) tensor")
    K = table.shape[-1]
    if table.ndim == 2:
        def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return table.to(q.device)[q, kv]

        return Mask(name=f"{name}(K={K})", fn=fn, max_len=K)
    n = table.shape[0]

    def fn_b(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return table.to(q.device)[b % n, q, kv]

    return Mask(name=f"{name}(streams={n}, K={K})", fn=fn_b, max_len=K, per_batch=True)
