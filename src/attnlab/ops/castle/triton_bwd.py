"""CASTLE backward step as a Triton kernel (spec §2.3 Algorithm 3): the forward's wavefront in reverse.

Shape legend and block layout as in :mod:`attnlab.ops.castle.triton_fwd`.

The host launches k = N-1 .. 0 with the forward's (bh, j) grid. Each program recomputes S^U and A for its block from
the current D state, P = exp(A - lse), dA = P ⊙ (dO V^C^T - Δ) with Δ = rowsum(dO ⊙ O), dS^U = -SiLU'(S^U) ⊙ dA, and
accumulates the gradients of eq. (24) (Q^C, K^C, V^C, the within-block V^U/K^U and Q^U terms, and dD_c). It then
back-propagates the accumulated dD_c (which holds the gradient of every S^U block that used D_c at this diagonal or
later) through eq. (23) into V^U_{r-1}, K^U_{r-1} and Q^U_c, and "un-updates" D_c -= G(c, r-1) V^U_{r-1} to recover
the state of diagonal k-1. A program writes dV^U/dK^U at both row blocks r and r-1; as in the paper, the
r-contributions and the (r-1)-contributions go to two separate accumulators that are summed at the end, so programs
of one launch never write the same memory. All gradient accumulators are float32 (float64 for float64 inputs).

The kernel is a plain function, wrapped by ``triton.jit`` or the interpreter in ``triton_kernel._kernels()``; it
calls no helper jit functions, so that the same source works under both wrappers.
"""

from __future__ import annotations

import triton.language as tl

__all__ = ["castle_bwd_step"]


