"""Forecasting: look-back windows of a multivariate time series to the next ``horizon`` steps, MSE loss.

Data: :func:`attnlab.data.load_timeseries` (bundled ``"etth1"`` or any CSV of a ``date`` column then numeric
columns) and :func:`attnlab.data.prepare_forecast_data` (standard borders, train-only z-scoring, windows of stride 1;
spec ``time_series.md`` C.9). Rows of a global batch are training-window indices: the windows of each epoch in an
order drawn from ``(seed, epoch)``, consumed ``batch_size`` at a time, so step ``s``'s rows are a function of
``(seed, s)`` only and every rank knows them. Loss: mean squared error over every forecast value. Evaluation covers
**every** window of a split and reports, on the normalised scale: ``mse`` (= the result's ``loss``) and ``mae``;
the same two over the windows a loader dropping its last partial batch (``drop_last_batch``, 128 in the released
scripts of the published tables) would see, for comparability (``mse_drop_last``, ``mae_drop_last``; absent when
the split is shorter than one such batch); and the MSE
and MAE of each horizon step (:attr:`ForecastEvalResult.mse_per_step`, ``mae_per_step``; also written as
``horizon-mse-<split>.csv``, columns ``step,mse,mae``, into the output directory).
A checkpoint keeps the channel names and the training statistics, so it is rebuilt (and can forecast raw values)
without reading any data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import check_float, check_int
from attnlab.models.timeseries import ARCHS, ForecastModelConfig
from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task

__all__ = ["ForecastDataConfig", "ForecastOptions", "Forecasting", "ForecastEvalResult", "epoch_order_rows"]


@dataclass(kw_only=True)
class ForecastDataConfig:
    """Which series, how it is split and windowed.

    Attributes:
        source: ``"etth1"`` (bundled) or the path of a CSV file (a ``date`` column, then numeric columns).
        look_back: input steps ``L`` of a window.
        horizon: forecast steps ``T``.
        features: ``"M"`` (every channel in and out) or ``"S"`` (the ``target`` column only).
        target: the channel of the univariate setting.
        borders: ``"ett_hour"`` (12/4/4 months of hours, the ETTh protocol), ``"ett_minute"`` (the same at 15
            minutes) or ``"ratio"`` (``train_fraction`` / rest / ``test_fraction`` of the rows, for any series).
        train_fraction, test_fraction: the ``"ratio"`` borders.
        time_features: feed hour of day, day of week, day of month and day of year to models that use them.
        drop_last_batch: the batch size of the comparability figure (``mse_drop_last``: the windows a loader that
            drops its last partial batch evaluates).
    """

    source: str = "etth1"
    look_back: int = 336
    horizon: int = 96
    features: Literal["M", "S"] = "M"
    target: str = "OT"
    borders: Literal["ett_hour", "ett_minute", "ratio"] = "ett_hour"
    train_fraction: float = 0.7
    test_fraction: float = 0.2
    time_features: bool = False
    drop_last_batch: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must name a series ('etth1') or a CSV file, got {self.source!r}")
        check_int("look_back", self.look_back, 1)
        check_int("horizon", self.horizon, 1)
        if self.features not in ("M", "S"):
            raise ValueError(f"features must be 'M' (every channel) or 'S' (the target only), got {self.features!r}")
        if self.borders not in ("ett_hour", "ett_minute", "ratio"):
            raise ValueError(f"borders must be 'ett_hour', 'ett_minute' or 'ratio', got {self.borders!r}")
        check_float("train_fraction", self.train_fraction, low=0.0, high=1.0, low_inclusive=False)
        check_float("test_fraction", self.test_fraction, low=0.0, high=1.0, low_inclusive=False)
        if self.train_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"train_fraction={self.train_fraction} + test_fraction={self.test_fraction} must be "
                             "below 1 (the rest is the validation split)")
        check_int("drop_last_batch", self.drop_last_batch, 1)


@dataclass(kw_only=True)
class ForecastOptions:
    """Options of the forecasting task (the loss is the mean squared error).

    Attributes:
        val_windows: evaluate the validation split on this many evenly spaced windows (first and last included)
            instead of all of them, for cheap validation curves of slow decoders; ``None``: every window. The
            test split is always evaluated on every window.
    """

    val_windows: int | None = None

    def __post_init__(self) -> None:
        if self.val_windows is not None:
            check_int("val_windows", self.val_windows, 2)


@dataclass(kw_only=True)
class ForecastEvalResult(EvalResult):
    """An :class:`EvalResult` whose ``loss`` is the MSE on the normalised scale (``tokens``: forecast values), with
    the MSE and MAE of each horizon step (step 1 first)."""

    mse_per_step: list[float] = field(default_factory=list)
    mae_per_step: list[float] = field(default_factory=list)

    def summary(self) -> str:
        m = self.metrics
        s = f"{self.split} mse {m['mse']:.4f} mae {m['mae']:.4f} over {int(m['windows']):,} windows"
        if "mse_drop_last" in m:
            s += (f" (drop_last: mse {m['mse_drop_last']:.4f} mae {m['mae_drop_last']:.4f} over "
                  f"{int(m['windows_drop_last']):,})")
        return s


def epoch_order_rows(step: int, *, seed: int, n_windows: int, batch_size: int) -> np.ndarray:
    """Window indices ``(batch_size,)`` of optimizer step ``step``: each epoch visits every window once in an order
    drawn from ``(seed, epoch)``, and the steps take ``batch_size`` windows at a time across epoch boundaries."""
    if n_windows < 1:
        raise ValueError(f"n_windows must be >= 1, got {n_windows}")
    lo = step * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    filled = 0
    while filled < batch_size:
        epoch, offset = divmod(lo + filled, n_windows)
        state = np.random.SeedSequence([seed, epoch, 0xF0CA57])
        perm = np.random.Generator(np.random.PCG64(state)).permutation(n_windows)
        take = min(batch_size - filled, n_windows - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled += take
    return out


class Forecasting(Task):
    """Multi-step forecasting (see the module docstring)."""

    name = "forecast"
    model_config = ForecastModelConfig
    data_config = ForecastDataConfig
    options_config = ForecastOptions
    compare_key = "model.arch"
    variant_label = "model"
    default_variants = list(ARCHS)
    loss_label = "MSE (normalised scale)"
    loss_is_nll = False
    primary_metric = ("mse", "min")
    data_argument = "forecast_data"

    def __init__(self, model: ForecastModelConfig, data: ForecastDataConfig, *, seed: int,
                 options: ForecastOptions | None = None, forecast_data: Any = None,
                 stats: dict[str, Any] | None = None, progress: bool = False) -> None:
        super().__init__(model, data, seed=seed, progress=progress)
        self.options = options if options is not None else ForecastOptions()
        self._data = forecast_data
        self._stats = stats  # {"columns", "mean", "std", "source"} of a checkpoint

    @classmethod
    def valid_variants(cls) -> list[str]:
        return list(ARCHS)

    @classmethod
    def check_config(cls, model: ForecastModelConfig, data: ForecastDataConfig, options: Any) -> None:
        """The model of ``model.arch`` must take ``data.look_back`` and ``data.horizon`` (e.g. AutoHFormer's
        ``segment_len`` divides the horizon)."""
        model.check_sizes(look_back=data.look_back, horizon=data.horizon)

    # ------------------------------------------------------------------------------------------------ data
    @property
    def data(self) -> Any:
        """The prepared series (:class:`attnlab.data.ForecastData`), loaded on first use; with a checkpoint's
        statistics, those are used (the model was trained on them) and the channels must match."""
        if self._data is None:
            from attnlab.data.timeseries import load_timeseries, prepare_forecast_data

            d = self.data_cfg
            series = load_timeseries(d.source)
            stats = None
            if self._stats is not None:
                used = [d.target] if d.features == "S" else list(series.columns)
                if used != list(self._stats["columns"]):
                    raise ValueError(f"{series.name} has the channels {', '.join(used)}, but the model was trained on "
                                     f"{', '.join(self._stats['columns'])}")
                stats = (np.asarray(self._stats["mean"]), np.asarray(self._stats["std"]))
            data = prepare_forecast_data(
                series, look_back=d.look_back, horizon=d.horizon, features=d.features, target=d.target,
                borders=d.borders, train_fraction=d.train_fraction, test_fraction=d.test_fraction,
                with_time_features=d.time_features, stats=stats)
            self._data = data
        return self._data

    def shared_data(self) -> Any:
        return self.data

    @property
    def columns(self) -> list[str]:
        """The channel names (a checkpoint's, else the data's)."""
        if self._stats is not None:
            return list(self._stats["columns"])
        return list(self.data.columns)

    @property
    def n_time_features(self) -> int:
        from attnlab.data.timeseries import N_TIME_FEATURES

        return N_TIME_FEATURES if self.data_cfg.time_features else 0

    @property
    def splits(self) -> tuple[str, ...]:
        return ("val", "test")

    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        return epoch_order_rows(step, seed=self.seed, n_windows=self.data.splits["train"].n_windows,
                                batch_size=batch_size)

    def count_targets(self, rows: Any) -> int:
        return len(rows) * self.data_cfg.horizon * len(self.columns)

    def _tensors(self, split: str, rows: Any, device: torch.device) -> dict[str, Tensor]:
        arrays = self.data.splits[split].windows(np.asarray(rows))
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}

    def make_batch(self, rows: Any, device: torch.device) -> Batch:
        t = self._tensors("train", rows, device)
        return Batch(inputs=t, n_targets=t["y"].numel())

    # ------------------------------------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        d = self.data_cfg
        return self.model_cfg.build(look_back=d.look_back, horizon=d.horizon, n_channels=len(self.columns),
                                    n_time_features=self.n_time_features)

    @staticmethod
    def _predict(model: nn.Module, inputs: dict[str, Tensor], *, with_target: bool = False) -> Tensor:
        """The model's forecast ``(B, T, V)`` for a batch, inputs cast to the model's parameter dtype. With
        ``with_target`` (training), a model that declares ``uses_target`` (teacher forcing) also gets the target
        ``y`` as ``target=``; evaluation and forecasting never pass it."""
        dtype = next(model.parameters()).dtype
        x = inputs["x"].to(dtype)
        marks = inputs.get("x_marks")
        marks = marks.to(dtype) if marks is not None else None
        inner = getattr(model, "module", model)  # DDP keeps the model as .module
        if with_target and getattr(inner, "uses_target", False):
            return model(x, marks, target=inputs["y"].to(dtype))
        return model(x, marks)

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        pred = self._predict(model, batch.inputs, with_target=True)  # (B, T, V)
        if pred.dtype in (torch.float16, torch.bfloat16):
            pred = pred.float()
        return Loss(main=F.mse_loss(pred, batch.inputs["y"].to(pred.dtype)))

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, ctx: EvalContext) -> ForecastEvalResult:
        """MSE and MAE over every window of ``split`` (the validation split: ``options.val_windows`` evenly spaced
        ones when set; batches dealt round-robin to the ranks), the drop_last figure and the MSE per horizon step,
        all on the normalised scale."""
        if split not in self.data.splits:
            raise ValueError(f"split={split!r}: the series has no such split; it has {', '.join(self.data.splits)}")
        s = self.data.splits[split]
        n, T, V = s.n_windows, self.data_cfg.horizon, len(self.columns)
        n_drop = s.n_windows_drop_last(self.data_cfg.drop_last_batch)
        chosen = np.arange(n)  # the windows evaluated: all, or an evenly spaced subset of the validation split
        k = self.options.val_windows
        if split == "val" and k is not None and k < n:
            chosen = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
            n_drop = 0  # (a subset has no drop_last figure)
        n_all, n = n, len(chosen)
        was_training = model.training
        model.eval()
        sq = torch.zeros(T, dtype=torch.float64, device=ctx.device)  # squared errors per horizon step
        ab = torch.zeros(T, dtype=torch.float64, device=ctx.device)  # absolute errors per horizon step
        sq_drop = torch.zeros((), dtype=torch.float64, device=ctx.device)
        ab_drop = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for i, lo in enumerate(range(0, n, ctx.batch_size)):
            if i % ctx.world_size != ctx.rank:
                continue
            idx = chosen[lo : lo + ctx.batch_size]
            t = self._tensors(split, idx, ctx.device)
            with ctx.autocast():
                pred = self._predict(model, t)
            err = pred.double() - t["y"].double()  # (B, T, V)
            e2, e1 = err.square(), err.abs()
            sq += e2.sum(dim=(0, 2))
            ab += e1.sum(dim=(0, 2))
            keep = torch.from_numpy(idx < n_drop).to(ctx.device)  # (B,) windows a drop_last loader sees
            sq_drop += e2[keep].sum()
            ab_drop += e1[keep].sum()
        ctx.all_reduce_sum(sq, ab, sq_drop, ab_drop)
        model.train(was_training)
        per_step, mae_per_step = (sq / (n * V)).tolist(), (ab / (n * V)).tolist()
        mse = float(sq.sum()) / (n * T * V)
        metrics = {"mse": mse, "mae": float(ab.sum()) / (n * T * V), "windows": float(n),
                   "windows_drop_last": float(n_drop)}
        if n < n_all:
            metrics["windows_of"] = float(n_all)
        if n_drop:  # (a split shorter than one batch has no drop_last figure: the released loader would see nothing)
            metrics["mse_drop_last"] = float(sq_drop) / (n_drop * T * V)
            metrics["mae_drop_last"] = float(ab_drop) / (n_drop * T * V)
        if self.output_dir is not None and ctx.rank == 0:  # horizon-mse-<split><label>.csv
            self.write_eval_file(f"horizon-mse-{split}", ".csv",
                                 "step,mse,mae\n" + "".join(f"{i + 1},{v!r},{a!r}\n"
                                                             for i, (v, a) in enumerate(zip(per_step, mae_per_step))))
        return ForecastEvalResult(split=split, loss=mse, tokens=n * T * V, metrics=metrics, mse_per_step=per_step,
                                  mae_per_step=mae_per_step)

    # --------------------------------------------------------------------------------------------- forecasting
    @torch.no_grad()
    def forecast(self, model: nn.Module, history: np.ndarray, *, dates: np.ndarray | None = None) -> np.ndarray:
        """The forecast ``(T, V)`` in the original units after ``history (L, V)`` (original units; the last
        ``look_back`` rows are used), normalised with the training statistics. ``dates (L,)`` are needed when the
        model uses time features."""
        d = self.data_cfg
        h = np.asarray(history, dtype=np.float64)
        V = len(self.columns)
        if h.ndim != 2 or h.shape[1] != V or h.shape[0] < d.look_back:
            raise ValueError(f"history must have shape (>= look_back={d.look_back}, {V}) for the channels "
                             f"{', '.join(self.columns)}, got {h.shape}")
        mean, std = self._statistics()
        x = torch.from_numpy((h[-d.look_back :] - mean) / std)[None]  # (1, L, V)
        inputs = {"x": x.to(next(model.parameters()).device)}
        if self.n_time_features:
            if dates is None:
                raise ValueError("this model uses time features: pass the dates of the history")
            from attnlab.data.timeseries import time_features

            inputs["x_marks"] = torch.from_numpy(time_features(np.asarray(dates)[-d.look_back :]))[None].to(
                inputs["x"].device)
        was_training = model.training
        model.eval()
        pred = self._predict(model, inputs)[0].double().cpu().numpy()  # (T, V)
        model.train(was_training)
        return pred * std + mean

    def _statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The training mean and std per channel (a checkpoint's, else the data's)."""
        if self._stats is not None:
            return np.asarray(self._stats["mean"], dtype=np.float64), np.asarray(self._stats["std"], dtype=np.float64)
        return self.data.mean, self.data.std

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        mean, std = self._statistics()
        return {"columns": self.columns, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                "source": self.data_cfg.source}

    @classmethod
    def from_state(cls, model: ForecastModelConfig, data: ForecastDataConfig, state: dict[str, Any], *,
                   seed: int = 0, options: ForecastOptions | None = None) -> "Forecasting":
        """The task of a checkpoint, with its channel names and training statistics and without loading data."""
        cols, mean, std = state["columns"], state["mean"], state["std"]
        if not (isinstance(cols, list) and all(isinstance(c, str) for c in cols) and cols):
            raise ValueError(f"columns must be a non-empty list of names, got {cols!r}")
        for name, v in (("mean", mean), ("std", std)):
            if not (isinstance(v, list) and len(v) == len(cols)
                    and all(isinstance(a, (int, float)) and math.isfinite(a) for a in v)):
                raise ValueError(f"{name} must be {len(cols)} finite numbers (one per channel), got {v!r}")
        if not all(s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std!r}")
        return cls(model, data, seed=seed, options=options,
                   stats={"columns": list(cols), "mean": list(mean), "std": list(std)})

    def describe(self) -> str:
        d = self.data_cfg
        where = d.source
        if self._data is not None:
            where += f" ({self._data.splits['train'].n_windows:,} training windows, {len(self.columns)} channels)"
        return (f"forecasting {d.horizon} steps from {d.look_back} on {where} ({d.features}), model "
                f"{self.model_cfg.arch}")

