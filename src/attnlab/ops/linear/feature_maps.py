"""Feature maps ``phi`` for linear attention (Katharopoulos et al. 2020; Based, Arora et al. 2024).

Linear attention replaces the softmax kernel ``exp(q.k / sqrt(D))`` by a dot product of features,
``phi(q) . phi(k)``, so that ``sum_j (phi(q) . phi(k_j)) v_j = phi(q) (sum_j phi(k_j)^T v_j)`` can be computed
from a running state. Every map here is applied identically to queries and keys.

Shapes: ``x`` is ``(..., D)``; ``phi(x)`` is ``(..., F)`` with ``F = feature_dim(name, D)``.

* ``elu1``:   ``phi(x) = elu(x) + 1`` (strictly positive), ``F = D``.
* ``relu``:   ``phi(x) = max(x, 0)`` (non-negative; ``phi(q) . z`` may be 0, then the output row is 0 thanks to
  ``eps`` in the normaliser), ``F = D``.
* ``taylor``: the second-order Taylor expansion of ``exp(s)`` with ``s = q.k / sqrt(D)``::

      phi(x) = [1,  x / D**(1/4),  vec(x x^T) / (sqrt(2) * D**(1/2))]        F = 1 + D + D**2

  so that ``phi(q) . phi(k) = 1 + s + s**2 / 2`` exactly (in real arithmetic). **Scaling split:** the
  ``1 / sqrt(D)`` of ``s`` is split symmetrically, ``D**(-1/4)`` on each of ``q`` and ``k`` (the second-order block
  therefore carries ``D**(-1/2)`` on each side, and ``1/sqrt(2)`` on each side gives the ``1/2``). The
  second-order block keeps both ``x_i x_j`` and ``x_j x_i`` (no symmetric compression), hence ``D**2`` entries.
  ``1 + s + s**2/2 >= 1/2`` for every ``s``, so the normaliser never vanishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FeatureMapName",
    "FeatureMap",
    "FEATURE_MAPS",
    "feature_map_names",
    "get_feature_map",
    "feature_dim",
    "elu1",
    "relu",
    "taylor",
]

FeatureMapName = Literal["elu1", "relu", "taylor"]


def elu1(x: Tensor) -> Tensor:
    """``elu(x) + 1``: positive, ``F = D``."""
    return F.elu(x) + 1.0


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)``: non-negative, ``F = D``."""
    return F.relu(x)


def taylor(x: Tensor) -> Tensor:
    """Based's second-order Taylor map; ``phi(q) . phi(k) = 1 + s + s**2/2`` with ``s = q.k / sqrt(D)``.

    ``D**(-1/4)`` of the ``1/sqrt(D)`` scaling is applied to each side (see the module docstring).
    """
    d = x.shape[-1]
    xs = x * d**-0.25  # (..., D): each side carries D^(-1/4), so xs_q . xs_k = q.k / sqrt(D)
    second = (xs.unsqueeze(-1) * xs.unsqueeze(-2)).flatten(-2) * (1.0 / math.sqrt(2.0))  # (..., D*D)
    ones = torch.ones(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)  # (..., 1)
    return torch.cat([ones, xs, second], dim=-1)  # (..., 1 + D + D*D)


@dataclass(frozen=True)
class FeatureMap:
    """A named feature map.

    Attributes:
        name: registry name.
        description: one line.
        fn: ``fn(x (..., D)) -> (..., F)``.
        dim: ``dim(D) -> F``.
    """

    name: str
    description: str
    fn: Callable[[Tensor], Tensor]
    dim: Callable[[int], int]

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


FEATURE_MAPS: dict[str, FeatureMap] = {
    "elu1": FeatureMap(name="elu1", description="elu(x) + 1 (Katharopoulos et al. 2020)", fn=elu1,
                       dim=lambda d: d),
    "relu": FeatureMap(name="relu", description="max(x, 0)", fn=relu, dim=lambda d: d),
    "taylor": FeatureMap(name="taylor", description="2nd-order Taylor map of exp(q.k/sqrt(D)) (Based)",
                         fn=taylor, dim=lambda d: 1 + d + d * d),
}
assert tuple(FEATURE_MAPS) == get_args(FeatureMapName)


def feature_map_names() -> tuple[str, ...]:
    """The valid ``feature_map=`` values."""
    return tuple(FEATURE_MAPS)


def get_feature_map(name: str) -> FeatureMap:
    """The map registered as ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    try:
        return FEATURE_MAPS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"feature_map={name!r} is not a known feature map; expected one of {', '.join(FEATURE_MAPS)}"
        ) from None


def feature_dim(name: str, head_dim: int) -> int:
    """``F``, the feature dimension of map ``name`` for query/key head dim ``head_dim``."""
    return get_feature_map(name).dim(head_dim)
