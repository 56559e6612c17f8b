"""``attnlab forecast`` on a tiny forecasting run over a synthetic CSV: the predictions CSV (shape, continued dates,
original units = the task's forecast), backtests with truth, the plot, never overwriting, and each error path; plus
the forecasting defaults of ``attnlab train`` / ``compare`` and the comparison report's error-by-horizon plot."""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.data.timeseries import load_timeseries
from attnlab.models.timeseries import ForecastModelConfig
from attnlab.tasks.forecast_output import continue_dates, resolve_start
from attnlab.train.loading import load_trained
from attnlab.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent / "tasks"))
from test_forecast_task import _cfg, _data, _series_csv  # noqa: E402  the tiny series and run of the task tests

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, its series CSV): a transformer with time features (look-back 16, horizon 4), 2 steps."""
    tmp = tmp_path_factory.mktemp("fc")
    cfg = _cfg(tmp, steps=2, eval_interval=2, precision="float32")  # the series is tmp/s.csv
    Trainer(cfg, out_dir=tmp / "run", log=None).fit()
    return tmp / "run", tmp / "s.csv"


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_future_forecast_csv_continues_the_dates_in_original_units(run: tuple[Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rdir, series_csv = run
    out = tmp_path / "pred.csv"
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv), "--out", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "forecast of 4 steps from 2021-03-17 16:00:00 (row 400" in msg and "no truth" in msg
    rows = _rows(out.read_text())
    assert rows[0] == ["date", "load", "OT"] and len(rows) == 1 + 4
    assert [r[0] for r in rows[1:]] == [f"2021-03-17 {h}:00:00" for h in (16, 17, 18, 19)]  # 400 h after 03-01 00:00
    got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    t = load_trained(rdir, device="cpu", data=str(series_csv))
    s = load_timeseries(series_csv)
    want = t.task.forecast(t.model, s.values, dates=s.dates)  # (T, V) in original units
    np.testing.assert_array_equal(got, want)
    # original units: the normalised model output mapped back with the training statistics
    import torch

    from attnlab.data.timeseries import time_features

    st = t.state["task_state"]
    mean, std = np.array(st["mean"]), np.array(st["std"])
    x = torch.from_numpy((s.values[-16:] - mean) / std).float()[None]
    marks = torch.from_numpy(time_features(s.dates[-16:])).float()[None]
    with torch.no_grad():
        norm = t.model(x, marks)[0].double().numpy()
    np.testing.assert_allclose(got, norm * std + mean, rtol=1e-6)
    # without --out the CSV goes to stdout and the message to stderr
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv)]) == 0
    cap = capsys.readouterr()
    assert cap.out == out.read_text() and "forecast of 4 steps" in cap.err


def test_backtest_and_at_show_truth_and_plot(run: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rdir, series_csv = run
    s = load_timeseries(series_csv)
    out, png = tmp_path / "b.csv", tmp_path / "b.png"
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv), "--backtest", "--out", str(out),
                 "--plot", str(png), "--channels", "load,OT"]) == 0
    msg = capsys.readouterr().out
    assert "(row 396 of" in msg and "truth known for 4: mse" in msg and f"wrote {png}" in msg
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    rows = _rows(out.read_text())
    assert [r[0] for r in rows[1:]] == [str(d).replace("T", " ") for d in s.dates[396:]]  # the series' own dates
    # --at as a negative index, a row index and that row's date: the same forecast
    for at in ("-4", "396", "2021-03-17 12:00:00"):
        assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv), "--at", at]) == 0
        assert capsys.readouterr().out == out.read_text()
    # a forecast that runs past the end: truth for the known part, dates continued after it
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv), "--at", "398"]) == 0
    cap = capsys.readouterr()
    assert "truth known for 2" in cap.err
    assert [r[0] for r in _rows(cap.out)[1:]] == ["2021-03-17 14:00:00", "2021-03-17 15:00:00",
                                                   "2021-03-17 16:00:00", "2021-03-17 17:00:00"]
    svg = tmp_path / "f.svg"
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv), "--plot", str(svg),
                 "--plot-history", "5"]) == 0
    assert svg.read_text().lstrip().startswith("<?xml")


def test_never_overwrites_without_force(run: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rdir, series_csv = run
    out, png = tmp_path / "p.csv", tmp_path / "p.png"
    out.write_text("keep me\n")
    png.write_text("keep me too\n")
    base = ["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv)]
    assert main([*base, "--out", str(out)]) == 2
    assert f"--out {str(out)!r} already exists; choose another file or pass --force" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "new.csv"), "--plot", str(png)]) == 2
    assert "--plot" in capsys.readouterr().err
    assert out.read_text() == "keep me\n" and png.read_text() == "keep me too\n"
    assert not (tmp_path / "new.csv").exists()  # refused before anything was written
    assert main([*base, "--out", str(out), "--plot", str(png), "--force"]) == 0
    assert out.read_text().startswith("date,load,OT\n") and png.read_bytes()[:8] == PNG


@pytest.mark.parametrize("extra, message", [
    (["--at", "5"], "--at=5 leaves 5 rows of history; the model needs look_back=16, so the forecast may start at "
                    "rows 16..400"),
    (["--at", "401"], "--at=401 leaves 401 rows"),
    (["--at", "-390"], "--at=-390 leaves 10 rows"),
    (["--at", "yesterday"], "--at='yesterday' is neither a row index nor an ISO date"),
    (["--at", "2030-01-01"], "--at='2030-01-01' is not a date of"),
    (["--channels", "OT,power", "--plot", "{tmp}/x.png"], "--channels: power not among the model's channels load, OT"),
    (["--plot", "{tmp}/x.jpg"], "--plot '{tmp}/x.jpg': the file name must end in .png, .svg, .pdf"),
    (["--out", "{tmp}/no/such/dir/x.csv"], "the folder"),
    (["--out", "{tmp}/same", "--plot", "{tmp}/same"], "--out and --plot name the same file"),
    (["--plot-history", "0"], "--plot-history must be a positive number of rows, got 0"),
])
def test_bad_arguments_are_named(run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 extra: list[str], message: str) -> None:
    rdir, series_csv = run
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv), *extra]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("attnlab: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in cap.err
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_and_series_errors(run: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rdir, series_csv = run
    assert main(["forecast", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a stored CSV path is not followed: --csv names the series
    assert main(["forecast", "--checkpoint", str(rdir)]) == 2
    assert "a path stored in the checkpoint, which is not followed on its own; pass --csv FILE" in \
        capsys.readouterr().err
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(tmp_path / "missing.csv")]) == 2
    assert "--csv: time series" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("date,load,temp\n" + "".join(f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00,1,{i}\n"
                                                  for i in range(40)))
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(other)]) == 2
    assert f"--csv {other} lacks the channel OT the model was trained on (load, OT); its columns are load, temp" in \
        capsys.readouterr().err
    short = tmp_path / "short.csv"
    short.write_text("\n".join(series_csv.read_text().splitlines()[:11]) + "\n")  # 10 rows < look_back 16
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(short)]) == 2
    assert "has 10 rows, fewer than the model's look_back=16" in capsys.readouterr().err
    # extra columns in another order are fine: the channels are picked by name
    shuffled = tmp_path / "shuffled.csv"
    lines = [r.split(",") for r in series_csv.read_text().splitlines()]
    body = "".join(f"{d},{ot},{ld},0\n" for d, ld, ot in lines)
    shuffled.write_text(body.replace("date,OT,load,0", "date,OT,load,x"))
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(shuffled)]) == 0
    a = capsys.readouterr().out
    assert main(["forecast", "--checkpoint", str(rdir), "--csv", str(series_csv)]) == 0
    assert capsys.readouterr().out == a


def test_a_checkpoint_of_another_task_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello world, " * 400)
    assert main(["train", "--preset", "shakespeare-char-cpu", "--set", f"data.source={text}", "--set",
                 f"data.cache_dir={tmp_path / 'c'}", "--set", "model.n_layers=1", "--set", "model.d_model=16",
                 "--set", "model.context_len=8", "--steps", "1", "--batch-size", "2", "--no-progress",
                 "--set", "eval_interval=1", "--set", "tensorboard=false", "--out", str(tmp_path / "lm")]) == 0
    capsys.readouterr()
    assert main(["forecast", "--checkpoint", str(tmp_path / "lm")]) == 2
    err = capsys.readouterr().err
    assert "is a 'lm' model, but this command needs a 'forecast' model; use `attnlab generate`" in err
    # and a forecasting checkpoint given to generate points here
    cfg = _cfg(tmp_path, model=ForecastModelConfig(arch="dlinear"), steps=1, eval_interval=1)
    Trainer(cfg, out_dir=tmp_path / "fc", log=None).fit()
    assert main(["generate", "--checkpoint", str(tmp_path / "fc")]) == 2
    assert "use `attnlab forecast`" in capsys.readouterr().err


def test_resolve_start_and_continue_dates(tmp_path: Path) -> None:
    s = load_timeseries(_series_csv(tmp_path / "s.csv", n=50))
    assert resolve_start(None, s, look_back=8, horizon=4) == 50
    assert resolve_start(None, s, look_back=8, horizon=4, backtest=True) == 46
    assert resolve_start("2021-03-03T02:00:00", s, look_back=8, horizon=4) == 50  # the step after the last row
    assert resolve_start("8", s, look_back=8, horizon=4) == 8
    with pytest.raises(ValueError, match="give one"):
        resolve_start("8", s, look_back=8, horizon=4, backtest=True)
    d = np.array(["2020-01-01", "2020-01-02", "2020-01-04", "2020-01-05"], dtype="datetime64[s]")
    assert [str(x)[:10] for x in continue_dates(d, 2)] == ["2020-01-06", "2020-01-07"]  # the most common step
    with pytest.raises(ValueError, match="single row"):
        continue_dates(d[:1], 1)


def test_forecast_defaults_and_comparison_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from attnlab.compare import CompareConfig, get_compare_preset, run_compare

    assert main(["train", "--task", "forecast", "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["horizon"] == 24  # etth1-quick
    assert main(["compare", "--task", "forecast", "--print-config", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["variants"] == ["dlinear", "transformer", "autohformer"] and d["seeds"] == [0, 1]
    assert get_compare_preset("etth1-quick").variants == ["dlinear", "transformer", "autohformer"]
    q = get_compare_preset("forecast-quick")
    assert q.run_config("autohformer", 0).model.autohformer.segment_len == 24
    base = replace(q.base, data=_data(tmp_path), steps=2, eval_interval=2, batch_size=8, eval_batch_size=64,
                   progress=False, tensorboard=False, device="cpu")
    base = replace(base, model=replace(base.model, autohformer=replace(base.model.autohformer, n_layers=1,
                                                                       d_model=16, n_heads=2, ffn_hidden=16,
                                                                       segment_len=2)))
    res = run_compare(CompareConfig(base=base, variants=["dlinear", "autohformer"], seeds=[0, 1]), tmp_path / "cmp",
                      log=lambda s: None)
    md = res.files["leaderboard_md"].read_text()
    assert "| model | params | val loss (mean ± std) | val mse (mean ± std) | test mse |" in md
    # the mse columns in the MSE's format (4 decimals, as the loss), not BLEU's 2
    for var in ("dlinear", "autohformer"):
        assert re.search(rf"\| `{var}` \| [\d,]+ \| (\d+\.\d{{4}} ± \d+\.\d{{4}}) \| \1 \| \d+\.\d{{4}} \|", md), md
    assert "ppl" not in md and "mean MSE (normalised scale)" in md
    assert res.files["horizon_error"].read_bytes()[:8] == PNG
    assert "Error by horizon step" in res.files["html"].read_text()
