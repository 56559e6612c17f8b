"""Multivariate time series for forecasting: any CSV of a ``date`` column followed by numeric columns; ETTh1 bundled.

Shape legend: N rows (time steps), V channels, L look-back, T horizon, F time features, B windows.

* :func:`load_timeseries` reads ``"etth1"`` (bundled unmodified, CC BY-ND 4.0, checked by SHA-256: see
  ``corpora/LICENSES.md``) or the path of a CSV file. Every problem is one ``ValueError`` that names the file, the
  row (0-based data row, as the borders count them, and the 1-based line of the file) and the column: a header
  without a leading ``date`` column, a row with the wrong number of fields, an unparsable date, dates that do not
  strictly increase, a value that is not a number, and missing or non-finite values (NaN, inf: refused, never
  filled in silently). With ``dates="optional"`` (causal discovery), a file whose header does not start with
  ``date`` is read as numeric columns in time order, with the same checks.
* :func:`split_borders` gives the standard borders of the long-horizon protocol (Zhou et al., "Informer", AAAI
  2021, arXiv 2012.07436, followed by later work; spec ``time_series.md`` C.9): ``"ett_hour"`` trains on rows
  [0, 8640) (12 months of hours), validates on [8640 - L, 11520) and tests on [11520 - L, 14400), so that the first
  target of validation and test begins at the border; ``"ett_minute"`` is the same 12/4/4 months at 15 minutes (x4);
  ``"ratio"`` splits any series 70/10/20 in time by default (the same L-row overlap).
* :func:`prepare_forecast_data` z-scores every channel with the mean and (population) standard deviation of the
  **training rows only** and cuts each split into windows of stride 1: window ``s`` of a split takes rows
  ``[s, s + L)`` as input and ``[s + L, s + L + T)`` as target. A split of ``n`` rows has ``n - L - T + 1`` windows.
* Settings: ``features="M"`` (every channel in and out) or ``"S"`` (the ``target`` column only, univariate; its
  statistics are that column's). Optional time features: hour of day, day of week, day of month and day of year,
  each scaled to [-0.5, 0.5] (spec C.9).

The files are never modified or rewritten: splits, scaling and windows are computed in memory at load time.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "TimeSeries",
    "ForecastSplit",
    "ForecastData",
    "Borders",
    "BUNDLED_TIMESERIES_SOURCES",
    "parse_timeseries_csv",
    "load_timeseries",
    "split_borders",
    "time_features",
    "prepare_forecast_data",
    "N_TIME_FEATURES",
]

Borders = Literal["ett_hour", "ett_minute", "ratio"]
Features = Literal["M", "S"]

#: Time-series names shipped with attnlab (name -> key of :data:`attnlab.data.bundled.BUNDLED_TIMESERIES`).
BUNDLED_TIMESERIES_SOURCES: dict[str, str] = {"etth1": "timeseries/etth1"}

#: Number of time features (:func:`time_features`).
N_TIME_FEATURES = 4

# Rows of the 12 / 4 / 4-month borders of the hourly ETT files (30-day months: 12 * 30 * 24 = 8640).
_ETT_HOUR = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)


@dataclass(frozen=True)
class TimeSeries:
    """A parsed series: ``dates (N,)`` as ``datetime64[s]`` (``None`` for a file read without a date column),
    ``values (N, V)`` float64, the channel names."""

    name: str
    dates: np.ndarray | None
    values: np.ndarray
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.values.shape[0])


# ------------------------------------------------------------------------------------------------------ reading


def parse_timeseries_csv(text: str, *, name: str, dates: Literal["required", "optional"] = "required") -> TimeSeries:
    """Parse CSV ``text`` (a ``date`` column, then numeric columns; header on the first line). ``name`` is what
    error messages call the file. See the module docstring for what is refused. With ``dates="optional"`` a header
    that does not start with ``date`` is read as numeric columns only (rows in time order; the result's ``dates``
    is ``None``)."""
    if dates not in ("required", "optional"):
        raise ValueError(f"dates must be 'required' or 'optional', got {dates!r}")
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{name}: the file is empty; expected a header 'date,<column>,...' and rows") from None
    header = [h.strip() for h in header]
    has_dates = bool(header) and header[0] == "date"
    if not has_dates and dates == "optional":
        header = ["", *header]  # (a placeholder for the absent date field)
    elif not header or header[0] != "date":
        raise ValueError(f"{name}: the first column must be 'date' (then numeric columns), got the header "
                         f"{','.join(header)!r}")
    columns = header[1:]
    if not columns or columns == [""]:
        raise ValueError(f"{name}: the header has only a 'date' column; expected numeric columns after it"
                         if has_dates else f"{name}: the header names no numeric column")
    for i, c in enumerate(columns):
        if not c:
            raise ValueError(f"{name}: column {i + 1 + has_dates} of the header has no name")
        if columns.index(c) != i:
            raise ValueError(f"{name}: the header names column {c!r} twice")
    stamps: list[datetime] = []
    rows: list[list[float]] = []
    for fields in reader:
        if not has_dates:
            fields = ["", *fields]
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        r = len(rows)
        where = f"{name}, row {r} (line {line})"
        if len(fields) != len(header):
            raise ValueError(f"{where}: expected {len(header) - (not has_dates)} fields "
                             f"({','.join(header[not has_dates:])}), got {len(fields) - (not has_dates)}")
        if not has_dates:
            rows.append(_numbers(fields[1:], columns, where))
            continue
        raw_date = fields[0].strip()
        try:
            d = datetime.fromisoformat(raw_date)
        except ValueError:
            raise ValueError(f"{where}: date {raw_date!r} cannot be parsed; expected an ISO 8601 date such as "
                             "'2016-07-01 00:00:00'") from None
        if d.tzinfo is not None:
            raise ValueError(f"{where}: date {raw_date!r} has a time zone; give local times without an offset")
        if stamps and d <= stamps[-1]:
            raise ValueError(f"{where}: date {raw_date!r} is not after the previous row's "
                             f"{stamps[-1].isoformat(sep=' ')!r}; dates must strictly increase")
        rows.append(_numbers(fields[1:], columns, where))
        stamps.append(d)
    if not rows:
        raise ValueError(f"{name}: the file has a header but no rows")
    return TimeSeries(name=name, dates=np.array(stamps, dtype="datetime64[s]") if has_dates else None,
                      values=np.asarray(rows, dtype=np.float64).reshape(len(rows), len(columns)),
                      columns=tuple(columns))


def _numbers(fields: list[str], columns: list[str], where: str) -> list[float]:
    """The numeric fields of one row; missing, non-numeric and non-finite values refused naming the column."""
    vals = []
    for c, s in zip(columns, fields):
        s = s.strip()
        if not s:
            raise ValueError(f"{where}, column {c!r}: the value is missing; missing values are refused (fill or "
                             "drop them first)")
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"{where}, column {c!r}: {s!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{where}, column {c!r}: {s!r} is not a finite number; NaN and infinite values are "
                             "refused (fill or drop them first)")
        vals.append(v)
    return vals


def load_timeseries(source: str | Path, *, dates: Literal["required", "optional"] = "required") -> TimeSeries:
    """The series ``source``: a bundled name (``"etth1"``) or the path of a CSV file."""
    key = str(source)
    if key in BUNDLED_TIMESERIES_SOURCES:
        from attnlab.data.bundled import read_bundled

        return parse_timeseries_csv(read_bundled(BUNDLED_TIMESERIES_SOURCES[key]).decode("utf-8"), name=key,
                                    dates=dates)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"time series {key!r} is neither a bundled series ({', '.join(BUNDLED_TIMESERIES_SOURCES)}) "
                         "nor a CSV file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    return parse_timeseries_csv(text, name=str(path), dates=dates)


# ------------------------------------------------------------------------------------------------------ splits


def split_borders(n_rows: int, look_back: int, *, borders: Borders, train_fraction: float = 0.7,
                  test_fraction: float = 0.2, name: str = "the series") -> dict[str, tuple[int, int]]:
    """Rows ``[start, end)`` of each split (0-based, half-open), validation and test starting ``look_back`` rows
    before their border (see the module docstring)."""
    L = look_back
    if borders in ("ett_hour", "ett_minute"):
        scale = 1 if borders == "ett_hour" else 4
        b_train, b_val, b_test = (b * scale for b in _ETT_HOUR)
        if n_rows < b_test:
            raise ValueError(f"{name} has {n_rows} rows; borders={borders!r} needs at least {b_test} (train "
                             f"[0, {b_train}), validation up to {b_val}, test up to {b_test}); use borders='ratio' "
                             "for another series")
        if L > b_train:
            raise ValueError(f"look_back={L} is longer than the training split ({b_train} rows)")
        return {"train": (0, b_train), "val": (b_train - L, b_val), "test": (b_val - L, b_test)}
    if borders != "ratio":
        raise ValueError(f"borders must be 'ett_hour', 'ett_minute' or 'ratio', got {borders!r}")
    n_train = int(n_rows * train_fraction)
    n_test = int(n_rows * test_fraction)
    n_val = n_rows - n_train - n_test
    if L > n_train:
        raise ValueError(f"{name} has {n_rows} rows, so the training split has {n_train}: fewer than look_back={L}")
    return {"train": (0, n_train), "val": (n_train - L, n_train + n_val), "test": (n_rows - n_test - L, n_rows)}


def time_features(dates: np.ndarray) -> np.ndarray:
    """``(N, 4)`` float64: hour of day / 23, day of week / 6 (Monday 0), (day of month - 1) / 30 and (day of year
    - 1) / 365, each minus 0.5 (so in [-0.5, 0.5])."""
    d = np.asarray(dates).astype("datetime64[s]")
    day = d.astype("datetime64[D]")
    hour = (d.astype("datetime64[h]") - day).astype(np.int64)
    weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    mday = (day - day.astype("datetime64[M]")).astype(np.int64)  # 0-based
    yday = (day - day.astype("datetime64[Y]")).astype(np.int64)  # 0-based
    return np.stack([hour / 23.0, weekday / 6.0, mday / 30.0, yday / 365.0], axis=1) - 0.5


# ------------------------------------------------------------------------------------------------------ windows


@dataclass
class ForecastSplit:
    """One split's normalised rows and its windows of stride 1.

    Attributes:
        name: ``"train"``, ``"val"`` or ``"test"``.
        start, end: its rows ``[start, end)`` of the series.
        values: ``(end - start, V)`` float64, z-scored with the training statistics.
        marks: ``(end - start, F)`` time features, or ``None``.
    """

    name: str
    start: int
    end: int
    values: np.ndarray
    marks: np.ndarray | None
    look_back: int
    horizon: int

    @property
    def n_windows(self) -> int:
        return self.end - self.start - self.look_back - self.horizon + 1

    def n_windows_drop_last(self, batch_size: int) -> int:
        """The windows a loader that drops the last partial batch of ``batch_size`` evaluates (spec C.9)."""
        return self.n_windows // batch_size * batch_size

    def windows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Windows ``idx (B,)`` (0-based, in ``[0, n_windows)``): ``x (B, L, V)``, ``y (B, T, V)`` and, with time
        features, ``x_marks (B, L, F)`` and ``y_marks (B, T, F)``."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_windows):
            raise IndexError(f"window indices must be in [0, {self.n_windows}) for the {self.name} split, got "
                             f"{int(idx.min())}..{int(idx.max())}")
        L, T = self.look_back, self.horizon
        rows = idx[:, None] + np.arange(L + T)[None, :]  # (B, L+T)
        win = self.values[rows]  # (B, L+T, V)
        out = {"x": win[:, :L], "y": win[:, L:]}
        if self.marks is not None:
            m = self.marks[rows]  # (B, L+T, F)
            out["x_marks"], out["y_marks"] = m[:, :L], m[:, L:]
        return out


@dataclass
class ForecastData:
    """A series prepared for forecasting: its splits, the training statistics and the channel names."""

    name: str
    columns: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    splits: dict[str, ForecastSplit] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return len(self.columns)

    def normalise(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.std + self.mean


def prepare_forecast_data(series: TimeSeries, *, look_back: int, horizon: int, features: Features = "M",
                          target: str = "OT", borders: Borders = "ett_hour", train_fraction: float = 0.7,
                          test_fraction: float = 0.2, with_time_features: bool = False,
                          stats: tuple[np.ndarray, np.ndarray] | None = None) -> ForecastData:
    """Splits, training-only z-scoring and windows of ``series`` (see the module docstring).

    Args:
        stats: ``(mean, std)`` to use instead of fitting them on the training rows (a checkpoint's statistics).

    Raises:
        ValueError: a missing target column, a series shorter than ``look_back + horizon``, a split without a
            single window, or ``stats`` of the wrong length.
    """
    L, T = look_back, horizon
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"look_back must be an int >= 1, got {L!r}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"horizon must be an int >= 1, got {T!r}")
    n = len(series)
    if n < L + T:
        raise ValueError(f"{series.name} has {n} rows, fewer than look_back + horizon = {L} + {T} = {L + T}")
    if features == "S":
        if target not in series.columns:
            raise ValueError(f"{series.name}: target column {target!r} is missing; its columns are "
                             f"{', '.join(series.columns)}")
        j = series.columns.index(target)
        values, columns = series.values[:, j : j + 1], (target,)
    elif features == "M":
        values, columns = series.values, series.columns
    else:
        raise ValueError(f"features must be 'M' (every channel) or 'S' (the target only), got {features!r}")
    spans = split_borders(n, L, borders=borders, train_fraction=train_fraction, test_fraction=test_fraction,
                          name=series.name)
    if stats is None:
        a, b = spans["train"]
        train = values[a:b]
        mean = train.mean(axis=0)
        std = train.std(axis=0)  # population std (ddof 0), as the protocol's StandardScaler
        std = np.where(std > 0, std, 1.0)  # a constant training column is only centred
    else:
        mean, std = (np.asarray(s, dtype=np.float64).reshape(-1) for s in stats)
        if mean.shape != (len(columns),) or std.shape != (len(columns),) or not np.all(std > 0):
            raise ValueError(f"stats must be a mean and a positive std per channel ({len(columns)}: "
                             f"{', '.join(columns)}), got {mean.shape[0]} and {std.shape[0]} values")
    norm = (values - mean) / std
    marks = time_features(series.dates) if with_time_features else None
    data = ForecastData(name=series.name, columns=tuple(columns), mean=mean, std=std)
    for split, (a, b) in spans.items():
        s = ForecastSplit(name=split, start=a, end=b, values=norm[a:b], marks=None if marks is None else marks[a:b],
                          look_back=L, horizon=T)
        if s.n_windows < 1:
            raise ValueError(f"{series.name}: the {split} split has {b - a} rows (rows [{a}, {b})), fewer than "
                             f"look_back + horizon = {L + T}; use a shorter look_back or horizon or a longer series")
        data.splits[split] = s
    return data
