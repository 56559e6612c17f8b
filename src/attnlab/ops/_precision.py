"""Half precision computed in float32: a decorator for functional forms whose arithmetic needs the range."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

__all__ = ["HALF_DTYPES", "half_in_float32"]

HALF_DTYPES = (torch.float16, torch.bfloat16)

F = TypeVar("F", bound=Callable[..., Tensor])


def half_in_float32(fn: F) -> F:
    """Run ``fn`` in float32 when its first tensor argument is float16/bfloat16 and cast the result back.

    Every positional tensor argument is cast; keyword arguments are passed unchanged. Gradients flow back to the
    inputs in their own dtype (the casts are differentiable)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        first = args[0]
        if isinstance(first, Tensor) and first.dtype in HALF_DTYPES:
            cast = [a.float() if isinstance(a, Tensor) else a for a in args]
            return fn(*cast, **kwargs).to(first.dtype)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
