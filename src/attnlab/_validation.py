"""Argument checks shared by the configs, layers, caches and masks of attnlab.

Shape legend: B batch, T sequence length, d_model model width.

Every check raises ``ValueError`` with a message that names the argument, what was expected and what was
received (DESIGN.md), and returns the checked value where that is convenient for assignment. The messages are
part of the tested behaviour of the call sites: change them only together with the tests that match them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_int",
    "check_bool",
    "check_float",
    "check_head_geometry",
    "check_layer_input",
    "check_layer_context",
    "check_matches_param",
    "resolve_device_dtype",
]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` must be an ``int`` (not a ``bool``) ``>= minimum``; returns it.

    Raises:
        ValueError: ``"{name} must be an int >= {minimum}, got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` must be a ``bool`` (``0``/``1`` are refused); returns it.

    Raises:
        ValueError: ``"{name} must be a bool, got {value!r}"``.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> float:
    """``value`` must be a real number (``int`` or ``float``, not ``bool``) within the given bounds; returns it.

    NaN never passes. The message depends on the upper bound:

    * ``high=None`` (no upper bound, infinity allowed): ``"{name} must be a number > {low}, got ..."``
      (``>=`` when ``low_inclusive``);
    * ``high=math.inf`` with ``high_inclusive=False`` (finite values only):
      ``"{name} must be a finite float >= {low}, got ..."``;
    * otherwise an interval: ``"{name} must be a float in [{low}, {high}), got ..."`` (brackets following the
      inclusiveness).

    Raises:
        ValueError: if ``value`` is not a number or is out of range.
    """
    if high is None:
        what = f"a number {'>=' if low_inclusive else '>'} {low}"
    elif high == math.inf and not high_inclusive:
        what = f"a finite float {'>=' if low_inclusive else '>'} {low}"
    else:
        what = f"a float in {'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    ok = (low <= value) if low_inclusive else (low < value)
    if high is not None:
        ok = ok and ((value <= high) if high_inclusive else (value < high))
    if not ok:  # NaN compares False everywhere, so it lands here
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_head_geometry(d_model: object, n_heads: object, head_dim: object, n_kv_heads: object = None) -> None:
    """Validate the head layout shared by the attention layer configs.

    ``d_model`` and ``n_heads`` are ints ``>= 1``. ``head_dim=None`` means ``d_model // n_heads``, so then
    ``n_heads`` must divide ``d_model``; an explicit ``head_dim`` is an int ``>= 1``. ``n_kv_heads`` (``None``:
    ``n_heads``) is an int ``>= 1`` that divides ``n_heads``.

    Raises:
        ValueError: naming the first offending argument.
    """
    d = check_int("d_model", d_model, 1)
    h = check_int("n_heads", n_heads, 1)
    if head_dim is None:
        if d % h:
            raise ValueError(f"n_heads={h} must divide d_model={d} (or pass head_dim explicitly)")
    else:
        check_int("head_dim", head_dim, 1)
    if n_kv_heads is not None:
        hkv = check_int("n_kv_heads", n_kv_heads, 1)
        if h % hkv:
            raise ValueError(f"n_kv_heads={hkv} must divide n_heads={h}")


def check_matches_param(arg: str, t: Tensor, reference_param: Tensor) -> None:
    """``t`` must have the dtype and the device of ``reference_param`` (a layer's weight).

    Raises:
        ValueError: ``"{arg} dtype must be the layer's parameter dtype ..., got ..."`` or the same for device.
    """
    if t.dtype != reference_param.dtype:
        raise ValueError(f"{arg} dtype must be the layer's parameter dtype {reference_param.dtype}, got {t.dtype}")
    if t.device != reference_param.device:
        raise ValueError(f"{arg} device must be the layer's parameter device {reference_param.device}, got {t.device}")


def check_layer_input(x: object, *, d_model: int, reference_param: Tensor | None, arg: str = "x") -> Tensor:
    """A layer's input must be a tensor of shape ``(B, T, d_model)`` with ``B, T >= 1``; returns it.

    With ``reference_param`` (a layer weight, hence floating point) it must also have that parameter's dtype
    and device (:func:`check_matches_param`); ``None`` leaves dtype and device to the caller.

    Raises:
        ValueError: naming ``arg``, the expected and the received type/shape/dtype/device.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor of shape (B, T, d_model={d_model}), got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{arg} must have shape (B, T, d_model={d_model}), got {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{arg} must have B >= 1 and T >= 1, got shape {tuple(x.shape)}")
    if reference_param is not None:
        check_matches_param(arg, x, reference_param)
    return x


def check_layer_context(context: object, *, d_model: int, batch_size: int) -> Tensor:
    """A cross-attention ``context`` must be a tensor of shape ``(batch_size, S, d_model)`` with ``S >= 1``;
    returns it. Its dtype and device are left to the caller.

    Raises:
        ValueError: naming ``context``, the expected and the received type/shape.
    """
    if not isinstance(context, Tensor):
        raise ValueError(
            f"context must be a torch.Tensor of shape (B, S, d_model={d_model}), got {type(context).__name__}")
    if context.ndim != 3 or context.shape[-1] != d_model or context.shape[0] != batch_size or context.shape[1] < 1:
        raise ValueError(
            f"context must have shape (B={batch_size}, S >= 1, d_model={d_model}), got {tuple(context.shape)}")
    return context


def resolve_device_dtype(
    device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """A cache's storage place: ``device`` (default CPU) and ``dtype`` (default: torch's default dtype).

    Raises:
        ValueError: if the dtype is not floating point.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = dtype if dtype is not None else torch.get_default_dtype()
    if not dt.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dt}")
    return dev, dt
