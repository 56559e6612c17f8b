"""Configuration of the forecasting models: one ``[model]`` table, ``arch`` choosing the model and one sub-table per
model (``[model.dlinear]``, ``[model.transformer]``, ``[model.autohformer]``).

The sizes the data decides (look-back ``L``, horizon ``T``, channels ``V``, time features ``F``) are not part of
these configs: they belong to the data config (:class:`attnlab.tasks.forecast.ForecastDataConfig`), and the task
passes them to :meth:`ForecastModelConfig.build`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from attnlab._validation import check_bool, check_float, check_head_geometry, check_int
from attnlab.config import PlainConfig
from attnlab.layers._common import HeadGeometry
from attnlab.models.common import Widths
from attnlab.models.stack import ResolvedStack, check_positive_ints, resolve_stack

__all__ = ["DLinearConfig", "TransformerForecasterConfig", "AutoHFormerConfig", "ForecastModelConfig", "ARCHS"]

ARCHS = ("dlinear", "transformer", "autohformer")


@dataclass(kw_only=True)
class DLinearConfig(PlainConfig):
    """A DLinear-style model (Zeng, Chen, Zhang, Xu, "Are Transformers Effective for Time Series Forecasting?",
    AAAI 2023, arXiv 2205.13504): a moving average splits each channel's look-back into trend and remainder
    (seasonal), and one linear map over time per part gives the forecast.

    Attributes:
        kernel_size: the moving average's width in steps (odd: the average is centred; the ends are padded by
            repeating the first and last value). 25 is the default of the DLinear release.
        individual: one pair of linear maps per channel instead of one pair shared by every channel.
        instance_norm: standardise each window per channel by its own look-back's mean and std, and map the
            forecast back (:mod:`attnlab.models.timeseries.instance_norm`; off by default).
    """

    model_class: ClassVar[type[nn.Module]]  # set by attnlab.models.timeseries.dlinear
    kernel_size: int = 25
    individual: bool = False
    instance_norm: bool = False

    def __post_init__(self) -> None:
        check_int("kernel_size", self.kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be odd (a centred moving average)")
        check_bool("individual", self.individual)
        check_bool("instance_norm", self.instance_norm)


@dataclass(kw_only=True)
class TransformerForecasterConfig(Widths, PlainConfig):
    """A small decoder-only Transformer over time steps whose attention is any registered **causal** mechanism
    (default ``"standard"``: full causal softmax attention), built from the shared residual blocks
    (:class:`attnlab.models.common.ResidualBlock`) and stack (:func:`attnlab.models.stack.resolve_stack`).

    Attributes:
        n_layers, d_model, n_heads, head_dim, ffn_hidden, dropout, rope_base, norm_eps: as in
            :class:`attnlab.models.lm.LMConfig`.
        attention: a registry name for every layer (must be causal).
        attention_options: per mechanism name, options for its layer config.
        instance_norm: standardise each window per channel by its own look-back's mean and std, and map the
            forecast back (:mod:`attnlab.models.timeseries.instance_norm`; off by default).
    """

    model_class: ClassVar[type[nn.Module]]  # set by attnlab.models.timeseries.transformer
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    head_dim: int | None = None
    attention: str = "standard"
    attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    ffn_hidden: int | None = None
    dropout: float = 0.1
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    instance_norm: bool = False

    def __post_init__(self) -> None:
        check_positive_ints(self, "n_layers", "d_model", "n_heads")
        check_bool("instance_norm", self.instance_norm)
        self.check_widths()
        self._stack: ResolvedStack = resolve_stack(
            attention=self.attention, schedule="uniform", n_layers=self.n_layers, options=self.attention_options,
            parity=False, d_model=self.d_model, n_heads=self.n_heads, head_dim=self.resolved_head_dim,
            rope_base=self.rope_base, dropout=self.dropout, causal=True, owner="a forecaster that is causal in time",
        )

    @property
    def stack(self) -> ResolvedStack:
        return self._stack


@dataclass(kw_only=True)
class AutoHFormerConfig(HeadGeometry, PlainConfig):
    """AutoHFormer (Zhang et al., arXiv 2506.16001) in the buildable reading of spec ``time_series.md`` C.6: tokens
    are time steps; windowed causal attention with exponential decay and relative sinusoidal keys; a coarse guess
    per segment of ``segment_len`` steps plus a per-step correction; teacher forcing in training, windowed
    autoregressive decoding (sliding key/value caches) at inference. Defaults are the released scripts' sizes
    (C.8: 3 layers, 16 heads, d_model 128, d_ff 256, dropout 0.1, W 32, gamma 0.5).

    Attributes:
        n_layers, d_model, n_heads, head_dim: the stack and its heads (``head_dim=None``: ``d_model // n_heads``).
        ffn_hidden: the feed-forward width (the paper's ``d_ff``).
        dropout: on the input projection and each residual branch.
        norm_eps: RMSNorm epsilon.
        window: the paper's ``W``, even: each step sees itself and the ``window / 2`` steps before it.
        decay: ``"multiplicative"`` (score times ``exp(-gamma d)``, the paper), ``"additive"`` (score minus
            ``gamma d``, an ablation) or ``"none"`` (``gamma = 0``).
        gamma_init: the decay rate at initialisation (``> 0``); ``gamma = softplus(raw)`` stays positive.
        relative: add the fixed sinusoidal relative encoding ``r_d`` to the keys (``q . (k + r_d)``).
        segment_len: steps ``H`` per segment; must divide the horizon (``1``: fully autoregressive; the horizon:
            one coarse guess plus corrections).
        segment_init: how a segment's coarse guess is made: ``"linear"`` (a linear map of the last visible state)
            or ``"block_transformer"`` (``segment_len`` learned queries attending to the last ``window / 2 + 1``
            visible top-layer states, one multi-head cross-attention, then a linear map to the channels).
        train_mode: ``"teacher_forcing"`` (one parallel pass over the look-back and the true horizon),
            ``"free_running"`` (the inference loop, differentiated) or ``"scheduled"`` (scheduled sampling in two
            parallel passes: a gradient-free teacher-forced pass predicts every horizon step, then each fed horizon
            value is that prediction with probability ``scheduled_prob`` and the truth otherwise).
        scheduled_prob: with ``train_mode="scheduled"``, the final probability of feeding a prediction, in
            ``[0, 1]``.
        scheduled_ramp: with ``train_mode="scheduled"``, training forward calls over which the probability rises
            linearly from 0 to ``scheduled_prob`` (``0``: constant from the start). The model counts its calls in a
            buffer saved with its weights, so a resumed run continues the schedule.
        instance_norm: standardise each window per channel by its own look-back's mean and std, and map the
            forecast back (:mod:`attnlab.models.timeseries.instance_norm`; off by default).
        impl: the attention form (:func:`attnlab.ops.decayed.decayed_window_attention`); ``"sdpa"`` needs a
            decay other than ``"multiplicative"``, ``"flex"`` cannot train on CPU.
    """

    model_class: ClassVar[type[nn.Module]]  # set by attnlab.models.timeseries.autohformer
    n_layers: int = 3
    d_model: int = 128
    n_heads: int = 16
    head_dim: int | None = None
    ffn_hidden: int = 256
    decay: Literal["multiplicative", "additive", "none"] = "multiplicative"
    dropout: float = 0.1
    norm_eps: float = 1e-5
    window: int = 32
    gamma_init: float = 0.5
    relative: bool = True
    segment_init: Literal["linear", "block_transformer"] = "linear"
    segment_len: int = 24
    train_mode: Literal["teacher_forcing", "free_running", "scheduled"] = "teacher_forcing"
    scheduled_prob: float = 0.5
    scheduled_ramp: int = 500
    instance_norm: bool = False
    impl: Literal["auto", "reference", "dense", "banded", "sdpa", "flex"] = "auto"

    def __post_init__(self) -> None:
        check_positive_ints(self, "n_layers")
        check_head_geometry(self.d_model, self.n_heads, self.head_dim)
        check_int("ffn_hidden", self.ffn_hidden, 1)
        check_float("dropout", self.dropout, low=0.0, high=1.0)
        check_float("norm_eps", self.norm_eps, low=0.0, low_inclusive=False, high=math.inf)
        check_int("window", self.window, 2)
        if self.window % 2:
            raise ValueError(f"window={self.window} must be even (the paper's W: each step sees the W / 2 steps "
                             "before it)")
        choices = {"decay": ("multiplicative", "additive", "none"), "segment_init": ("linear", "block_transformer"),
                   "train_mode": ("teacher_forcing", "free_running", "scheduled"),
                   "impl": ("auto", "reference", "dense", "banded", "sdpa", "flex")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}, got {getattr(self, name)!r}")
        check_float("gamma_init", self.gamma_init, low=0.0, low_inclusive=False, high=math.inf)
        check_bool("relative", self.relative)
        check_bool("instance_norm", self.instance_norm)
        check_int("segment_len", self.segment_len, 1)
        check_float("scheduled_prob", self.scheduled_prob, low=0.0, high=1.0, high_inclusive=True)
        check_int("scheduled_ramp", self.scheduled_ramp, 0)
        if self.impl == "sdpa" and self.decay == "multiplicative":
            raise ValueError("impl='sdpa' needs decay='additive' or 'none' (SDPA takes an additive float mask; the "
                             "multiplicative decay scales the scores); use impl='banded', 'dense', 'reference' or "
                             "'auto'")

    @property
    def lookback(self) -> int:
        """Steps before the current one that attention sees: ``window // 2``."""
        return self.window // 2

    def check_sizes(self, *, look_back: int, horizon: int, key: str = "", data_key: str = "") -> None:
        """Refuse sizes this config cannot forecast: ``segment_len`` must divide ``horizon`` (the horizon is K
        segments). Any look-back works (the window slides over it). ``key`` / ``data_key`` prefix the names in the
        error (``"model.autohformer."``, ``"data."``)."""
        if horizon % self.segment_len:
            raise ValueError(f"{key}segment_len={self.segment_len} must divide {data_key}horizon={horizon} (T = K "
                             "segments of segment_len steps)")


@dataclass(kw_only=True)
class ForecastModelConfig(PlainConfig):
    """The forecasting task's model: ``arch`` picks one, its sub-table configures it.

    Attributes:
        arch: ``"dlinear"`` (:class:`~attnlab.models.timeseries.DLinear`), ``"transformer"``
            (:class:`~attnlab.models.timeseries.TransformerForecaster`) or ``"autohformer"``
            (:class:`~attnlab.models.timeseries.AutoHFormer`).
        dlinear: the DLinear settings (used when ``arch == "dlinear"``).
        transformer: the Transformer settings (used when ``arch == "transformer"``).
        autohformer: the AutoHFormer settings (used when ``arch == "autohformer"``).
    """

    arch: Literal["dlinear", "transformer", "autohformer"] = "dlinear"
    dlinear: DLinearConfig = field(default_factory=DLinearConfig)
    transformer: TransformerForecasterConfig = field(default_factory=TransformerForecasterConfig)
    autohformer: AutoHFormerConfig = field(default_factory=AutoHFormerConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(map(repr, ARCHS))}, got {self.arch!r}")

    def check_sizes(self, *, look_back: int, horizon: int) -> None:
        """Refuse a ``look_back`` / ``horizon`` (the data config's) that the model of ``arch`` cannot take, naming
        both keys (``model.autohformer.segment_len=24 must divide data.horizon=36``). DLinear and the Transformer take
        any sizes: DLinear's moving average pads the ends, the Transformer reads the last step's state."""
        part = getattr(self, self.arch)
        check = getattr(part, "check_sizes", None)  # only the parts with a constraint define one
        if check is not None:
            check(look_back=look_back, horizon=horizon, key=f"model.{self.arch}.", data_key="data.")

    def build(self, *, look_back: int, horizon: int, n_channels: int, n_time_features: int = 0) -> nn.Module:
        """The model of ``arch`` for windows of ``look_back`` steps of ``n_channels`` channels (plus
        ``n_time_features`` time features per step) and forecasts of ``horizon`` steps."""
        sizes = dict(look_back=look_back, horizon=horizon, n_channels=n_channels, n_time_features=n_time_features)
        part = getattr(self, self.arch)
        # model_class is set by the model's module (imported with the package), so this module never imports it
        return type(part).model_class(part, **sizes)
