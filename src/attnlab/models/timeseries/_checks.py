"""The input check shared by the forecasting models (raised at the boundary, before any matmul)."""

from __future__ import annotations

from torch import Tensor


def check_window(x: object, *, look_back: int | None, n_channels: int, arg: str = "x") -> Tensor:
    """``x`` must be a floating tensor ``(B, L, V)`` with ``V == n_channels`` (and ``L == look_back`` unless that
    is ``None``)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor of shape (B, L, V), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{arg} must be a floating-point tensor, got {x.dtype}")
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] != n_channels:
        raise ValueError(f"{arg} must have shape (B, L, V={n_channels}) with B, L >= 1, got {tuple(x.shape)}")
    if look_back is not None and x.shape[1] != look_back:
        raise ValueError(f"{arg} must hold look_back={look_back} steps, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x
