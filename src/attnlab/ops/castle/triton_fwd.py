"""CASTLE forward step as a Triton kernel (spec §2.2 Algorithm 1): one launch per block diagonal.

Shape legend: B batch, H heads, T sequence length, D head dim, BH = B * H, Dp = D padded to a power of two (>= 16),
C = CHUNK = chunk_size (positions per block; tiles are C x C, and a shape comment (C_r, C_c) names the blocks its rows
and columns come from), Tp = T rounded up to a multiple of C, N = Tp // C blocks. Positions are 0-based.
``lookahead`` is CASTLE-SWL's W (contributors s < j <= s + W; the current token is not counted), used when
HAS_LOOKAHEAD.

The host (:mod:`attnlab.ops.castle.triton_kernel`) launches this kernel once per block diagonal k = 0 .. N-1;
within a launch, program (bh, j) handles the score block (query rows r = j + k, key columns c = j). Programs of one
launch touch disjoint row blocks r and disjoint key blocks c, so no two programs race; launches run in stream order,
which serialises the diagonals.

* ``D`` state (BH, Tp, Dp), row-major per key position s (the transpose of the paper's d x L matrix): before diagonal
  k is processed, row s of block c holds the lookahead key of token s built from contributors in blocks c .. r-2.
  Program (r, c) with k >= 1 first applies eq. (23): D_c += G(c, r-1) V^U_{r-1}, so that D_c covers blocks
  c .. r-1 (every contributor that is fully earlier than the query block). It then forms eq. (24):
  S^U_{r,c} = Q^C_r D_c^T * scale + ((Q^C_r V^U_r^T * scale) ⊙ tri) G(c, r)^T, where the second term adds the
  contributors inside the query's own block (j' <= t). On the diagonal (k = 0) D_c is still 0, giving eq. (22).
* The scores A = Q^C_r K^C_c^T * scale + causal/length mask - SiLU(S^U) feed a FlashAttention-2 online softmax whose
  running (m, l, acc) live in global float32 buffers (BH, Tp) / (BH, Tp, Dp), read and written by the one program
  that owns row block r in each launch. Row block r is last touched at k = r (c = 0); that program normalises and
  writes the output and the log-sum-exp ``lse = m + log l``.
* Saved for backward: the inputs, the output, lse and the final D (O(T D) extra memory, as in the paper).

The kernel is a plain function, wrapped by ``triton.jit`` or the interpreter in ``triton_kernel._kernels()``; it
calls no helper jit functions, so that the same source works under both wrappers.
"""

from __future__ import annotations

import triton.language as tl

__all__ = ["castle_fwd_step"]


