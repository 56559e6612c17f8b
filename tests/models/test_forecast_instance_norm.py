"""Instance normalisation of look-back windows (``instance_norm=True``) in every forecasting model: the definition
(the same weights without the option, fed the standardised window, then mapped back), exact shift equivariance,
causality kept, the teacher-forced path standardising the target with the look-back's statistics, config checks."""

from __future__ import annotations

import pytest
import torch

from attnlab.config import from_dict, to_dict
from attnlab.models.timeseries import ForecastModelConfig
from attnlab.models.timeseries.instance_norm import EPS, WindowScale

F64 = torch.float64
L, T, V = 12, 6, 3
SMALL = {
    "dlinear": {"kernel_size": 5},
    "transformer": {"n_layers": 2, "d_model": 16, "n_heads": 2, "dropout": 0.0},
    "autohformer": {"n_layers": 2, "d_model": 16, "n_heads": 2, "ffn_hidden": 24, "window": 6, "segment_len": 3,
                    "dropout": 0.0},
}


def _pair(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights with and without instance normalisation, float64, eval mode."""
    models = []
    for norm in (True, False):
        cfg = from_dict(ForecastModelConfig, {"arch": arch, arch: {**SMALL[arch], "instance_norm": norm}})
        torch.manual_seed(0)
        models.append(cfg.build(look_back=L, horizon=T, n_channels=V).double().eval())
    models[1].load_state_dict(models[0].state_dict())
    return models[0], models[1]


def _x(B: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, L, V, generator=g, dtype=F64) * torch.tensor([1.0, 5.0, 0.2], dtype=F64) + 3.0


def test_window_scale_statistics() -> None:
    x = _x()
    s = WindowScale.of(x)
    torch.testing.assert_close(s.mean, x.mean(1, keepdim=True))
    torch.testing.assert_close(s.std, (((x - s.mean) ** 2).mean(1, keepdim=True) + EPS).sqrt())
    torch.testing.assert_close(s.restore(s.normalise(x)), x, rtol=0, atol=1e-12)
    z = s.normalise(x)
    torch.testing.assert_close(z.mean(1), torch.zeros(4, V, dtype=F64), rtol=0, atol=1e-12)
    const = torch.full((1, L, 1), 7.0, dtype=F64)  # a constant channel: std sqrt(eps), no division by zero
    assert bool(torch.isfinite(WindowScale.of(const).normalise(const)).all())


@pytest.mark.parametrize("arch", ["dlinear", "transformer", "autohformer"])
def test_instance_norm_is_the_plain_model_on_standardised_windows(arch: str) -> None:
    norm, plain = _pair(arch)
    x = _x()
    s = WindowScale.of(x)
    torch.testing.assert_close(norm(x), s.restore(plain(s.normalise(x))), rtol=0, atol=1e-12)
    shift = torch.randn(4, 1, V, dtype=F64) * 10  # per window and channel
    torch.testing.assert_close(norm(x + shift), norm(x) + shift, rtol=0, atol=1e-9)  # exact equivariance
    assert not torch.allclose(plain(x + shift), plain(x) + shift, atol=1e-3)  # the option is what gives it
    scaled = norm(x * 4.0)  # rescaling: equivariant up to eps
    torch.testing.assert_close(scaled, norm(x) * 4.0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["transformer", "autohformer"])
def test_instance_norm_keeps_the_forecast_causal_in_time(arch: str) -> None:
    """The statistics come from the look-back only: the forecast of one window does not depend on another window,
    and (AutoHFormer, teacher forcing) the prediction of horizon step s does not depend on the target from s on."""
    norm, _ = _pair(arch)
    x = _x()
    x2 = x.clone()
    x2[1:] += 100.0
    torch.testing.assert_close(norm(x2)[0], norm(x)[0], rtol=0, atol=0)
    if arch == "autohformer":
        norm.train()
        y = torch.randn(4, T, V, dtype=F64, requires_grad=True)
        out = norm(x, target=y)
        for s in range(T):
            (g,) = torch.autograd.grad(out[:, s].sum(), y, retain_graph=True)
            assert bool((g[:, s:] == 0).all()) and (s == 0 or float(g[:, :s].abs().sum()) > 0)
        sc = WindowScale.of(x)
        torch.testing.assert_close(out, sc.restore(norm.teacher_forced(sc.normalise(x), sc.normalise(y))),
                                   rtol=0, atol=1e-12)


def test_instance_norm_config() -> None:
    for arch in ("dlinear", "transformer", "autohformer"):
        cfg = from_dict(ForecastModelConfig, {"arch": arch, arch: {"instance_norm": True}})
        assert getattr(cfg, arch).instance_norm is True
        assert from_dict(ForecastModelConfig, to_dict(cfg)) == cfg
        assert getattr(ForecastModelConfig(), arch).instance_norm is False  # off by default
        with pytest.raises(ValueError, match=f"{arch}.instance_norm: expected true/false, got 1"):
            from_dict(ForecastModelConfig, {"arch": arch, arch: {"instance_norm": 1}})
        with pytest.raises(ValueError, match="instance_norm must be a bool"):
            type(getattr(cfg, arch))(instance_norm=1)  # type: ignore[arg-type]
