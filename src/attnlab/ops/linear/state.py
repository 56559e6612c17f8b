"""The recurrent state of linear attention, carried between segments and handed to every form."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LinearState"]


class LinearState(NamedTuple):
    """Recurrent state of linear attention after some keys.

    Attributes:
        kv: ``sum_j phi(k_j)^T v_j`` (plus any initial state), ``(B, H, F, Dv)``.
        z: ``sum_j phi(k_j)`` (plus any initial state), ``(B, H, F)``.
    """

    kv: Tensor
    z: Tensor

    @classmethod
    def zeros(cls, fq: Tensor, v: Tensor) -> LinearState:
        """The empty state for features ``fq`` ``(B, H, T, F)`` and values ``v`` ``(B, H, S, Dv)``."""
        B, H, _, F = fq.shape
        Dv = v.shape[-1]
        return cls(fq.new_zeros(B, H, F, Dv), fq.new_zeros(B, H, F))
