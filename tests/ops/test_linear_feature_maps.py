"""Feature maps of linear attention: the Taylor identity, dimensions, registry errors."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.ops.linear import FEATURE_MAPS, feature_dim, feature_map_names, get_feature_map
from attnlab.ops.linear.feature_maps import elu1, relu, taylor


def test_registry_names_and_dims() -> None:
    assert feature_map_names() == ("elu1", "relu", "taylor")
    assert set(FEATURE_MAPS) == {"elu1", "relu", "taylor"}
    for d in (1, 5, 12):
        assert feature_dim("elu1", d) == d
        assert feature_dim("relu", d) == d
        assert feature_dim("taylor", d) == 1 + d + d * d
        for name in feature_map_names():
            x = torch.randn(2, 3, d, dtype=torch.float64)
            assert get_feature_map(name)(x).shape == (2, 3, feature_dim(name, d))


def test_unknown_feature_map_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"feature_map='exp'.*elu1, relu, taylor"):
        get_feature_map("exp")
    with pytest.raises(ValueError, match="feature_map"):
        feature_dim("softmax", 4)


def test_taylor_identity_exact_on_dyadic_inputs() -> None:
    # D = 16: D**(-1/4) = 1/2 and small integers keep every product exact; the only inexact factor is the
    # rounded 1/sqrt(2) on each side (sqrt(2) is irrational), so the identity holds to a few ulps of the result.
    d = 16
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-3, 4, (50, d), generator=g).to(torch.float64)
    k = torch.randint(-3, 4, (50, d), generator=g).to(torch.float64)
    s = (q * k).sum(-1) / math.sqrt(d)
    lhs = (taylor(q) * taylor(k)).sum(-1)
    rhs = 1 + s + s**2 / 2
    torch.testing.assert_close(lhs, rhs, rtol=4e-15, atol=0)  # ~16 ulps: only 1/sqrt(2) rounds
    # and the zeroth/first-order part alone is exact: 1 + s with s dyadic
    torch.testing.assert_close((taylor(q)[:, : 1 + d] * taylor(k)[:, : 1 + d]).sum(-1), 1 + s, rtol=0, atol=0)


@pytest.mark.parametrize("d", [1, 3, 12, 16])
def test_taylor_identity_random(d: int) -> None:
    q = torch.randn(40, d, dtype=torch.float64) * 2
    k = torch.randn(40, d, dtype=torch.float64) * 2
    s = (q * k).sum(-1) / math.sqrt(d)
    lhs = (taylor(q) * taylor(k)).sum(-1)
    torch.testing.assert_close(lhs, 1 + s + s**2 / 2, rtol=1e-13, atol=1e-13)
    assert (lhs >= 0.5 - 1e-12).all()  # 1 + s + s^2/2 >= 1/2: the normaliser never vanishes


def test_taylor_split_is_symmetric() -> None:
    # the 1/sqrt(D) scaling is split D^(-1/4) per side: the first-order block of phi(x) is x / D^(1/4)
    d = 9
    x = torch.randn(4, d, dtype=torch.float64)
    phi = taylor(x)
    torch.testing.assert_close(phi[:, 0], torch.ones(4, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(phi[:, 1 : 1 + d], x / d**0.25, rtol=1e-15, atol=0)
    second = phi[:, 1 + d :].reshape(4, d, d)
    torch.testing.assert_close(second, x[:, :, None] * x[:, None, :] / (math.sqrt(2) * math.sqrt(d)),
                               rtol=1e-14, atol=1e-15)


def test_elu1_and_relu_values() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(elu1(x), torch.where(x > 0, x + 1, torch.exp(x)), rtol=1e-15, atol=0)
    assert (elu1(torch.randn(1000, dtype=torch.float64) * 10) > 0).all()
    torch.testing.assert_close(relu(x), x.clamp_min(0), rtol=0, atol=0)
