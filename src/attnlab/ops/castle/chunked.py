"""CASTLE, blocked O(T^2 D) algorithm (spec section 2.2, Algorithm 1) with its own backward (Algorithm 3).

Shape legend: B batch, H heads, T sequence length, D head dim, N number of blocks, C = ``chunk_size`` positions per
block (the paper's block size ``B``; renamed to keep ``B`` for the batch). All inputs are ``(B, H, T, D)``.

Positions are split into N blocks (chunks) of C (T is zero-padded at the end to N*C; padded positions are in the
future of every real position, so they never reach a real output, and their rows are dropped). ``W`` is the
``lookahead`` argument (the paper's W: a lookahead key summarises the next W tokens, the current one not counted). Blocks are visited as a
wavefront over block diagonals: iteration 0 handles the N diagonal blocks, iteration ``k`` the N-k blocks
``(query block j+k, key block j)`` together (one batched matmul per step, vectorised over batch, heads and j).

With ``G(j, i) = sigmoid(Q^U_{T_j} K^U_{T_i}^T * scale) * [M^U allows]`` (C x C; rows: key owners, columns:
contributors) and ``U_j`` the running lookahead keys of the tokens of block j (the paper's ``D_{:,T_j}^T``):

    k = 0:   S^U_{jj}     = tril(Q^C_j V^U_j^T * scale) G(j, j)^T                                  (eq. 22)
    k >= 1:  U_j         += G(j, j+k-1) V^U_{j+k-1}                                                (eq. 23)
             S^U_{j+k, j} = Q^C_{j+k} U_j^T * scale + tril(Q^C_{j+k} V^U_{j+k}^T * scale) G(j, j+k)^T   (eq. 24)
    A = Q^C K^C^T * scale - SiLU(S^U)  (causal mask on diagonal blocks), online softmax over the k iterations.

Internally blocks are stored block-major, ``(N, B, H, C, D)``, so that the run of blocks ``x[k:]`` of one
diagonal is a contiguous tensor and every batched matmul runs without copies (4x faster on CPU than slicing
``(B, H, N, C, D)``).

Only the outputs, the log-sum-exp per row (T) and the final ``U`` (T x D) are saved; the backward pass walks the
diagonals in reverse, recomputes every block, and "un-updates" ``U`` by subtracting eq. (23). Extra memory is
O(T (D + C)) per head: there is no T x T tensor anywhere.

CPU cost notes (the batched GEMMs run near the core's peak, so only fewer multiply-adds or fewer elementwise
passes help): the softmax scale is folded into ``Q^C`` and ``Q^U`` once (gradients w.r.t. the scaled queries are
multiplied by it at the end); each gate block ``G(j, j+k)`` has two uses (the within-block correction of step k and
the ``U`` update of step k+1), and the backward adds both gradients before the single ``g (1 - g)`` product and the
single pair of GEMMs into ``dQ^U`` / ``dK^U`` (17 instead of 20 C x C x D-sized GEMMs per block pair); every GEMM
writes a contiguous output (a strided output makes ``baddbmm_`` fall back to one GEMM per batch item); heads are
processed in small groups (see ``_ITEMS_PER_GEMM``) so that each step's blocks stay in cache. Autograd saves the six
inputs as given (no block-major copies), the output, the log-sum-exp and ``U``; each group's blocks are rebuilt in the
backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["castle_chunked"]


def _gate_mask(C: int, k: int, lookahead: int | None, device: torch.device) -> Tensor | None | bool:
    """Lookahead pass-through mask for owner block j and contributor block j+k: ``(C, C)`` bool.

    Owner ``s = jC + p``, contributor ``jC + kC + q``; allowed iff ``0 < kC + q - p (<= lookahead)``.
    Returns ``None`` when every entry is allowed and ``False`` when none is (the gate block is then zero).
    """
    if k >= 1 and (lookahead is None or k * C + C - 1 <= lookahead):  # largest delta within W
        return None
    if k >= 1 and (k - 1) * C + 1 > lookahead:  # smallest delta in the block exceeds W
        return False
    p = torch.arange(C, device=device)
    delta = k * C + p[None, :] - p[:, None]  # (C, C): contributor minus owner
    if lookahead is None:
        return delta > 0
    return (delta > 0) & (delta <= lookahead)


def _as3d(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """Batched ``a @ b`` over runs of blocks ``(n, B, H, ., .)`` as one 3-d GEMM."""
    return torch.bmm(_as3d(a), _as3d(b)).view(*a.shape[:-1], b.shape[-1])


def _acc(out: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
    """``out += alpha * a @ b`` in place with one batched GEMM (``out`` must be viewable as 3-d: a run of blocks)."""
    out.view(-1, out.shape[-2], out.shape[-1]).baddbmm_(_as3d(a), _as3d(b), alpha=alpha)


def _gate(qs_u: Tensor, k_u: Tensor, mask: Tensor | None) -> Tensor:
    """``G`` blocks ``(n, B, H, C, C)`` from pre-scaled owner blocks ``qs_u`` and contributor blocks ``k_u``."""
    g = _mm(qs_u, k_u.transpose(-1, -2)).sigmoid_()  # (n, B, H, C, C)
    if mask is not None:
        g.masked_fill_(~mask, 0.0)
    return g


def _silu_backward(grad: Tensor, x: Tensor) -> Tensor:
    """``grad * SiLU'(x)`` in one fused elementwise pass (``SiLU'(x) = s (1 + x (1 - s))``, ``s = sigmoid(x)``)."""
    return torch.ops.aten.silu_backward(grad, x)


def _sigmoid_backward(grad: Tensor, y: Tensor) -> Tensor:
    """``grad * y (1 - y)`` for ``y = sigmoid(z)`` in one fused elementwise pass."""
    return torch.ops.aten.sigmoid_backward(grad, y)


# Heads are processed in groups so that the blocks one batched GEMM touches stay in cache: every step streams about a
# dozen (n, G, C, C or D) tensors, and with all heads at once these outgrow the last-level cache at long T (measured
# on a 1-thread CPU: T=4096, 5 heads, one head at a time is ~20% faster than all 5 together). A group holds
# about _ITEMS_PER_GEMM // N heads (at least one), so short sequences still batch every head into one GEMM.
_ITEMS_PER_GEMM = 32
# The softmax runs in base 2 (logits times log2(e), exp2, log-sum-exp in base 2): torch's CPU exp2 kernel is ~4x
# faster than exp (measured 39 vs 165 us per 64 x 64 x 64 float32 elements); the result differs only by rounding.
_LOG2E = 1.4426950408889634


def _heads_per_group(n_heads: int, n_blocks: int) -> int:
    return max(1, min(n_heads, _ITEMS_PER_GEMM // n_blocks))


def _forward_group(qsu: Tensor, ku: Tensor, vu: Tensor, qsc: Tensor, kc: Tensor, vc: Tensor,
                   lookahead: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1 on block-major ``(N, G, C, D)`` inputs (``G`` = batch x heads of one group); queries pre-scaled.

    Returns the normalised output ``(N, G, C, D)``, the log-sum-exp ``(N, G, C)`` and the final ``U`` ``(N, G, C, D)``.
    """
    N, G, C, _ = qsu.shape
    dev = qsu.device
    u = torch.zeros_like(qsu)  # (N, G, C, D): running lookahead keys per owner block
    tri = torch.ones(C, C, dtype=torch.bool, device=dev).tril()  # (C, C)

    # diagonal blocks (k = 0)
    g_prev = _gate(qsu, ku, _gate_mask(C, 0, lookahead, dev))  # G(j, j): (N, G, C, C)
    cm = _mm(qsc, vu.transpose(-1, -2)).tril_()  # (N, G, C, C)
    s_u = _mm(cm, g_prev.transpose(-1, -2))  # (N, G, C, C)
    a = torch.baddbmm(_as3d(F.silu(s_u, inplace=True)), _as3d(qsc), _as3d(kc.transpose(-1, -2)),
                      beta=-_LOG2E, alpha=_LOG2E)  # logits in base 2
    a = a.view(N, G, C, C).masked_fill_(~tri, float("-inf"))  # (N, G, C, C)
    m = a.amax(dim=-1)  # (N, G, C)
    p = a.sub_(m[..., None]).exp2_()  # (N, G, C, C)
    l = p.sum(dim=-1)  # (N, G, C)
    o = _mm(p, vc)  # (N, G, C, D)

    for k in range(1, N):
        n = N - k
        if g_prev is not None:  # eq. (23): U_j += G(j, j+k-1) V^U_{j+k-1}
            _acc(u[:n], g_prev[:n], vu[k - 1 : k - 1 + n])
        mask = _gate_mask(C, k, lookahead, dev)
        g = None if mask is False else _gate(qsu[:n], ku[k:], mask)  # G(j, j+k)
        qa = qsc[k:]  # (n, G, C, D): query blocks a = j + k
        s_u = _mm(qa, u[:n].transpose(-1, -2))  # (n, G, C, C)   eq. (24)
        if g is not None:  # within-block correction
            _acc(s_u, cm[k:], g.transpose(-1, -2))
        a = torch.baddbmm(_as3d(F.silu(s_u, inplace=True)), _as3d(qa), _as3d(kc[:n].transpose(-1, -2)),
                          beta=-_LOG2E, alpha=_LOG2E).view(n, G, C, C)  # logits in base 2
        m_a = m[k:]
        m_new = torch.maximum(m_a, a.amax(dim=-1))  # (n, G, C)
        alpha = (m_a - m_new).exp2_()
        p = a.sub_(m_new[..., None]).exp2_()  # (n, G, C, C)
        l[k:].mul_(alpha).add_(p.sum(dim=-1))
        o[k:] *= alpha[..., None]
        _acc(o[k:], p, vc[:n])
        m[k:] = m_new
        g_prev = g

    return o.div_(l[..., None]), m.add_(torch.log2(l)), u  # the log-sum-exp in base 2


