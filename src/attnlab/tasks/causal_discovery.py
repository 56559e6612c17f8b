"""One-step forecasting of every variable from its last ``P`` values, for causal discovery (spec ``time_series.md``
D.2): the task that trains :class:`~attnlab.models.timeseries.causal.CausalForecaster` with prior-knowledge masks.

Shape legend: R rows (time steps), N variables, P lags (``look_back``), B windows.

* **Data.** A CSV of numeric columns in time order, with or without a leading ``date`` column
  (:func:`attnlab.data.timeseries.load_timeseries` with ``dates="optional"``), or an in-memory
  :class:`~attnlab.data.timeseries.TimeSeries` (``series=``). The rows are split in time, ``train_fraction`` /
  rest / ``test_fraction``, validation and test starting ``P`` rows before their border so that their first
  target is the border row. Every variable is z-scored with the training rows' mean and (population) standard
  deviation. Window ``t`` has input ``x[j, p] = value_j(t - P + p)`` ``(N, P)`` and target ``value(t)`` ``(N,)``.
* **Refused** (``ValueError`` naming the column or argument): a column constant over the training rows, a split
  with no window (too few rows for ``look_back``), exclusions naming unknown variables or a variable's own past.
* **Loss and metrics.** Mean squared error over every forecast value (normalised scale); evaluation covers every
  window of a split and reports ``mse`` (the result's loss).
* **Prior knowledge.** ``options.exclude``: ``[cause, effect]`` name pairs; the model is built with the exclusion
  matrix (row = effect, column = cause), so the forecast of ``effect`` never depends on ``cause``.
* **Fine-tuning.** ``options.init_from``: a run or checkpoint of this task whose weights start this run (same
  variables, look-back and architecture; the exclusions may differ: they are masks, not weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import check_float, check_int
from attnlab.models.timeseries.causal import CausalForecasterConfig
from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task
from attnlab.tasks.forecast import epoch_order_rows

__all__ = ["DiscoveryDataConfig", "DiscoveryOptions", "DiscoveryForecasting", "DiscoveryData", "DiscoveryEvalResult",
           "check_exclusion_pairs", "exclusion_matrix", "prepare_discovery_data"]


@dataclass(kw_only=True)
class DiscoveryDataConfig:
    """The series and its windows.

    Attributes:
        source: the path of a CSV file (numeric columns, optionally after a ``date`` column).
        look_back: lags ``P >= 1`` (must cover the largest lag to be found).
        train_fraction, test_fraction: the splits in time (the rest validates).
    """

    source: str = ""
    look_back: int = 5
    train_fraction: float = 0.7
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            raise ValueError(f"source must be the path of a CSV file, got {self.source!r}")
        check_int("look_back", self.look_back, 1)
        check_float("train_fraction", self.train_fraction, low=0.0, high=1.0, low_inclusive=False)
        check_float("test_fraction", self.test_fraction, low=0.0, high=1.0, low_inclusive=False)
        if self.train_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"train_fraction={self.train_fraction} + test_fraction={self.test_fraction} must be "
                             "below 1 (the rest is the validation split)")


@dataclass(kw_only=True)
class DiscoveryOptions:
    """Prior knowledge and initialisation.

    Attributes:
        exclude: ``[cause, effect]`` pairs of column names: ``cause`` does not cause ``effect`` at any lag.
        init_from: a run directory or checkpoint of this task to start from (fine-tuning); ``None``: random init.
    """

    exclude: list[list[str]] = field(default_factory=list)
    init_from: str | None = None

    def __post_init__(self) -> None:
        pairs = []
        for k, p in enumerate(self.exclude):
            if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) and s for s in p)):
                raise ValueError(f"exclude[{k}] must be a [cause, effect] pair of column names, got {p!r}")
            if p[0] == p[1]:
                raise ValueError(f"exclude[{k}] = {list(p)} excludes {p[0]!r}'s own past; self-links cannot be "
                                 "excluded")
            pairs.append([p[0], p[1]])
        self.exclude = sorted({tuple(p) for p in pairs})  # type: ignore[arg-type]
        self.exclude = [list(p) for p in self.exclude]
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"init_from must be the path of a run or checkpoint, got {self.init_from!r}")


def check_exclusion_pairs(pairs: Sequence[Sequence[str]], columns: Sequence[str], *, where: str = "exclude",
                          labels: Sequence[str] | None = None) -> list[list[str]]:
    """``pairs`` as sorted, distinct ``[cause, effect]`` lists, checked: each a pair of names, each name a column,
    no variable excluded from its own past (``ValueError`` naming ``where[k]`` or ``labels[k]`` (e.g. a file's line),
    the role and the columns)."""
    cols = list(columns)
    out = set()
    for k, p in enumerate(pairs):
        at = labels[k] if labels is not None else f"{where}[{k}]"
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise ValueError(f"{at} must be a [cause, effect] pair of names, got {p!r}")
        cause, effect = (s.strip() for s in p)
        for role, name in (("cause", cause), ("effect", effect)):
            if name not in cols:
                raise ValueError(f"{at}: the {role} {name!r} is not a variable of the series "
                                 f"({', '.join(cols)})")
        if cause == effect:
            raise ValueError(f"{at} excludes {cause!r} -> {effect!r}, the variable's own past; self-links "
                             "cannot be excluded")
        out.add((cause, effect))
    return [list(p) for p in sorted(out)]


def exclusion_matrix(pairs: Sequence[Sequence[str]], columns: Sequence[str]) -> Tensor:
    """``(N, N)`` bool, ``[i, j]`` = column ``j`` does not cause column ``i``, from ``[cause, effect]`` name pairs
    (checked by :func:`check_exclusion_pairs`)."""
    index = {c: k for k, c in enumerate(columns)}
    m = torch.zeros(len(index), len(index), dtype=torch.bool, device="cpu")
    for cause, effect in check_exclusion_pairs(pairs, columns, where="options.exclude"):
        m[index[effect], index[cause]] = True
    return m


@dataclass
class DiscoveryData:
    """A prepared series: ``values (R, N)`` z-scored with the training statistics, the row range of each split,
    ``mean``/``std`` ``(N,)``, the column names."""

    values: np.ndarray
    columns: list[str]
    mean: np.ndarray
    std: np.ndarray
    ranges: dict[str, tuple[int, int]]
    look_back: int
    name: str = ""

    def n_windows(self, split: str) -> int:
        a, b = self.ranges[split]
        return b - a - self.look_back

    def windows(self, split: str, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x (B, N, P), y (B, N))`` of the split's windows ``idx`` (default: all); window ``s`` predicts row
        ``start + P + s``."""
        a, _ = self.ranges[split]
        P = self.look_back
        idx = np.arange(self.n_windows(split)) if idx is None else np.asarray(idx)
        t = a + P + idx  # (B,) target rows
        x = self.values[t[:, None] + np.arange(-P, 0)[None, :]]  # (B, P, N)
        return np.ascontiguousarray(x.transpose(0, 2, 1)), self.values[t]


def prepare_discovery_data(series: Any, *, look_back: int, train_fraction: float, test_fraction: float,
                           stats: tuple[np.ndarray, np.ndarray] | None = None) -> DiscoveryData:
    """Split, z-score and check ``series`` (a :class:`~attnlab.data.timeseries.TimeSeries`); see the module
    docstring for what is refused."""
    values = np.asarray(series.values, dtype=np.float64)
    R, N = values.shape
    P = look_back
    n_train, n_test = int(R * train_fraction), int(R * test_fraction)
    n_val = R - n_train - n_test
    ranges = {"train": (0, n_train), "val": (n_train - P, n_train + n_val), "test": (R - n_test - P, R)}
    for split, (a, b) in ranges.items():
        if a < 0 or b - a - P < 1:
            need = math.ceil((P + 1) / min(train_fraction, test_fraction, 1 - train_fraction - test_fraction))
            raise ValueError(f"{series.name} has {R} rows: too few for look_back={P} (the {split} split gets "
                             f"{max(b - max(a, 0), 0)} rows and needs at least {P + 1}); give at least about {need} "
                             "rows or a smaller look_back")
    if stats is None:
        mean = values[:n_train].mean(axis=0)
        std = values[:n_train].std(axis=0)
        for j, c in enumerate(series.columns):
            if not std[j] > 1e-12 * max(1.0, abs(mean[j])):
                raise ValueError(f"{series.name}, column {c!r} is constant over the {n_train} training rows (value "
                                 f"{mean[j]!r}); a constant variable can neither cause nor be predicted: drop it")
    else:
        mean, std = stats
    return DiscoveryData(values=(values - mean) / std, columns=list(series.columns), mean=mean, std=std,
                         ranges=ranges, look_back=P, name=series.name)


@dataclass(kw_only=True)
class DiscoveryEvalResult(EvalResult):
    """An :class:`EvalResult` whose ``loss`` is the one-step MSE on the normalised scale (``tokens``: forecast
    values)."""

    def summary(self) -> str:
        return f"{self.split} mse {self.metrics['mse']:.4f} over {int(self.metrics['windows']):,} windows"


class DiscoveryForecasting(Task):
    """See the module docstring."""

    name = "discovery"
    model_config = CausalForecasterConfig
    data_config = DiscoveryDataConfig
    options_config = DiscoveryOptions
    compare_key = "model.masking"
    variant_label = "masking"
    loss_label = "MSE (normalised scale)"
    loss_is_nll = False
    primary_metric = ("mse", "min")
    data_argument = "series"

    def __init__(self, model: CausalForecasterConfig, data: DiscoveryDataConfig, *, seed: int,
                 options: DiscoveryOptions | None = None, series: Any = None, stats: dict[str, Any] | None = None,
                 progress: bool = False) -> None:
        super().__init__(model, data, seed=seed, progress=progress)
        self.options = options if options is not None else DiscoveryOptions()
        self._series = series
        self._data: Any = None
        self._stats = stats  # {"columns", "mean", "std"} of a checkpoint
        self._init: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------------------------------------ data
    @property
    def data(self) -> DiscoveryData:
        if self._data is None:
            series = self._series
            if series is None:
                from attnlab.data.timeseries import load_timeseries

                if not self.data_cfg.source:
                    raise ValueError("data.source is empty: name a CSV file (or pass series=)")
                series = load_timeseries(self.data_cfg.source, dates="optional")
            stats = None
            if self._stats is not None:
                if list(series.columns) != list(self._stats["columns"]):
                    raise ValueError(f"{series.name} has the columns {', '.join(series.columns)}, but the model was "
                                     f"trained on {', '.join(self._stats['columns'])}")
                stats = (np.asarray(self._stats["mean"]), np.asarray(self._stats["std"]))
            d = self.data_cfg
            self._data = prepare_discovery_data(series, look_back=d.look_back, train_fraction=d.train_fraction,
                                                test_fraction=d.test_fraction, stats=stats)
        return self._data

    def shared_data(self) -> Any:
        return self._series

    @property
    def columns(self) -> list[str]:
        return list(self._stats["columns"]) if self._stats is not None else self.data.columns

    @property
    def splits(self) -> tuple[str, ...]:
        return ("val", "test")

    @property
    def exclude(self) -> Tensor:
        """The exclusion matrix ``(N, N)`` (row = effect, column = cause) of ``options.exclude``."""
        return exclusion_matrix(self.options.exclude, self.columns)

    def check_data(self, micro_batch: int) -> None:
        _ = self.data, self.exclude  # refuse bad data and unknown names before any training

    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        return epoch_order_rows(step, seed=self.seed, n_windows=self.data.n_windows("train"), batch_size=batch_size)

    def count_targets(self, rows: Any) -> int:
        return len(rows) * len(self.columns)

    def make_batch(self, rows: Any, device: torch.device) -> Batch:
        x, y = self.data.windows("train", np.asarray(rows))
        t = {"x": torch.from_numpy(x).to(device), "y": torch.from_numpy(y).to(device)}
        return Batch(inputs=t, n_targets=t["y"].numel())

    # ------------------------------------------------------------------------------------------------ model
    def required_checkpoints(self) -> dict[str, str]:
        return {"init": self.options.init_from} if self.options.init_from else {}

    def attach_checkpoints(self, loaded: dict[str, Any]) -> None:
        init = loaded.get("init")
        if init is None:
            return
        if init.config.task != self.name:
            raise ValueError(f"init_from {str(init.path)!r} is a {init.config.task!r} run, not a {self.name!r} run")
        cols = list(init.task.columns)
        if cols != self.columns:
            raise ValueError(f"init_from {str(init.path)!r} was trained on the columns {', '.join(cols)}, not "
                             f"{', '.join(self.columns)}")
        same_lags = init.config.data.look_back == self.data_cfg.look_back
        if not self.model_cfg.same_weights_as(init.config.model) or not same_lags:
            raise ValueError(f"init_from {str(init.path)!r} has another architecture or look_back; fine-tuning needs "
                             "the same model config (masking may differ) and look_back")
        self._init = {k: v.detach().clone() for k, v in init.model.state_dict().items()}

    def build_model(self) -> nn.Module:
        model = self.model_cfg.build(n_vars=len(self.columns), look_back=self.data_cfg.look_back,
                                     exclude=self.exclude)
        if self._init is not None:
            model.load_state_dict(self._init)
        return model

    # ------------------------------------------------------------------------------------------------- loss
    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        dtype = next(model.parameters()).dtype
        pred = model(batch.inputs["x"].to(dtype))  # (B, N)
        if pred.dtype in (torch.float16, torch.bfloat16):
            pred = pred.float()
        return Loss(main=F.mse_loss(pred, batch.inputs["y"].to(pred.dtype)))

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, ctx: EvalContext) -> DiscoveryEvalResult:
        """The MSE over every window of ``split`` (normalised scale)."""
        if split not in self.data.ranges:
            raise ValueError(f"split={split!r}: the series has no such split; it has {', '.join(self.data.ranges)}")
        n, N = self.data.n_windows(split), len(self.columns)
        was_training = model.training
        model.eval()
        sq = torch.zeros((), dtype=torch.float64, device=ctx.device)
        dtype = next(model.parameters()).dtype
        for i, lo in enumerate(range(0, n, ctx.batch_size)):
            if i % ctx.world_size != ctx.rank:
                continue
            x, y = self.data.windows(split, np.arange(lo, min(lo + ctx.batch_size, n)))
            with ctx.autocast():
                pred = model(torch.from_numpy(x).to(ctx.device, dtype))  # (B, N)
            sq += (pred.double() - torch.from_numpy(y).to(ctx.device)).square().sum()
        ctx.all_reduce_sum(sq)
        model.train(was_training)
        mse = float(sq) / (n * N)
        return DiscoveryEvalResult(split=split, loss=mse, tokens=n * N, metrics={"mse": mse, "windows": float(n)})

    def heldout_windows(self, split: str = "test", max_windows: int | None = None) -> Tensor:
        """``(n, N, P)`` float64 windows of ``split`` (``max_windows`` evenly spaced ones when fewer are asked)."""
        n = self.data.n_windows(split)
        idx = np.arange(n)
        if max_windows is not None and max_windows < n:
            idx = np.unique(np.linspace(0, n - 1, max_windows).round().astype(np.int64))
        return torch.from_numpy(self.data.windows(split, idx)[0])

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        if self._stats is not None:
            return dict(self._stats)
        d = self.data
        return {"columns": list(d.columns), "mean": [float(v) for v in d.mean], "std": [float(v) for v in d.std]}

    @classmethod
    def from_state(cls, model: CausalForecasterConfig, data: DiscoveryDataConfig, state: dict[str, Any], *,
                   seed: int = 0, options: DiscoveryOptions | None = None) -> "DiscoveryForecasting":
        cols, mean, std = state["columns"], state["mean"], state["std"]
        if not (isinstance(cols, list) and cols and all(isinstance(c, str) for c in cols)):
            raise ValueError(f"columns must be a non-empty list of names, got {cols!r}")
        for name, v in (("mean", mean), ("std", std)):
            if not (isinstance(v, list) and len(v) == len(cols)
                    and all(isinstance(a, (int, float)) and math.isfinite(a) for a in v)):
                raise ValueError(f"{name} must be {len(cols)} finite numbers (one per column), got {v!r}")
        return cls(model, data, seed=seed, options=options,
                   stats={"columns": list(cols), "mean": list(mean), "std": list(std)})

    def describe(self) -> str:
        excl = f", {len(self.options.exclude)} excluded links ({self.model_cfg.masking})" if self.options.exclude \
            else ""
        return (f"one-step forecasting of {len(self.columns)} variables from {self.data_cfg.look_back} lags "
                f"({self.model_cfg.tokens} tokens){excl}")
