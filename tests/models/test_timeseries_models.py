"""Forecasting models: DLinear against a loop reference, channel independence; the Transformer forecaster is strictly
causal in time (perturbation and gradient, float64); configs and input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.config import ConfigError, from_dict, to_dict
from attnlab.models.timeseries import (
    DLinear,
    DLinearConfig,
    ForecastModelConfig,
    TransformerForecaster,
    TransformerForecasterConfig,
    moving_average,
)


def _moving_average_loop(x: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: for each step, the mean of the k steps centred on it, indices clamped to the series."""
    B, L, V = x.shape
    h = (k - 1) // 2
    out = torch.empty_like(x)
    for t in range(L):
        idx = [min(max(s, 0), L - 1) for s in range(t - h, t + h + 1)]
        out[:, t] = x[:, idx].mean(dim=1)
    return out


@pytest.mark.parametrize(("L", "k"), [(1, 1), (7, 3), (13, 25), (100, 25)])
def test_moving_average_equals_the_loop_reference(L: int, k: int) -> None:
    x = torch.randn(2, L, 3, dtype=torch.float64)
    torch.testing.assert_close(moving_average(x, k), _moving_average_loop(x, k), rtol=0, atol=1e-12)
    c = torch.full((1, L, 2), 3.25, dtype=torch.float64)
    torch.testing.assert_close(moving_average(c, k), c, rtol=0, atol=1e-14)


@pytest.mark.parametrize("individual", [False, True])
def test_dlinear_equals_its_definition(individual: bool) -> None:
    torch.manual_seed(0)
    L, T, V = 13, 5, 3
    m = DLinear(DLinearConfig(kernel_size=5, individual=individual), look_back=L, horizon=T, n_channels=V).double()
    x = torch.randn(4, L, V, dtype=torch.float64)
    seasonal, trend = m.decompose(x)
    torch.testing.assert_close(seasonal + trend, x, rtol=0, atol=1e-14)
    y = m(x)
    assert y.shape == (4, T, V)
    for v in range(V):  # each channel: W_s seasonal + b_s + W_t trend + b_t, one map per part
        if individual:
            ws, bs = m.seasonal.weight[v], m.seasonal.bias[v]
            wt, bt = m.trend.weight[v], m.trend.bias[v]
        else:
            ws, bs = m.seasonal.linear.weight, m.seasonal.linear.bias
            wt, bt = m.trend.linear.weight, m.trend.linear.bias
        want = seasonal[:, :, v] @ ws.T + bs + trend[:, :, v] @ wt.T + bt  # (B, T)
        torch.testing.assert_close(y[:, :, v], want, rtol=0, atol=1e-12)
    # channel independence: changing channel 0 leaves the forecasts of the others bit-identical
    x2 = x.clone()
    x2[:, :, 0] += 10.0
    y2 = m(x2)
    assert torch.equal(y[:, :, 1:], y2[:, :, 1:]) and not torch.equal(y[:, :, 0], y2[:, :, 0])


def _transformer(n_time_features: int = 0, **kw: object) -> TransformerForecaster:
    torch.manual_seed(1)
    cfg = TransformerForecasterConfig(n_layers=2, d_model=16, n_heads=2, dropout=0.0, **kw)  # type: ignore[arg-type]
    return TransformerForecaster(cfg, look_back=13, horizon=4, n_channels=3, n_time_features=n_time_features).double()


@pytest.mark.parametrize("L", [1, 7, 13, 63])
def test_transformer_states_are_strictly_causal_in_time(L: int) -> None:
    m = _transformer(n_time_features=2).eval()
    x = torch.randn(2, L, 3, dtype=torch.float64)
    marks = torch.rand(2, L, 2, dtype=torch.float64) - 0.5
    h = m.hidden(x, marks)  # (B, L, C)
    for p in sorted({0, L // 2, L - 2}):
        if p < 0 or p >= L - 1:
            continue
        x2, m2 = x.clone(), marks.clone()
        x2[:, p + 1 :] = torch.randn_like(x2[:, p + 1 :]) * 100.0
        m2[:, p + 1 :] = 0.5
        h2 = m.hidden(x2, m2)
        assert torch.equal(h[:, : p + 1], h2[:, : p + 1])  # bit-identical up to p
        assert not torch.equal(h[:, p + 1 :], h2[:, p + 1 :])  # (and the change is seen after it)
        # the gradient of step p's state w.r.t. every later input is exactly zero
        xg = x.clone().requires_grad_(True)
        mg = marks.clone().requires_grad_(True)
        m.hidden(xg, mg)[:, p].square().sum().backward()
        assert torch.count_nonzero(xg.grad[:, p + 1 :]) == 0 and torch.count_nonzero(mg.grad[:, p + 1 :]) == 0
        assert torch.count_nonzero(xg.grad[:, p]) > 0


def test_transformer_forecast_depends_on_the_whole_look_back_only_through_its_last_state() -> None:
    m = _transformer().eval()
    x = torch.randn(3, 13, 3, dtype=torch.float64)
    y = m(x)
    assert y.shape == (3, 4, 3)
    torch.testing.assert_close(y, m.head(m.hidden(x)[:, -1]).view(3, 4, 3), rtol=0, atol=0)
    # per-example == batched
    torch.testing.assert_close(torch.cat([m(x[i : i + 1]) for i in range(3)]), y, rtol=0, atol=1e-12)


def test_transformer_uses_attnlab_blocks_and_refuses_non_causal_attention() -> None:
    m = _transformer()
    assert [b.mechanism for b in m.blocks] == ["standard", "standard"]
    with pytest.raises(ValueError, match="mechanism 'bidirectional' .* is not causal, so a forecaster that is causal "
                                         "in time would see"):
        TransformerForecasterConfig(attention="bidirectional")
    w = TransformerForecasterConfig(attention="sliding-window", attention_options={"sliding-window": {"window": 4}})
    assert w.stack.mechanisms == ("sliding-window",) * 2


def test_input_errors_name_the_argument_and_shape() -> None:
    m = _transformer(n_time_features=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, V=3\)"):
        m(torch.randn(2, 13, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must hold look_back=13 steps, got 12"):
        m(torch.randn(2, 12, 3, dtype=torch.float64), torch.zeros(2, 12, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="built with 2 time features: pass x_marks"):
        m(torch.randn(2, 13, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        DLinear(DLinearConfig(), look_back=4, horizon=2, n_channels=1)(torch.zeros(1, 4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="kernel_size=4 must be odd"):
        DLinearConfig(kernel_size=4)
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=16"):
        TransformerForecasterConfig(d_model=16, n_heads=3)


def test_model_config_tree_round_trips_and_builds_each_arch() -> None:
    cfg = ForecastModelConfig(arch="transformer", transformer=TransformerForecasterConfig(n_layers=1, d_model=8,
                                                                                           n_heads=2))
    assert from_dict(ForecastModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="arch: expected one of 'dlinear', 'transformer', 'autohformer', got 'lstm'"):
        from_dict(ForecastModelConfig, {"arch": "lstm"})
    with pytest.raises(ConfigError, match="unknown config key 'dlinear.kernel'"):
        from_dict(ForecastModelConfig, {"dlinear": {"kernel": 3}})
    for arch, cls in (("dlinear", DLinear), ("transformer", TransformerForecaster)):
        m = ForecastModelConfig(arch=arch).build(look_back=8, horizon=3, n_channels=2)
        assert isinstance(m, cls) and isinstance(m, nn.Module)
        assert m(torch.randn(1, 8, 2)).shape == (1, 3, 2)