def _backward_group(qsu: Tensor, ku: Tensor, vu: Tensor, qsc: Tensor, kc: Tensor, vc: Tensor, o: Tensor, lse: Tensor,
                    u_saved: Tensor, do: Tensor, lookahead: int | None) -> tuple[Tensor, ...]:
    """Algorithm 3 on one group's block-major tensors; gradients w.r.t. the *scaled* queries for ``dq``."""
    N, G, C, _ = qsu.shape
    dev = qsu.device
    delta = (do * o).sum(dim=-1)  # (N, G, C)
    tri = torch.ones(C, C, dtype=torch.bool, device=dev).tril()

    dqu, dku, dvu, dqc, dkc, dvc = (torch.zeros_like(qsu) for _ in range(6))
    du = torch.zeros_like(qsu)  # gradient w.r.t. the running U, carried from later diagonals to earlier ones
    u = u_saved.clone()  # "un-updated" in place while walking back
    cm = _mm(qsc, vu.transpose(-1, -2)).tril_()  # (N, G, C, C)
    dcm = torch.zeros_like(cm)

    def gate_for(k: int, n: int) -> Tensor | None:
        mask = _gate_mask(C, k, lookahead, dev)
        return None if mask is False else _gate(qsu[:n], ku[k : k + n], mask)

    def gate_grad(k: int, n: int, g: Tensor, nds_u: Tensor) -> None:
        """Backward through the gate block G(j, j+k), j < n: its two uses are the within-block correction of
        step k (``cm G^T`` in S^U) and the U update of step k+1 (``G V^U``, j < n-1, gradient ``du``).
        ``nds_u`` is *minus* dL/dS^U; the sign is folded into the GEMMs' alpha."""
        _acc(dcm[k:], nds_u, g, -1.0)
        ndg = _mm(nds_u.transpose(-1, -2), cm[k:])  # (n, G, C, C): -dL/dG
        if n > 1:
            _acc(ndg[: n - 1], du[: n - 1], vu[k : k + n - 1].transpose(-1, -2), -1.0)
            _acc(dvu[k : k + n - 1], g[: n - 1].transpose(-1, -2), du[: n - 1])
        ndz = _sigmoid_backward(ndg, g)  # -dL/d(pre-sigmoid) (zero where masked: g = 0 there)
        _acc(dku[k:], ndz.transpose(-1, -2), qsu[:n], -1.0)
        _acc(dqu[:n], ndz, ku[k:], -1.0)

    g_cur = gate_for(N - 1, 1) if N > 1 else None
    for k in range(N - 1, 0, -1):
        n = N - k
        qa, doa, lse_a, delta_a = qsc[k:], do[k:], lse[k:], delta[k:]
        kj, uj = kc[:n], u[:n]
        s_u = _mm(qa, uj.transpose(-1, -2))  # (n, G, C, C)
        if g_cur is not None:
            _acc(s_u, cm[k:], g_cur.transpose(-1, -2))
        a = torch.baddbmm(_as3d(F.silu(s_u)), _as3d(qa), _as3d(kj.transpose(-1, -2)), beta=-_LOG2E, alpha=_LOG2E)
        p = a.view(n, G, C, C).sub_(lse_a[..., None]).exp2_()  # (n, G, C, C)
        da = _mm(doa, vc[:n].transpose(-1, -2)).sub_(delta_a[..., None]).mul_(p)  # dL/dA
        nds_u = _silu_backward(da, s_u)  # -dL/dS^U (A = S^C - SiLU(S^U)); the sign goes into the GEMMs' alpha
        _acc(dvc[:n], p.transpose(-1, -2), doa)
        _acc(dqc[k:], da, kj)
        _acc(dqc[k:], nds_u, uj, -1.0)
        _acc(dkc[:n], da.transpose(-1, -2), qa)
        if g_cur is not None:  # uses du before this step's contribution
            gate_grad(k, n, g_cur, nds_u)
        _acc(du[:n], nds_u.transpose(-1, -2), qa, -1.0)
        # reverse eq. (23): un-update U_j by G(j, j+k-1) V^U_{j+k-1}; that gate is also the next step's
        g_next = gate_for(k - 1, n + 1)
        if g_next is not None:
            _acc(u[:n], g_next[:n], vu[k - 1 : k - 1 + n], -1.0)
        g_cur = g_next

    # diagonal blocks (k = 0); u is back to zero here
    g = g_cur if N > 1 else gate_for(0, N)
    s_u = _mm(cm, g.transpose(-1, -2))  # (N, G, C, C)
    a = torch.baddbmm(_as3d(F.silu(s_u)), _as3d(qsc), _as3d(kc.transpose(-1, -2)), beta=-_LOG2E, alpha=_LOG2E)
    p = a.view(N, G, C, C).masked_fill_(~tri, float("-inf")).sub_(lse[..., None]).exp2_()  # (N, G, C, C)
    da = _mm(do, vc.transpose(-1, -2)).sub_(delta[..., None]).mul_(p)
    _acc(dvc, p.transpose(-1, -2), do)
    _acc(dqc, da, kc)
    _acc(dkc, da.transpose(-1, -2), qsc)
    gate_grad(0, N, g, _silu_backward(da, s_u))

    # cm = tril(Q^C V^U^T * scale), shared by every block row
    dcm.tril_()
    _acc(dqc, dcm, vu)
    _acc(dvu, dcm.transpose(-1, -2), qsc)
    return dqu, dku, dvu, dqc, dkc, dvc


