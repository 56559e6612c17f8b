"""A linear autoregressive forecaster fitted by least squares: the sanity baseline of the gradient extraction.

Shape legend: R rows, N variables, P lags, B windows.

``x̂_i = b_i + Σ_j Σ_p W[i, j, p] · x[j, p]`` over windows ``x (B, N, P)`` (``p = P - tau``), so its input gradient
is its coefficient, ``d x̂_i / d x_{j, t - tau} = W[i, j, P - tau]``, and :func:`~attnlab.discovery.lagged_scores`
must return ``|W|`` exactly (spec ``time_series.md`` D.9 oracle 6). Fitted on a linear VAR (G1) it is the classic
linear Granger estimate, which also makes it a baseline next to the transformer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from attnlab._validation import check_int

__all__ = ["LinearVAR", "fit_linear_var"]


class LinearVAR(nn.Module):
    """``forward(x (B, N, P)) -> (B, N)``: ``bias + einsum("ijp,bjp->bi", weight, x)``."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        if weight.ndim != 3 or weight.shape[0] != weight.shape[1] or bias.shape != (weight.shape[0],):
            raise ValueError(f"weight must be (N, N, P) and bias (N,), got {tuple(weight.shape)} and "
                             f"{tuple(bias.shape)}")
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.bias + torch.einsum("ijp,bjp->bi", self.weight, x)  # (B, N)

    def lagged_coefficients(self) -> np.ndarray:
        """``|W|`` in the extraction's layout ``[effect, cause, tau - 1]``."""
        return self.weight.detach().abs().flip(-1).double().numpy()


def fit_linear_var(windows: np.ndarray, targets: np.ndarray) -> LinearVAR:
    """Least squares (``numpy.linalg.lstsq``) of ``targets (B, N)`` on ``windows (B, N, P)`` with an intercept;
    float64 parameters."""
    x = np.asarray(windows, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 3 or y.ndim != 2 or y.shape != x.shape[:2]:
        raise ValueError(f"windows must be (B, N, P) and targets (B, N), got {x.shape} and {y.shape}")
    B, N, P = x.shape
    check_int("windows", B, N * P + 1)  # (at least as many windows as coefficients per equation)
    design = np.concatenate([x.reshape(B, N * P), np.ones((B, 1))], axis=1)  # (B, N * P + 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)  # (N * P + 1, N)
    weight = torch.from_numpy(np.ascontiguousarray(coef[:-1].T.reshape(N, N, P)))
    return LinearVAR(weight, torch.from_numpy(coef[-1].copy()))
