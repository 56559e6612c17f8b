"""Batches of next-token-prediction windows from a 1-D token array (a :class:`~attnlab.data.Corpus` split).

Shapes: B batch size, T block size (window length). ``x`` holds tokens ``i .. i+T-1`` and ``y`` the tokens one
position later, ``i+1 .. i+T``; both are ``int64`` (``torch.long``) ``(B, T)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["sample_batch", "iterate_eval_batches", "count_eval_targets"]


def _check(tokens: np.ndarray, batch_size: int, context_len: int, who: str) -> None:
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1:
        got = f"shape {tokens.shape}" if isinstance(tokens, np.ndarray) else type(tokens).__name__
        raise ValueError(f"{who}: tokens must be a 1-D numpy array, got {got}")
    for arg, val in (("batch_size", batch_size), ("context_len", context_len)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{who}: {arg} must be a positive int, got {val!r}")
    if len(tokens) < context_len + 1:
        raise ValueError(
            f"{who}: context_len={context_len} needs at least context_len + 1 = {context_len + 1} tokens, but the split "
            f"has {len(tokens)}; use a smaller context_len or more data (e.g. a larger val_fraction)"
        )


def _to_device(a: np.ndarray, device: torch.device | str | None) -> Tensor:
    t = torch.from_numpy(a.astype(np.int64))
    if device is None:
        return t
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def sample_batch(
    tokens: np.ndarray,
    batch_size: int,
    context_len: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``context_len`` tokens: ``(x, y)``, each ``LongTensor (B, T)``.

    Window starts are drawn uniformly from ``[0, len(tokens) - context_len)`` with ``generator`` (a CPU
    ``torch.Generator``), so the same generator state gives the same batch on every device.
    """
    _check(tokens, batch_size, context_len, "sample_batch")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"sample_batch: generator must be a torch.Generator, got {type(generator).__name__}")
    starts = torch.randint(len(tokens) - context_len, (batch_size,), generator=generator).tolist()
    offsets = np.arange(context_len + 1)
    windows = np.asarray(tokens)[np.asarray(starts)[:, None] + offsets[None, :]]  # (B, T + 1)
    return _to_device(windows[:, :-1], device), _to_device(windows[:, 1:], device)


def iterate_eval_batches(
    tokens: np.ndarray,
    batch_size: int,
    context_len: int,
    device: torch.device | str | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Non-overlapping windows covering the whole split: every token but the first is a target exactly once.

    Windows start at ``0, T, 2T, ...``; full windows come in batches of up to ``batch_size`` and the last, partial
    window (length ``(len(tokens) - 1) % T``, if non-zero) comes alone as a final ``(1, T')`` batch. To get the
    loss over the whole split, weight each batch's mean loss by ``y.numel()``: the weights sum to
    ``len(tokens) - 1`` (:func:`count_eval_targets`).
    """
    _check(tokens, batch_size, context_len, "iterate_eval_batches")
    n_targets = len(tokens) - 1
    n_full = n_targets // context_len
    for first in range(0, n_full, batch_size):
        count = min(batch_size, n_full - first)
        lo = first * context_len
        chunk = np.asarray(tokens[lo : lo + count * context_len + 1])
        x = chunk[:-1].reshape(count, context_len)  # (B, T)
        y = chunk[1:].reshape(count, context_len)  # (B, T)
        yield _to_device(x, device), _to_device(y, device)
    rest = n_targets - n_full * context_len
    if rest:
        lo = n_full * context_len
        chunk = np.asarray(tokens[lo:])  # rest + 1 tokens
        yield _to_device(chunk[None, :-1], device), _to_device(chunk[None, 1:], device)


def count_eval_targets(tokens: np.ndarray) -> int:
    """Number of targets :func:`iterate_eval_batches` yields for ``tokens``: ``len(tokens) - 1``."""
    return max(len(tokens) - 1, 0)