class _CastleChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor,  # type: ignore[override]
                lookahead: int | None, scale: float, chunk_size: int) -> Tensor:
        Bsz, H, T, D = q_u.shape
        in_dtype = q_u.dtype
        dtype = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        C = min(chunk_size, T)
        N = -(-T // C)
        BH, dev = Bsz * H, q_u.device
        o = torch.empty(N, BH, C, D, dtype=dtype, device=dev)  # block-major over all heads
        lse = torch.empty(N, BH, C, dtype=dtype, device=dev)
        u = torch.empty(N, BH, C, D, dtype=dtype, device=dev)
        step = _heads_per_group(BH, N)
        for h0 in range(0, BH, step):
            h1 = min(BH, h0 + step)
            # the scale is folded into the two query tensors once: qs_c = Q^C * scale, qs_u = Q^U * scale
            xs = [_group_blocks(x, h0, h1, N, C, dtype, s) for x, s in
                  ((q_u, scale), (k_u, None), (v_u, None), (q_c, scale), (k_c, None), (v_c, None))]
            o[:, h0:h1], lse[:, h0:h1], u[:, h0:h1] = _forward_group(*xs, lookahead)
        ctx.save_for_backward(q_u, k_u, v_u, q_c, k_c, v_c, o, lse, u)
        ctx.meta = (lookahead, scale, T, C, N, dtype)
        return _unblock(o, Bsz, H, T).to(in_dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q_u, k_u, v_u, q_c, k_c, v_c, o, lse, u = ctx.saved_tensors
        lookahead, scale, T, C, N, dtype = ctx.meta
        Bsz, H, _, D = q_u.shape
        BH = Bsz * H
        grads = [torch.empty(N, BH, C, D, dtype=dtype, device=q_u.device) for _ in range(6)]
        step = _heads_per_group(BH, N)
        for h0 in range(0, BH, step):
            h1 = min(BH, h0 + step)
            xs = [_group_blocks(x, h0, h1, N, C, dtype, s) for x, s in
                  ((q_u, scale), (k_u, None), (v_u, None), (q_c, scale), (k_c, None), (v_c, None))]
            do = _group_blocks(grad_out, h0, h1, N, C, dtype, None)
            gs = _backward_group(*xs, o[:, h0:h1].contiguous(), lse[:, h0:h1].contiguous(),
                                 u[:, h0:h1].contiguous(), do, lookahead)
            for dst, src in zip(grads, gs):
                dst[:, h0:h1] = src
        grads[0].mul_(scale)  # gradients were taken w.r.t. the scaled queries
        grads[3].mul_(scale)
        return (*(_unblock(g, Bsz, H, T).to(x.dtype) for g, x in zip(grads, (q_u, k_u, v_u, q_c, k_c, v_c))),
                None, None, None)


def _group_blocks(x: Tensor, h0: int, h1: int, N: int, C: int, dtype: torch.dtype, s: float | None) -> Tensor:
    """Heads ``h0:h1`` (of the flattened batch x heads) of ``x (B, H, T, D)`` as block-major ``(N, h1-h0, C, D)``,
    zero-padded to N*C positions, in ``dtype``, optionally multiplied by ``s``.

    Block-major storage keeps a run of blocks ``x[k:]`` contiguous, so every batched matmul runs without copies."""
    T, D = x.shape[-2:]
    x = x.reshape(-1, T, D)[h0:h1]
    if N * C > T:
        x = F.pad(x, (0, 0, 0, N * C - T))
    x = x.reshape(h1 - h0, N, C, D).permute(1, 0, 2, 3)
    out = torch.empty((N, h1 - h0, C, D), dtype=dtype, device=x.device)
    return out.copy_(x) if s is None else torch.mul(x, s, out=out)


def _unblock(x: Tensor, Bsz: int, H: int, T: int) -> Tensor:
    """Block-major ``(N, B*H, C, D)`` back to ``(B, H, T, D)``."""
    N, _, C, D = x.shape
    return x.permute(1, 0, 2, 3).reshape(Bsz, H, N * C, D)[:, :, :T]


def castle_chunked(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
                   lookahead: int | None = None, scale: float | None = None, chunk_size: int = 64) -> Tensor:
    """CASTLE by the blocked algorithm; same contract as :func:`castle_parallel`, any ``T`` (ragged last chunk ok).

    ``chunk_size`` is the number of positions per block (``C``); ``lookahead`` is CASTLE-SWL's ``W`` (the lookahead
    key of token ``s`` summarises ``x_{s+1..s+W}``, the current token not counted; ``None``: full CASTLE).

    Inputs are validated by :func:`attnlab.ops.castle.castle_attention`; this function assumes six
    ``(B, H, T, D)`` tensors of one floating dtype on one device. float16/bfloat16 are computed in float32.
    """
    scale = 1.0 / math.sqrt(q_u.shape[-1]) if scale is None else float(scale)
    return _CastleChunked.apply(q_u, k_u, v_u, q_c, k_c, v_c, lookahead, scale, int(chunk_size))
