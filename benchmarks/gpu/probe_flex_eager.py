"""Probe (CUDA only): does the uncompiled FlexAttention differentiate a tensor its score_mod captures?

For float64 and float32, q/k/v (2, 2, 100, 16) requiring grad, and a score_mod that captures either a 0-dim scalar
(``s - g * |i - j|``, as attnlab's decayed attention captures ``gamma``) or a (B, H, T, S) table indexed per score
(``s + tab[b, h, i, j]``), each with and without ``requires_grad``; prints ``ok`` or the error. The H200 run
(torch 2.11, session 15) is in ``benchmarks/results/gpu-h200/probe-flex-eager.log``: only the captured 0-dim scalar
that requires grad fails (vmap: "can not return a BatchedTensor when out_dim is None"), in both dtypes.

    PYTHONPATH=src python benchmarks/gpu/probe_flex_eager.py
"""

import torch
from torch.nn.attention.flex_attention import flex_attention

torch.manual_seed(0)
for dt in (torch.float64, torch.float32):
    q, k, v = (torch.randn(2, 2, 100, 16, dtype=dt, device="cuda", requires_grad=True) for _ in range(3))
    for gr in (False, True):
        g = torch.tensor(0.4, dtype=dt, device="cuda", requires_grad=gr)
        tab = torch.randn(2, 2, 100, 100, dtype=dt, device="cuda", requires_grad=gr)
        mods = (("scalar", lambda s, b, h, i, j: s - g * (i - j).abs()),
                ("table", lambda s, b, h, i, j: s + tab[b, h, i, j]))
        for name, sm in mods:
            try:
                o = flex_attention(q, k, v, score_mod=sm)
                extra = ([g] if name == "scalar" else [tab]) if gr else []
                torch.autograd.grad(o.square().sum(), [q, k, v] + extra)
                r = "ok"
            except Exception as e:  # the probe reports any error
                r = f"{type(e).__name__}: {str(e)[:120]}"
            print(f"eager flex {dt} captured {name} requires_grad={gr}: {r}", flush=True)
