"""CASTLE, blocked O(T^2 D) algorithm (spec section 2.2, Algorithm 1) with its own backward (Algorithm 3).

Shape legend: B batch, H heads, T sequence length, D head dim, N number of blocks, C block size (the paper's
``B``; renamed to keep ``B`` for the batch). All inputs are ``(B, H, T, D)``.

Positions are split into N blocks of C (T is zero-padded at the end to N*C; padded positions are in the future of
every real position, so they never reach a real output, and their rows are dropped). Blocks are visited as a
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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["castle_chunked"]


def _gate_mask(C: int, k: int, window: int | None, device: torch.device) -> Tensor | None | bool:
    """Lookahead pass-through mask for owner block j and contributor block j+k: ``(C, C)`` bool.

    Owner ``s = jC + p``, contributor ``jC + kC + q``; allowed iff ``0 < kC + q - p (<= window)``.
    Returns ``None`` when every entry is allowed and ``False`` when none is (the gate block is then zero).
    """
    p = torch.arange(C, device=device)
    delta = k * C + p[None, :] - p[:, None]  # (C, C): contributor minus owner
    if window is None:
        if k >= 1:
            return None
        return delta > 0
    if k >= 1 and (k - 1) * C + 1 > window:  # smallest delta in the block exceeds W
        return False
    if k >= 1 and k * C + C - 1 <= window:  # largest delta within W
        return None
    return (delta > 0) & (delta <= window)


def _gate(q_u: Tensor, k_u: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """``G`` blocks: ``(n, B, H, C, C)`` from owner blocks ``q_u`` and contributor blocks ``k_u`` ``(n, B, H, C, D)``."""
    g = torch.sigmoid(q_u @ k_u.transpose(-1, -2) * scale)  # (n, B, H, C, C)
    if mask is not None:
        g = g.masked_fill(~mask, 0.0)
    return g


def _as3d(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _acc(out: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
    """``out += alpha * a @ b`` in place with one batched GEMM (``out`` is a contiguous run of blocks)."""
    _as3d(out).baddbmm_(_as3d(a), _as3d(b), alpha=alpha)


def _silu_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(x)
    return x * s, s * (1.0 + x * (1.0 - s))


class _CastleChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor,  # type: ignore[override]
                window: int | None, scale: float, block_size: int) -> Tensor:
        Bsz, H, T, D = q_u.shape
        in_dtype = q_u.dtype
        dtype = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        C = min(block_size, T)
        N = -(-T // C)
        pad = N * C - T

        def blocks(x: Tensor) -> Tensor:
            x = x.to(dtype)
            if pad:
                x = F.pad(x, (0, 0, 0, pad))
            # block-major (N, B, H, C, D): a run of blocks x[k:] stays contiguous, so batched matmuls need no copies
            return x.reshape(Bsz, H, N, C, D).permute(2, 0, 1, 3, 4).contiguous()

        qu, ku, vu, qc, kc, vc = (blocks(x) for x in (q_u, k_u, v_u, q_c, k_c, v_c))
        dev = qu.device
        tri = torch.ones(C, C, dtype=torch.bool, device=dev).tril()  # (C, C)

        # diagonal blocks (k = 0)
        g_prev = _gate(qu, ku, _gate_mask(C, 0, window, dev), scale)  # G(j, j): (N, B, H, C, C)
        cm = (qc @ vu.transpose(-1, -2) * scale).masked_fill(~tri, 0.0)  # (N, B, H, C, C)
        s_u = cm @ g_prev.transpose(-1, -2)  # (N, B, H, C, C)
        a = (qc @ kc.transpose(-1, -2) * scale - F.silu(s_u)).masked_fill(~tri, float("-inf"))
        m = a.amax(dim=-1)  # (N, B, H, C)
        p = torch.exp(a - m[..., None])  # (N, B, H, C, C)
        l = p.sum(dim=-1)  # (N, B, H, C)
        o = p @ vc  # (N, B, H, C, D)

        u = torch.zeros_like(qu)  # (N, B, H, C, D): running lookahead keys per owner block
        for k in range(1, N):
            n = N - k
            if g_prev is not None:  # eq. (23): U_j += G(j, j+k-1) V^U_{j+k-1}
                _acc(u[:n], g_prev[:n], vu[k - 1 : k - 1 + n])
            mask = _gate_mask(C, k, window, dev)
            g = None if mask is False else _gate(qu[:n], ku[k:], mask, scale)  # G(j, j+k)
            qa = qc[k:]  # (n, B, H, C, D): query blocks a = j + k
            s_u = qa @ u[:n].transpose(-1, -2) * scale  # (n, B, H, C, C)   eq. (24)
            if g is not None:
                _acc(s_u, cm[k:], g.transpose(-1, -2))
            a = qa @ kc[:n].transpose(-1, -2) * scale - F.silu(s_u)  # (n, B, H, C, C)
            m_a = m[k:]
            m_new = torch.maximum(m_a, a.amax(dim=-1))  # (n, B, H, C)
            alpha = torch.exp(m_a - m_new)
            p = torch.exp(a - m_new[..., None])
            l[k:] = l[k:] * alpha + p.sum(dim=-1)
            o[k:] *= alpha[..., None]
            _acc(o[k:], p, vc[:n])
            m[k:] = m_new
            g_prev = g

        o = o / l[..., None]
        lse = m + torch.log(l)  # (N, B, H, C)
        ctx.save_for_backward(qu, ku, vu, qc, kc, vc, o, lse, u)
        ctx.meta = (window, scale, T, C, N, in_dtype)
        return o.permute(1, 2, 0, 3, 4).reshape(Bsz, H, N * C, D)[:, :, :T].to(in_dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        qu, ku, vu, qc, kc, vc, o, lse, u_saved = ctx.saved_tensors
        window, scale, T, C, N, in_dtype = ctx.meta
        _, Bsz, H, _, D = qu.shape
        dtype, dev = qu.dtype, qu.device
        do = grad_out.to(dtype)
        if N * C > T:
            do = F.pad(do, (0, 0, 0, N * C - T))
        do = do.reshape(Bsz, H, N, C, D).permute(2, 0, 1, 3, 4).contiguous()  # (N, B, H, C, D)
        delta = (do * o).sum(dim=-1)  # (N, B, H, C)
        tri = torch.ones(C, C, dtype=torch.bool, device=dev).tril()

        dqu, dku, dvu, dqc, dkc, dvc = (torch.zeros_like(qu) for _ in range(6))
        du = torch.zeros_like(qu)  # gradient w.r.t. the running U, carried from later diagonals to earlier ones
        u = u_saved.clone()
        cm = (qc @ vu.transpose(-1, -2) * scale).masked_fill(~tri, 0.0)  # (N, B, H, C, C)
        dcm = torch.zeros_like(cm)

        def gate_for(k: int, n: int) -> Tensor | None:
            mask = _gate_mask(C, k, window, dev)
            return None if mask is False else _gate(qu[:n], ku[k : k + n], mask, scale)

        g_cur = gate_for(N - 1, 1) if N > 1 else None
        for k in range(N - 1, 0, -1):
            n = N - k
            qa, doa, lse_a, delta_a = qc[k:], do[k:], lse[k:], delta[k:]
            kj, vj, uj = kc[:n], vc[:n], u[:n]
            s_u = qa @ uj.transpose(-1, -2) * scale  # (n, B, H, C, C)
            if g_cur is not None:
                _acc(s_u, cm[k:], g_cur.transpose(-1, -2))
            silu, dsilu = _silu_and_grad(s_u)
            a = qa @ kj.transpose(-1, -2) * scale - silu
            p = torch.exp(a.sub_(lse_a[..., None]))  # (n, B, H, C, C)
            da = p * (doa @ vj.transpose(-1, -2)).sub_(delta_a[..., None])  # dL/dA
            ds_u = dsilu.mul_(da).neg_()  # dL/dS^U
            _acc(dvc[:n], p.transpose(-1, -2), doa)
            _acc(dqc[k:], da, kj, scale)
            _acc(dqc[k:], ds_u, uj, scale)
            _acc(dkc[:n], da.transpose(-1, -2), qa, scale)
            _acc(du[:n], ds_u.transpose(-1, -2), qa, scale)
            dz = None
            if g_cur is not None:  # within-block correction tril(Q^C V^U^T) G(j, j+k)^T
                _acc(dcm[k:], ds_u, g_cur)
                dz = (ds_u.transpose(-1, -2) @ cm[k:]).mul_(g_cur * (1.0 - g_cur))  # (n, B, H, C, C)
                _acc(dku[k:], dz.transpose(-1, -2), qu[:n], scale)
                _acc(dqu[:n], dz, ku[k:], scale)
            # reverse eq. (23): U_j += G(j, j+k-1) V^U_{j+k-1}; its gradient is the du accumulated so far
            g_next = gate_for(k - 1, n + 1)  # G(j, j+k-1) for j <= n: this step's update and the next step's gate
            if g_next is not None:
                gp = g_next[:n]
                vprev = vu[k - 1 : k - 1 + n]
                _acc(dvu[k - 1 : k - 1 + n], gp.transpose(-1, -2), du[:n])
                dzp = (du[:n] @ vprev.transpose(-1, -2)).mul_(gp * (1.0 - gp))
                _acc(dku[k - 1 : k - 1 + n], dzp.transpose(-1, -2), qu[:n], scale)
                _acc(dqu[:n], dzp, ku[k - 1 : k - 1 + n], scale)
                _acc(u[:n], gp, vprev, -1.0)  # un-update U
            g_cur = g_next

        # diagonal blocks (k = 0); u is back to zero here
        g = g_cur if N > 1 else gate_for(0, N)
        s_u = cm @ g.transpose(-1, -2)  # (N, B, H, C, C)
        silu, dsilu = _silu_and_grad(s_u)
        a = (qc @ kc.transpose(-1, -2) * scale - silu).masked_fill(~tri, float("-inf"))
        p = torch.exp(a - lse[..., None])  # (N, B, H, C, C)
        da = p * (do @ vc.transpose(-1, -2) - delta[..., None])
        ds_u = -dsilu * da
        dvc += p.transpose(-1, -2) @ do
        dqc += da @ kc * scale
        dkc += da.transpose(-1, -2) @ qc * scale
        dcm += ds_u @ g
        dz = (ds_u.transpose(-1, -2) @ cm) * g * (1.0 - g)
        dqu += dz @ ku * scale
        dku += dz.transpose(-1, -2) @ qu * scale

        # cm = tril(Q^C V^U^T * scale), shared by every block row
        dcm = dcm.masked_fill(~tri, 0.0)
        dqc += dcm @ vu * scale
        dvu += dcm.transpose(-1, -2) @ qc * scale

        def out(x: Tensor) -> Tensor:
            return x.permute(1, 2, 0, 3, 4).reshape(Bsz, H, N * C, D)[:, :, :T].to(in_dtype)

        return out(dqu), out(dku), out(dvu), out(dqc), out(dkc), out(dvc), None, None, None


def castle_chunked(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
                   window: int | None = None, scale: float | None = None, block_size: int = 64) -> Tensor:
    """CASTLE by the blocked algorithm; same contract as :func:`castle_parallel`, any ``T`` (ragged last block ok).

    Inputs are validated by :func:`attnlab.ops.castle.castle_attention`; this function assumes six
    ``(B, H, T, D)`` tensors of one floating dtype on one device. float16/bfloat16 are computed in float32.
    """
    scale = 1.0 / math.sqrt(q_u.shape[-1]) if scale is None else float(scale)
    return _CastleChunked.apply(q_u, k_u, v_u, q_c, k_c, v_c, window, scale, int(block_size))