def castle_fwd_step(
    QU, KU, VU, QC, KC, VC,  # inputs, (BH, T, Dp) contiguous
    O, LSE,  # output (BH, T, Dp) input dtype; log-sum-exp (BH, Tp) accumulator dtype
    DST, MST, LST, AST,  # D state (BH, Tp, Dp); running max / sum (BH, Tp); running acc (BH, Tp, Dp)
    T, k, lookahead, scale,
    stride_in, stride_st, stride_row, stride_vec,
    HAS_LOOKAHEAD: tl.constexpr, CHUNK: tl.constexpr, HEAD_D: tl.constexpr, PREC: tl.constexpr, MM_DT: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    r = j + k  # query block; key block c = j
    dt = MM_DT  # matmul operand dtype: the input dtype (float32 for bfloat16 under the interpreter)
    acc_dt = DST.dtype.element_ty
    ar = tl.arange(0, CHUNK)
    dd = tl.arange(0, HEAD_D)
    rows = r * CHUNK + ar  # query positions t
    cols = j * CHUNK + ar  # key / lookahead-owner positions s
    rmask = rows < T
    cmask = cols < T
    r_off = bh * stride_in + rows[:, None] * stride_row + dd[None, :]
    c_off = bh * stride_in + cols[:, None] * stride_row + dd[None, :]
    qc = tl.load(QC + r_off, mask=rmask[:, None], other=0.0).to(dt)  # (C, Dp)
    qu = tl.load(QU + c_off, mask=cmask[:, None], other=0.0).to(dt)  # (C, Dp)
    kc = tl.load(KC + c_off, mask=cmask[:, None], other=0.0).to(dt)
    vc = tl.load(VC + c_off, mask=cmask[:, None], other=0.0).to(dt)
    dst_off = bh * stride_st + cols[:, None] * stride_row + dd[None, :]
    d_c = tl.load(DST + dst_off)  # (C, Dp) lookahead keys of block c from blocks c .. r-2

    # eq. (23): D_c += G(c, r-1) V^U_{r-1}, skipped when G(c, r-1) is identically zero
    need_p = k > 0
    if HAS_LOOKAHEAD:
        need_p = need_p & ((r - 1) * CHUNK - (j * CHUNK + CHUNK - 1) <= lookahead)
    if need_p:
        prow = rows - CHUNK
        p_off = bh * stride_in + prow[:, None] * stride_row + dd[None, :]
        ku_p = tl.load(KU + p_off, mask=(prow < T)[:, None], other=0.0).to(dt)
        vu_p = tl.load(VU + p_off, mask=(prow < T)[:, None], other=0.0).to(dt)
        z_p = tl.dot(qu, tl.trans(ku_p), input_precision=PREC).to(acc_dt) * scale  # (C_c, C_p)
        ok_p = (cols[:, None] < prow[None, :]) & (prow < T)[None, :]
        if HAS_LOOKAHEAD:
            ok_p = ok_p & (prow[None, :] <= cols[:, None] + lookahead)
        g_p = tl.where(ok_p, tl.sigmoid(z_p), 0.0)
        d_c += tl.dot(g_p.to(dt), vu_p, input_precision=PREC).to(acc_dt)
        tl.store(DST + dst_off, d_c)

    # eq. (24): S^U_{r,c} = Q^C_r D_c^T * scale + ((Q^C_r V^U_r^T * scale) ⊙ tri) G(c, r)^T
    su = tl.dot(qc, tl.trans(d_c.to(dt)), input_precision=PREC).to(acc_dt) * scale  # (C_r, C_c)
    need_r = True
    if HAS_LOOKAHEAD:
        need_r = r * CHUNK - (j * CHUNK + CHUNK - 1) <= lookahead
    if need_r:
        ku_r = tl.load(KU + r_off, mask=rmask[:, None], other=0.0).to(dt)
        vu_r = tl.load(VU + r_off, mask=rmask[:, None], other=0.0).to(dt)
        z_r = tl.dot(qu, tl.trans(ku_r), input_precision=PREC).to(acc_dt) * scale  # (C_c, C_r)
        ok_r = (cols[:, None] < rows[None, :]) & rmask[None, :]
        if HAS_LOOKAHEAD:
            ok_r = ok_r & (rows[None, :] <= cols[:, None] + lookahead)
        g_r = tl.where(ok_r, tl.sigmoid(z_r), 0.0)
        wv = tl.dot(qc, tl.trans(vu_r), input_precision=PREC).to(acc_dt) * scale  # (C_r, C_r)
        wv = tl.where(rows[:, None] >= rows[None, :], wv, 0.0)
        su += tl.dot(wv.to(dt), tl.trans(g_r).to(dt), input_precision=PREC).to(acc_dt)

    # eqs. (18)-(19): A = Q^C K^C^T * scale + M^C - SiLU(S^U), then the online softmax
    s = tl.dot(qc, tl.trans(kc), input_precision=PREC).to(acc_dt) * scale  # (C_r, C_c)
    a = s - su * tl.sigmoid(su)
    valid = (rows[:, None] >= cols[None, :]) & cmask[None, :]
    a = tl.where(valid, a, float("-inf"))
    vec_off = bh * stride_vec + rows
    m_prev = tl.load(MST + vec_off)
    l_prev = tl.load(LST + vec_off)
    ast_off = bh * stride_st + rows[:, None] * stride_row + dd[None, :]
    acc = tl.load(AST + ast_off)
    m_new = tl.maximum(m_prev, tl.max(a, 1))  # finite: every row block sees >= 1 valid key on its diagonal
    alpha = tl.exp(m_prev - m_new)
    p = tl.exp(a - m_new[:, None])
    l_new = l_prev * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(dt), vc, input_precision=PREC).to(acc_dt)
    if j == 0:  # last visit of row block r: normalise and write out
        out = acc / l_new[:, None]
        tl.store(O + r_off, out.to(O.dtype.element_ty), mask=rmask[:, None])
        tl.store(LSE + vec_off, m_new + tl.log(l_new))
    else:
        tl.store(MST + vec_off, m_new)
        tl.store(LST + vec_off, l_new)
        tl.store(AST + ast_off, acc)
