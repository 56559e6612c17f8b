"""Diagnostics of attention maps: entropy, concentration, head diversity, sink and local focus (spec
``shared/specs/deconstructing.md`` 6.2, from section 4.4 of Xue, Moosavi and Aletras, "Deconstructing Attention",
arXiv:2510.11602v1), for the maps that :func:`attnlab.layers.capture.capture_attention` records or a layer's
``attention_map`` returns. Pure tensor functions: nothing here runs a model.

Shape legend: ``...`` any leading dims (e.g. B batch), H heads, L query = key length (a square, causal map).
Positions are numbered from 1 in the formulas (i query, j key) and from 0 in code, as in the spec.

    H_i      = -sum_j A[i, j] log A[i, j]               entropy of row i (0 log 0 = 0)           (..., H, L)
    Conc     = ||A||_F                                  Frobenius norm of a head's map           (..., H)
    HeadDiv  = 2 / (L (L + 1)) sum_{i >= j} std_h A_h[i, j]   std across heads over the causal entries   (...)
    Sink     = (1 / L) sum_i A[i, 1]                    mass on the first token, mean over rows  (..., H)
    LocFoc_N = (1 / (L - N)) sum_{i > N} A[i, i - N]    mass N positions back, mean over the L - N rows that
                                                        have such a key                           (..., H)

The paper prints LocFoc ambiguously; the reading above (the N-th sub-diagonal, N in {0, 1, 2, 3}) is the spec's
(reconstruction: not stated in the paper), as are two choices made here: the std across heads is the population
std (divisor H, so one head gives 0, not NaN), and LocFoc_N for ``N >= L`` (no such key) is NaN. The paper
min-max normalises H, Conc and HeadDiv and doubles LocFoc for its plots (Fig. 1); that is the plot's business,
so these are the raw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MapDiagnostics", "attention_diagnostics", "LOCAL_OFFSETS"]

#: The offsets N of LocFoc_N that the paper plots (spec 6.2).
LOCAL_OFFSETS: tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class MapDiagnostics:
    """The diagnostics of one set of maps ``(..., H, L, L)``; see the module docstring.

    Attributes:
        entropy: ``(..., H, L)`` the entropy of every row of every head (nats).
        conc: ``(..., H)`` the Frobenius norm of each head's map.
        head_div: ``(...)`` the mean std across heads over the causal entries.
        sink: ``(..., H)`` the mean attention to the first token.
        loc_foc: ``{N: (..., H)}`` the mean attention ``N`` positions back.
    """

    entropy: Tensor
    conc: Tensor
    head_div: Tensor
    sink: Tensor
    loc_foc: dict[int, Tensor]

    def summary(self) -> dict[str, float]:
        """One number per diagnostic, averaged over every leading dim and head (``entropy``: also over rows):
        ``{"entropy", "conc", "head_div", "sink", "loc_foc_0", ...}``."""
        out = {"entropy": self.entropy.mean(), "conc": self.conc.mean(), "head_div": self.head_div.mean(),
               "sink": self.sink.mean(), **{f"loc_foc_{n}": v.mean() for n, v in self.loc_foc.items()}}
        return {k: float(v) for k, v in out.items()}


def attention_diagnostics(A: Tensor, *, offsets: tuple[int, ...] = LOCAL_OFFSETS) -> MapDiagnostics:
    """The diagnostics of spec 6.2 for maps ``A`` ``(..., H, L, L)`` (rows are queries, columns keys).

    The maps are used as given: rows need not sum to 1 and entries above the diagonal are not masked, except that
    HeadDiv averages over the causal entries ``j <= i`` only, as its formula says.

    Args:
        A: floating-point attention maps, at least ``(H, L, L)``.
        offsets: the ``N`` of LocFoc_N, each an int ``>= 0``.

    Raises:
        ValueError: ``A`` is not a floating tensor of shape ``(..., H, L, L)``, or an offset is not an int ``>= 0``.
    """
    if not isinstance(A, Tensor) or not A.is_floating_point() or A.ndim < 3 or A.shape[-1] != A.shape[-2] \
            or A.shape[-1] < 1 or A.shape[-3] < 1:
        got = (tuple(A.shape), A.dtype) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"A must be a floating tensor of shape (..., H, L, L) with H, L >= 1, got {got}")
    for n in offsets:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"offsets must be ints >= 0, got {offsets!r}")
    L = A.shape[-1]
    entropy = -torch.xlogy(A, A).sum(-1)  # (..., H, L)
    conc = torch.linalg.matrix_norm(A, ord="fro")  # (..., H)
    causal = torch.ones(L, L, dtype=torch.bool, device=A.device).tril()  # (L, L), j <= i
    std = A.std(dim=-3, correction=0)  # (..., L, L)
    head_div = (std * causal).sum((-2, -1)) * (2.0 / (L * (L + 1)))  # (...)
    sink = A[..., :, 0].mean(-1)  # (..., H)
    loc_foc = {}
    for n in offsets:
        if n < L:
            loc_foc[n] = torch.diagonal(A, offset=-n, dim1=-2, dim2=-1).mean(-1)  # (..., H): A[i, i - n], L - n rows
        else:
            loc_foc[n] = torch.full(A.shape[:-2], float("nan"), dtype=A.dtype, device=A.device)  # (..., H)
    return MapDiagnostics(entropy=entropy, conc=conc, head_div=head_div, sink=sink, loc_foc=loc_foc)
