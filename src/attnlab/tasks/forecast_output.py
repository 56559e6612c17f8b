"""Forecasting from a series at a chosen position, for people: the window's history, the forecast in original units,
the truth where the series knows it, as a CSV and a plot (``attnlab forecast``).

Conventions: ``start`` is the row of the **first forecast step** (0-based). The history is rows
``[start - look_back, start)``; the forecast covers rows ``[start, start + horizon)``, and the truth is the part of
that span the series holds (none when ``start`` is the series' length: a forecast of the true future). Dates past
the end of the series continue it at its most common step between consecutive rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import numpy as np
from torch import nn

from attnlab.data.timeseries import TimeSeries

__all__ = ["ForecastWindow", "series_channels", "resolve_start", "continue_dates", "forecast_at", "forecast_csv",
           "format_date", "plot_forecast"]


@dataclass
class ForecastWindow:
    """One forecast and its context (original units).

    Attributes:
        columns: the channel names (the model's, in its order).
        start: row of the first forecast step.
        history_dates, history: the ``start`` rows before the forecast (``(start,)``, ``(start, V)``).
        dates: ``(T,)`` the forecast's dates (the series' own where it has them, continued past its end).
        prediction: ``(T, V)``.
        truth: ``(K, V)`` the series' values of the first ``K <= T`` forecast steps (``K = 0`` past the end).
        mse, mae: over the known steps, on the normalised scale (the scale of ``attnlab eval``); ``None`` if ``K = 0``.
    """

    columns: list[str]
    start: int
    history_dates: np.ndarray
    history: np.ndarray
    dates: np.ndarray
    prediction: np.ndarray
    truth: np.ndarray
    mse: float | None = None
    mae: float | None = None


def series_channels(series: TimeSeries, columns: list[str], *, name: str = "the series") -> np.ndarray:
    """``(N, V)``: the values of ``columns`` (a model's channels, in its order) picked from ``series`` by name; other
    columns are ignored. ``name`` is what the error calls the series (e.g. ``--csv my.csv``)."""
    missing = [c for c in columns if c not in series.columns]
    if missing:
        raise ValueError(f"{name} lacks the channel{'s' if len(missing) > 1 else ''} {', '.join(missing)} the model "
                         f"was trained on ({', '.join(columns)}); its columns are {', '.join(series.columns)}")
    return series.values[:, [series.columns.index(c) for c in columns]]


def continue_dates(dates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` dates after the last of ``dates`` (``datetime64[s]``), spaced by the most common step between
    consecutive dates (of the last 1,000; the earliest such step on a tie)."""
    d = np.asarray(dates).astype("datetime64[s]")
    if len(d) < 2:
        raise ValueError("the series has a single row, so its step between dates is unknown")
    steps = np.diff(d[-1001:]).astype(np.int64)
    step = Counter(steps.tolist()).most_common(1)[0][0]
    return d[-1] + np.arange(1, n + 1, dtype=np.int64) * np.timedelta64(int(step), "s")


def format_date(d: np.datetime64) -> str:
    """``'2018-06-26 20:00:00'``: the ISO form of the ETT files (a space between date and time)."""
    return str(np.datetime64(d, "s")).replace("T", " ")


def resolve_start(at: str | None, series: TimeSeries, *, look_back: int, horizon: int, backtest: bool = False,
                  name: str = "--at") -> int:
    """The row of the first forecast step.

    ``at``: ``None`` (the end of the series: the true future; with ``backtest``, ``horizon`` rows before the end,
    so the whole forecast has a truth), a row index (negative counts from the end: ``-24`` = 24 rows before the
    end) or a date of the series (or the date just after its last). The history before it must hold ``look_back``
    rows. ``name`` is what the errors call ``at``."""
    n = len(series)
    if n < look_back:
        raise ValueError(f"{series.name} has {n} rows, fewer than the model's look_back={look_back}: the forecast "
                         "needs that much history")
    if at is not None and backtest:
        raise ValueError(f"{name} and the backtest option both choose where the forecast starts; give one")
    if at is None:
        start = n - horizon if backtest else n
        what = f"the backtest start (horizon={horizon} rows before the end)"
    else:
        text = at.strip()
        try:
            i = int(text)
        except ValueError:
            i = None
        if i is not None:
            start, what = (n + i if i < 0 else i), f"{name}={at}"
        else:
            try:
                when = np.datetime64(datetime.fromisoformat(text), "s")
            except ValueError:
                raise ValueError(f"{name}={at!r} is neither a row index nor an ISO date such as "
                                 f"{format_date(series.dates[-1])!r}") from None
            if when == continue_dates(series.dates, 1)[0]:
                start = n
            else:
                hit = np.flatnonzero(series.dates == when)
                if not hit.size:
                    raise ValueError(f"{name}={at!r} is not a date of {series.name}, which runs from "
                                     f"{format_date(series.dates[0])} to {format_date(series.dates[-1])} (or the "
                                     "step just after it, to forecast the future)")
                start = int(hit[0])
            what = f"{name}={at!r} (row {start})"
    if not look_back <= start <= n:
        raise ValueError(f"{what} leaves {max(start, 0)} rows of history; the model needs look_back={look_back}, so "
                         f"the forecast may start at rows {look_back}..{n} of {series.name} ({n} rows)")
    return start


def forecast_at(task: Any, model: nn.Module, series: TimeSeries, start: int, *, name: str = "the series"
                ) -> ForecastWindow:
    """The forecast of ``task`` (a :class:`~attnlab.tasks.forecast.Forecasting`, e.g. a checkpoint's) with
    ``model`` whose first step is row ``start`` of ``series``, through :meth:`Forecasting.forecast`."""
    values = series_channels(series, task.columns, name=name)  # (N, V)
    T, n = task.data_cfg.horizon, len(series)
    pred = task.forecast(model, values[:start], dates=series.dates[:start])  # (T, V)
    known = min(T, n - start)
    dates = series.dates[start : start + known]
    if known < T:
        dates = np.concatenate([dates, continue_dates(series.dates, T - known)])
    w = ForecastWindow(columns=list(task.columns), start=start, history_dates=series.dates[:start],
                       history=values[:start], dates=dates, prediction=pred, truth=values[start : start + known])
    if known:
        _, std = task._statistics()
        err = (pred[:known] - w.truth) / std  # (K, V) on the normalised scale
        w.mse, w.mae = float(np.mean(err**2)), float(np.mean(np.abs(err)))
    return w


def forecast_csv(w: ForecastWindow) -> str:
    """``date,<channels>`` then one row per forecast step (original units, full precision)."""
    lines = ["date," + ",".join(w.columns)]
    lines += [format_date(d) + "," + ",".join(repr(float(v)) for v in row) for d, row in zip(w.dates, w.prediction)]
    return "\n".join(lines) + "\n"


def plot_forecast(w: ForecastWindow, f: IO[bytes], *, channels: list[str], history_steps: int, fmt: str = "png",
                  title: str = "") -> None:
    """Draw the last ``history_steps`` rows of history, the truth where known and the forecast, one panel per
    channel of ``channels`` (names of ``w.columns``), into the binary file ``f`` as ``fmt``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist_dates = w.history_dates[-history_steps:].astype("datetime64[s]").astype(datetime)
    fc_dates = w.dates.astype("datetime64[s]").astype(datetime)
    fig, axes = plt.subplots(len(channels), 1, figsize=(10, 2.6 * len(channels) + 0.6), sharex=True, squeeze=False)
    for ax, c in zip(axes[:, 0], channels):
        j = w.columns.index(c)
        ax.plot(hist_dates, w.history[-history_steps:, j], color="0.25", lw=1.1, label="history")
        if len(w.truth):
            ax.plot(fc_dates[: len(w.truth)], w.truth[:, j], color="C2", lw=1.1, label="truth")
        ax.plot(fc_dates, w.prediction[:, j], color="C3", lw=1.4, label="forecast")
        ax.axvline(fc_dates[0], color="0.6", lw=0.8, ls="--")
        ax.set_ylabel(c)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    if title:
        axes[0, 0].set_title(title, fontsize=10)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(f, format=fmt, dpi=110)
    plt.close(fig)