def castle_bwd_step(
    QU, KU, VU, QC, KC, VC, DO,  # inputs and upstream gradient, (BH, T, Dp) contiguous
    LSE, DELTA,  # (BH, Tp) accumulator dtype
    DST, DDST,  # D state (un-updated in place) and its gradient, (BH, Tp, Dp)
    DQU, DKU_A, DKU_B, DVU_A, DVU_B, DQC, DKC, DVC,  # gradient accumulators (BH, Tp, Dp)
    T, k, lookahead, scale,
    stride_in, stride_st, stride_row, stride_vec,
    HAS_LOOKAHEAD: tl.constexpr, CHUNK: tl.constexpr, HEAD_D: tl.constexpr, PREC: tl.constexpr, MM_DT: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    r = j + k
    dt = MM_DT  # matmul operand dtype: the input dtype (float32 for bfloat16 under the interpreter)
    acc_dt = DST.dtype.element_ty
    ar = tl.arange(0, CHUNK)
    dd = tl.arange(0, HEAD_D)
    rows = r * CHUNK + ar
    cols = j * CHUNK + ar
    rmask = rows < T
    cmask = cols < T
    r_off = bh * stride_in + rows[:, None] * stride_row + dd[None, :]
    c_off = bh * stride_in + cols[:, None] * stride_row + dd[None, :]
    qc = tl.load(QC + r_off, mask=rmask[:, None], other=0.0).to(dt)
    do = tl.load(DO + r_off, mask=rmask[:, None], other=0.0).to(dt)
    qu = tl.load(QU + c_off, mask=cmask[:, None], other=0.0).to(dt)
    kc = tl.load(KC + c_off, mask=cmask[:, None], other=0.0).to(dt)
    vc = tl.load(VC + c_off, mask=cmask[:, None], other=0.0).to(dt)
    vec_off = bh * stride_vec + rows
    lse = tl.load(LSE + vec_off)
    delta = tl.load(DELTA + vec_off)
    sr_off = bh * stride_st + rows[:, None] * stride_row + dd[None, :]  # scratch offsets, row block r
    sc_off = bh * stride_st + cols[:, None] * stride_row + dd[None, :]  # scratch offsets, key block c
    d_c = tl.load(DST + sc_off)  # D^{(k)}_c (after this diagonal's eq. (23) update)
    dd_c = tl.load(DDST + sc_off)

    # recompute S^U (eq. 24) and P
    su = tl.dot(qc, tl.trans(d_c.to(dt)), input_precision=PREC).to(acc_dt) * scale  # (C_r, C_c)
    need_r = True
    if HAS_LOOKAHEAD:
        need_r = r * CHUNK - (j * CHUNK + CHUNK - 1) <= lookahead
    ok_r = (cols[:, None] < rows[None, :]) & rmask[None, :]
    if HAS_LOOKAHEAD:
        ok_r = ok_r & (rows[None, :] <= cols[:, None] + lookahead)
    tri = rows[:, None] >= rows[None, :]
    g_r = tl.zeros((CHUNK, CHUNK), dtype=acc_dt)
    wv = tl.zeros((CHUNK, CHUNK), dtype=acc_dt)
    ku_r = tl.zeros((CHUNK, HEAD_D), dtype=dt)
    vu_r = tl.zeros((CHUNK, HEAD_D), dtype=dt)
    if need_r:
        ku_r = tl.load(KU + r_off, mask=rmask[:, None], other=0.0).to(dt)
        vu_r = tl.load(VU + r_off, mask=rmask[:, None], other=0.0).to(dt)
        z_r = tl.dot(qu, tl.trans(ku_r), input_precision=PREC).to(acc_dt) * scale  # (C_c, C_r)
        g_r = tl.where(ok_r, tl.sigmoid(z_r), 0.0)
        wv = tl.dot(qc, tl.trans(vu_r), input_precision=PREC).to(acc_dt) * scale  # (C_r, C_r)
        wv = tl.where(tri, wv, 0.0)
        su += tl.dot(wv.to(dt), tl.trans(g_r).to(dt), input_precision=PREC).to(acc_dt)
    s = tl.dot(qc, tl.trans(kc), input_precision=PREC).to(acc_dt) * scale
    sig_su = tl.sigmoid(su)
    a = s - su * sig_su
    valid = (rows[:, None] >= cols[None, :]) & cmask[None, :]
    p = tl.where(valid, tl.exp(a - lse[:, None]), 0.0)  # (C_r, C_c)

    # softmax and causal-score gradients
    dvc = tl.dot(tl.trans(p).to(dt), do, input_precision=PREC).to(acc_dt)  # (C_c, Dp)
    dp = tl.dot(do, tl.trans(vc), input_precision=PREC).to(acc_dt)  # (C_r, C_c)
    da = p * (dp - delta[:, None])
    dqc = tl.dot(da.to(dt), kc, input_precision=PREC).to(acc_dt) * scale  # (C_r, Dp)
    dkc = tl.dot(tl.trans(da).to(dt), qc, input_precision=PREC).to(acc_dt) * scale  # (C_c, Dp)

    # S^U gradient: SiLU'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))
    dsu = -da * (sig_su * (1.0 + su * (1.0 - sig_su)))  # (C_r, C_c)
    dqc += tl.dot(dsu.to(dt), d_c.to(dt), input_precision=PREC).to(acc_dt) * scale
    dd_c += tl.dot(tl.trans(dsu).to(dt), qc, input_precision=PREC).to(acc_dt) * scale
    dqu = tl.zeros((CHUNK, HEAD_D), dtype=acc_dt)
    if need_r:
        # within-block factor ((Q^C_r V^U_r^T * scale) ⊙ tri)
        e = tl.where(tri, tl.dot(dsu.to(dt), g_r.to(dt), input_precision=PREC).to(acc_dt), 0.0) * scale
        dqc += tl.dot(e.to(dt), vu_r, input_precision=PREC).to(acc_dt)
        dvu_a = tl.dot(tl.trans(e).to(dt), qc, input_precision=PREC).to(acc_dt)  # (C_r, Dp)
        # sigmoid factor G(c, r)
        dg = tl.dot(tl.trans(dsu).to(dt), wv.to(dt), input_precision=PREC).to(acc_dt)  # (C_c, C_r)
        f = tl.where(ok_r, dg * g_r * (1.0 - g_r), 0.0) * scale
        dqu += tl.dot(f.to(dt), ku_r, input_precision=PREC).to(acc_dt)
        dku_a = tl.dot(tl.trans(f).to(dt), qu, input_precision=PREC).to(acc_dt)  # (C_r, Dp)
        tl.store(DVU_A + sr_off, tl.load(DVU_A + sr_off) + dvu_a)
        tl.store(DKU_A + sr_off, tl.load(DKU_A + sr_off) + dku_a)

    # back through eq. (23) at this diagonal, then un-update D_c
    need_p = k > 0
    if HAS_LOOKAHEAD:
        need_p = need_p & ((r - 1) * CHUNK - (j * CHUNK + CHUNK - 1) <= lookahead)
    if need_p:
        prow = rows - CHUNK
        p_off = bh * stride_in + prow[:, None] * stride_row + dd[None, :]
        sp_off = bh * stride_st + prow[:, None] * stride_row + dd[None, :]
        ku_p = tl.load(KU + p_off, mask=(prow < T)[:, None], other=0.0).to(dt)
        vu_p = tl.load(VU + p_off, mask=(prow < T)[:, None], other=0.0).to(dt)
        z_p = tl.dot(qu, tl.trans(ku_p), input_precision=PREC).to(acc_dt) * scale  # (C_c, C_p)
        ok_p = (cols[:, None] < prow[None, :]) & (prow < T)[None, :]
        if HAS_LOOKAHEAD:
            ok_p = ok_p & (prow[None, :] <= cols[:, None] + lookahead)
        g_p = tl.where(ok_p, tl.sigmoid(z_p), 0.0)
        dvu_b = tl.dot(tl.trans(g_p).to(dt), dd_c.to(dt), input_precision=PREC).to(acc_dt)  # (C_p, Dp)
        dg_p = tl.dot(dd_c.to(dt), tl.trans(vu_p), input_precision=PREC).to(acc_dt)  # (C_c, C_p)
        f_p = tl.where(ok_p, dg_p * g_p * (1.0 - g_p), 0.0) * scale
        dqu += tl.dot(f_p.to(dt), ku_p, input_precision=PREC).to(acc_dt)
        dku_b = tl.dot(tl.trans(f_p).to(dt), qu, input_precision=PREC).to(acc_dt)  # (C_p, Dp)
        tl.store(DVU_B + sp_off, tl.load(DVU_B + sp_off) + dvu_b)
        tl.store(DKU_B + sp_off, tl.load(DKU_B + sp_off) + dku_b)
        d_c -= tl.dot(g_p.to(dt), vu_p, input_precision=PREC).to(acc_dt)
        tl.store(DST + sc_off, d_c)

    tl.store(DDST + sc_off, dd_c)
    tl.store(DQC + sr_off, tl.load(DQC + sr_off) + dqc)
    tl.store(DQU + sc_off, tl.load(DQU + sc_off) + dqu)
    tl.store(DKC + sc_off, tl.load(DKC + sc_off) + dkc)
    tl.store(DVC + sc_off, tl.load(DVC + sc_off) + dvc)
