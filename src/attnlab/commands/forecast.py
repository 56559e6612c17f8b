"""``attnlab forecast``: forecast a series with a forecasting checkpoint; predictions as CSV, optionally a plot."""

from __future__ import annotations

import argparse
from typing import IO, Callable

HELP = ("forecast a time series with a forecasting checkpoint: the next horizon steps after the end of the series "
        "(or from --at), as CSV in the original units, and a plot of history, truth where known and forecast")

_PLOT_FORMATS = ("png", "svg", "pdf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (newest checkpoint)")
    p.add_argument("--csv", metavar="FILE",
                   help="the series: a CSV file (a 'date' column, then numeric columns holding the trained "
                        "channels; others are ignored) or a bundled name (default: the bundled series the model was "
                        "trained on; a path stored in the checkpoint is not followed)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--at", metavar="INDEX_OR_DATE",
                       help="where the forecast starts: the row of its first step (0-based; negative counts from the "
                            "end) or that row's date (default: just after the last row, the true future)")
    where.add_argument("--backtest", action="store_true",
                       help="forecast the last horizon rows of the series, so the truth is shown and scored")
    p.add_argument("--out", metavar="FILE.csv", help="write the predictions here (default: print them)")
    p.add_argument("--plot", metavar="FILE.png", help="plot history, truth where known and forecast (png, svg, pdf)")
    p.add_argument("--channels", help="comma-separated channels to plot (default: the target channel if trained on, "
                                      "else the first three)")
    p.add_argument("--plot-history", type=int, metavar="STEPS",
                   help="history rows shown in the plot (default: the look-back)")
    p.add_argument("--force", action="store_true", help="overwrite --out and --plot if they exist")
    p.add_argument("--device", default="auto")


def _check_outputs(args: argparse.Namespace) -> str | None:
    """The first problem with --out and --plot (exist without --force, same file, no such folder, plot format)."""
    from pathlib import Path

    paths = [(flag, Path(v)) for flag, v in (("--out", args.out), ("--plot", args.plot)) if v]
    if len(paths) == 2 and paths[0][1].resolve() == paths[1][1].resolve():
        return f"--out and --plot name the same file {args.out!r}"
    for flag, path in paths:
        if path.is_dir():
            return f"{flag} {str(path)!r} is a directory; give a file name"
        if path.exists() and not args.force:
            return f"{flag} {str(path)!r} already exists; choose another file or pass --force to overwrite it"
        if not path.parent.is_dir():
            return f"{flag} {str(path)!r}: the folder {str(path.parent)!r} does not exist"
    if args.plot and Path(args.plot).suffix.lower().lstrip(".") not in _PLOT_FORMATS:
        return f"--plot {args.plot!r}: the file name must end in {', '.join('.' + f for f in _PLOT_FORMATS)}"
    return None


def _plot_channels(args: argparse.Namespace, task: object) -> list[str]:
    from attnlab.commands._config_args import csv_list

    columns = list(task.columns)  # type: ignore[attr-defined]
    if args.channels is None:
        target = task.data_cfg.target  # type: ignore[attr-defined]
        return [target] if target in columns else columns[:3]
    chosen = csv_list(args.channels, "--channels")
    unknown = [c for c in chosen if c not in columns]
    if unknown:
        raise ValueError(f"--channels: {', '.join(unknown)} not among the model's channels {', '.join(columns)}")
    return chosen


def run(args: argparse.Namespace) -> int:
    import sys

    from attnlab.commands._config_args import fail, load_checkpoint
    from attnlab.config import ConfigError
    from attnlab.data.timeseries import load_timeseries
    from attnlab.tasks.forecast_output import forecast_at, forecast_csv, format_date, plot_forecast, resolve_start

    problem = _check_outputs(args)
    if problem:
        return fail(problem)
    if args.plot_history is not None and args.plot_history < 1:
        return fail(f"--plot-history must be a positive number of rows, got {args.plot_history}")
    t = load_checkpoint(args.checkpoint, device=args.device, task="forecast")
    if isinstance(t, int):
        return t
    task = t.task
    source = args.csv or t.data_source
    if source is None:
        return fail(f"checkpoint {str(t.path)!r} was trained on {t.stored_source!r}, a path stored in the checkpoint, "
                    "which is not followed on its own; pass --csv FILE to name the series to forecast")
    d = task.data_cfg
    try:
        channels = _plot_channels(args, task) if args.plot else []
        name = f"--csv {source}" if args.csv else str(source)
        try:
            series = load_timeseries(source)
        except ValueError as e:
            raise ValueError(f"--csv: {e}" if args.csv else str(e)) from None
        start = resolve_start(args.at, series, look_back=d.look_back, horizon=d.horizon, backtest=args.backtest)
        w = forecast_at(task, t.model, series, start, name=name)
    except (ValueError, ConfigError) as e:
        return fail(str(e))
    # messages go to stderr when the predictions go to stdout
    say = (lambda s: print(s)) if args.out else (lambda s: print(s, file=sys.stderr))
    known = len(w.truth)
    say(f"forecast of {d.horizon} steps from {format_date(w.dates[0])} (row {start} of {series.name}, "
        f"{len(series)} rows) after {d.look_back} steps of history; "
        + (f"truth known for {known}: mse {w.mse:.4f} mae {w.mae:.4f} (normalised scale)" if known
           else "no truth (past the end of the series)"))
    text = forecast_csv(w)
    try:
        if args.out:
            _write_new(args.out, lambda f: f.write(text.encode("utf-8")), force=args.force)
            say(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
        if args.plot:
            steps = min(args.plot_history or d.look_back, start)
            title = f"{t.config.model.arch} from {t.path}: {d.horizon} steps after {d.look_back}"
            _write_new(args.plot, lambda f: plot_forecast(w, f, channels=channels, history_steps=steps, title=title,
                                                          fmt=args.plot.rsplit(".", 1)[-1].lower()), force=args.force)
            say(f"wrote {args.plot}")
    except FileExistsError as e:
        return fail(f"{e.filename} appeared while forecasting; not overwritten (pass --force to overwrite)")
    except OSError as e:
        return fail(f"{e.filename or 'output'}: {e.strerror or e}")
    return 0


def _write_new(path: str, write: Callable[[IO[bytes]], object], *, force: bool) -> None:
    """``write(f)`` into ``path``, created (``force``: or replaced); a file left half-written by an error is removed."""
    import os

    with open(path, "wb" if force else "xb") as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.unlink(path)
            raise
