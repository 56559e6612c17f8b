"""The forecasting task on a small synthetic CSV: batches from (seed, step), metrics over every window, exact resume,
checkpoint state without data, and the CLI (train etth1-quick, eval)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.cli import main
from attnlab.models.timeseries import ForecastModelConfig, TransformerForecasterConfig
from attnlab.tasks import EvalContext, task_class
from attnlab.tasks.forecast import ForecastDataConfig, Forecasting, epoch_order_rows
from attnlab.train.presets import etth1_quick
from attnlab.train.trainer import Trainer


def _series_csv(path: Path, n: int = 400) -> Path:
    """Two daily cycles, a trend and noise: the layout of the ETT files (date, then numeric columns)."""
    rng = np.random.default_rng(0)
    t = np.arange(n)
    base = np.datetime64("2021-03-01T00:00:00")
    a = np.sin(2 * np.pi * t / 24) + 0.01 * t + 0.1 * rng.standard_normal(n)
    b = 2.0 * np.cos(2 * np.pi * t / 24) - 5.0 + 0.1 * rng.standard_normal(n)
    stamps = [str(base + np.timedelta64(int(i), "h")).replace("T", " ") for i in range(n)]
    lines = ["date,load,OT"] + [f"{stamps[i]},{float(a[i])!r},{float(b[i])!r}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _data(tmp_path: Path, **kw: object) -> ForecastDataConfig:
    return ForecastDataConfig(source=str(_series_csv(tmp_path / "s.csv")), look_back=16, horizon=4, borders="ratio",
                              **kw)  # type: ignore[arg-type]


def _cfg(tmp_path: Path, **kw: object):
    base = etth1_quick()
    cfg = replace(
        base,
        model=ForecastModelConfig(arch="transformer", transformer=TransformerForecasterConfig(
            n_layers=1, d_model=16, n_heads=2, dropout=0.1)),
        data=_data(tmp_path, time_features=True),
        steps=4, batch_size=8, eval_interval=2, log_interval=1, progress=False, tensorboard=False, device="cpu",
        precision="float64", threads=1, eval_batch_size=7,
    )
    return replace(cfg, **kw)


def _weights(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tr.model.state_dict().items()}


def test_registered_and_batches_depend_on_seed_and_step_only(tmp_path: Path) -> None:
    assert task_class("forecast") is Forecasting
    n = 37
    a = [epoch_order_rows(s, seed=3, n_windows=n, batch_size=8) for s in range(10)]
    b = [epoch_order_rows(s, seed=3, n_windows=n, batch_size=8) for s in reversed(range(10))][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # any order of asking, same rows
    flat = np.concatenate(a)  # 80 rows = two whole epochs + 6
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n : 2 * n]) == list(range(n))
    assert not np.array_equal(flat[:n], flat[n : 2 * n])  # each epoch its own order
    assert not np.array_equal(epoch_order_rows(0, seed=4, n_windows=n, batch_size=8), a[0])
    t = Forecasting(ForecastModelConfig(), _data(tmp_path), seed=3)
    rows = t.global_batch(5, 8)
    assert np.array_equal(rows, epoch_order_rows(5, seed=3, n_windows=t.data.splits["train"].n_windows, batch_size=8))
    assert t.count_targets(rows) == 8 * 4 * 2
    b8 = t.make_batch(rows, torch.device("cpu"))
    assert b8.inputs["x"].shape == (8, 16, 2) and b8.inputs["y"].shape == (8, 4, 2) and b8.n_targets == 64


def test_evaluate_covers_every_window_and_reports_drop_last(tmp_path: Path) -> None:
    t = Forecasting(ForecastModelConfig(), _data(tmp_path, drop_last_batch=16), seed=0)
    t.set_output_dir(tmp_path / "out")
    torch.manual_seed(0)
    model = t.build_model().double()
    s = t.data.splits["test"]
    win = s.windows(np.arange(s.n_windows))
    with torch.no_grad():
        pred = model(torch.from_numpy(win["x"])).numpy()
    err = pred - win["y"]  # (N, T, V)
    n_drop = s.n_windows // 16 * 16
    r = t.evaluate(model, "test", EvalContext(device=torch.device("cpu"), batch_size=5))
    m = r.metrics
    assert m["windows"] == s.n_windows == 80 - 4 + 1 and m["windows_drop_last"] == n_drop == 64
    assert r.loss == m["mse"] == pytest.approx(float(np.mean(err**2)), rel=1e-12)
    assert m["mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-12)
    assert m["mse_drop_last"] == pytest.approx(float(np.mean(err[:n_drop] ** 2)), rel=1e-12)
    assert m["mae_drop_last"] == pytest.approx(float(np.mean(np.abs(err[:n_drop]))), rel=1e-12)
    np.testing.assert_allclose(r.mse_per_step, np.mean(err**2, axis=(0, 2)), rtol=1e-12)
    assert r.tokens == s.n_windows * 4 * 2
    csv = (tmp_path / "out" / "horizon-mse-test.csv").read_text().splitlines()
    assert csv[0] == "step,mse,mae" and len(csv) == 5 and float(csv[1].split(",")[1]) == r.mse_per_step[0]
    np.testing.assert_allclose(r.mae_per_step, np.mean(np.abs(err), axis=(0, 2)), rtol=1e-12)
    assert float(csv[4].split(",")[2]) == r.mae_per_step[3]
    assert "test mse" in r.summary() and "drop_last" in r.summary()
    # the batch size of the evaluation changes nothing
    r2 = t.evaluate(model, "test", EvalContext(device=torch.device("cpu"), batch_size=64))
    assert r2.metrics["mse"] == pytest.approx(m["mse"], rel=1e-12)


def test_validation_on_a_subset_of_windows(tmp_path: Path) -> None:
    """options.val_windows: the validation split on k evenly spaced windows (first and last included), the test
    split always on every window."""
    from attnlab.tasks.forecast import ForecastOptions

    t = Forecasting(ForecastModelConfig(), _data(tmp_path), seed=0, options=ForecastOptions(val_windows=5))
    torch.manual_seed(0)
    model = t.build_model().double()
    s = t.data.splits["val"]
    pick = np.array([0, round((s.n_windows - 1) / 4), round((s.n_windows - 1) / 2), round(3 * (s.n_windows - 1) / 4),
                     s.n_windows - 1])
    win = s.windows(pick)
    with torch.no_grad():
        err = model(torch.from_numpy(win["x"])).numpy() - win["y"]
    r = t.evaluate(model, "val", EvalContext(device=torch.device("cpu"), batch_size=2))
    assert r.metrics["windows"] == 5 and r.metrics["windows_of"] == s.n_windows and "mse_drop_last" not in r.metrics
    assert r.metrics["mse"] == pytest.approx(float(np.mean(err**2)), rel=1e-12)
    full = t.evaluate(model, "test", EvalContext(device=torch.device("cpu"), batch_size=64))
    assert full.metrics["windows"] == t.data.splits["test"].n_windows and "windows_of" not in full.metrics
    with pytest.raises(ValueError, match="val_windows must be an int >= 2"):
        ForecastOptions(val_windows=1)


def test_resume_is_exact(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.model.transformer.dropout == 0.1  # dropout on: the resumed run must continue every RNG stream
    full = Trainer(cfg, out_dir=tmp_path / "full", log=None)
    res = full.fit()
    Trainer(replace(cfg, steps=2), out_dir=tmp_path / "part", log=None).fit()
    resumed = Trainer(cfg, out_dir=tmp_path / "part", resume=True, log=None)
    assert resumed.step == 2
    res2 = resumed.fit()
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a if r["kind"] == "train"] == [r["loss"] for r in b if r["kind"] == "train"]
    assert a[-1]["tokens"] == b[-1]["tokens"] == 4 * 8 * 4 * 2
    assert res.test is not None and res2.test is not None and res.test.metrics == res2.test.metrics
    # equal-sized micro-batches: accumulation over 2 micro-steps gives the one-batch update
    nodrop = _cfg(tmp_path, model=replace(cfg.model, transformer=replace(cfg.model.transformer, dropout=0.0)))
    one = Trainer(nodrop, log=None)
    one.fit()
    two = Trainer(replace(nodrop, grad_accum=2), log=None)
    two.fit()
    for k, v in _weights(one).items():
        torch.testing.assert_close(v, two.model.state_dict()[k], rtol=1e-10, atol=1e-12)


def test_checkpoint_state_rebuilds_the_task_without_data(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, model=ForecastModelConfig(arch="dlinear"), data=_data(tmp_path, features="S", target="OT"),
               steps=2, eval_interval=2)
    tr = Trainer(cfg, out_dir=tmp_path / "run", log=None)
    tr.fit()
    state = tr.task.state()
    assert state["columns"] == ["OT"] and len(state["mean"]) == len(state["std"]) == 1
    gone = replace(cfg.data, source=str(tmp_path / "no-such-file.csv"))
    t = Forecasting.from_state(cfg.model, gone, json.loads(json.dumps(state)), seed=0)
    model = t.build_model().double()
    model.load_state_dict(tr.model.state_dict())
    # a forecast in original units from raw history, without any data loaded
    s = tr.task.data.splits["test"]
    x = s.windows(np.array([3]))["x"][0]  # (L, 1) normalised
    raw = x * state["std"][0] + state["mean"][0]
    got = t.forecast(model, raw)
    with torch.no_grad():
        want = model(torch.from_numpy(x)[None])[0].numpy() * state["std"][0] + state["mean"][0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert t._data is None  # nothing was read
    with pytest.raises(ValueError, match=r"history must have shape \(>= look_back=16, 1\) for the channels OT"):
        t.forecast(model, raw[:5])
    with pytest.raises(ValueError, match="std must be 1 finite numbers"):
        Forecasting.from_state(cfg.model, gone, {**state, "std": [1.0, 2.0]})


def test_cli_train_quick_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f"
    assert main(["train", "--task", "forecast", "--preset", "etth1-quick", "--steps", "3", "--batch-size", "16",
                 "--no-progress", "--out", str(out), "--set", "eval_interval=3", "--set", "tensorboard=false"]) == 0
    log = capsys.readouterr().out
    assert "forecasting 24 steps from 96 on etth1" in log and "test mse" in log
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "forecast" and len(result["test"]["mse_per_step"]) == 24
    assert result["test"]["metrics"]["windows"] == 2857.0  # every test window: 2880 + 96 rows - 96 - 24 + 1
    assert main(["eval", "--checkpoint", str(out), "--splits", "test", "--batch-size", "512", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["task"] == "forecast" and d["data"] == "etth1"
    assert d["test"]["metrics"]["mse"] == pytest.approx(result["test"]["metrics"]["mse"], rel=1e-6)
    assert main(["eval", "--checkpoint", str(out), "--splits", "val", "--batch-size", "512"]) == 0
    text = capsys.readouterr().out
    assert "val mse" in text and "ppl" not in text
    # errors name the key
    assert main(["train", "--preset", "etth1-quick", "--set", "model.arch=lstm", "--print-config"]) == 2
    assert "model.arch: expected one of 'dlinear', 'transformer'" in capsys.readouterr().err
    assert main(["train", "--preset", "etth1-quick", "--set", "data.horizon=0", "--print-config"]) == 2
    assert "horizon must be an int >= 1, got 0" in capsys.readouterr().err


def test_split_shorter_than_one_drop_last_batch_has_no_drop_last_figure(tmp_path: Path) -> None:
    t = Forecasting(ForecastModelConfig(), _data(tmp_path), seed=0)  # 77 test windows < 128
    r = t.evaluate(t.build_model(), "test", EvalContext(device=torch.device("cpu"), batch_size=32))
    assert r.metrics["windows_drop_last"] == 0.0 and "mse_drop_last" not in r.metrics
    assert "drop_last" not in r.summary() and np.isfinite(r.loss)


def test_checkpoint_of_a_csv_run_follows_no_stored_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(tmp_path, model=ForecastModelConfig(arch="dlinear"), data=_data(tmp_path), steps=2, eval_interval=2,
               precision="float32")
    Trainer(cfg, out_dir=tmp_path / "run", log=None).fit()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--splits", "test"]) == 2
    assert "pass --data PATH" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--splits", "test", "--data", cfg.data.source,
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["test"]["metrics"]["windows"] == 77.0
    other = tmp_path / "other.csv"
    other.write_text("date,a,b,c\n" + "".join(f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00,1,2,{i}\n"
                                              for i in range(200)))
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--splits", "test", "--data", str(other)]) == 2
    assert "has the channels a, b, c, but the model was trained on load, OT" in capsys.readouterr().err


def test_tokens_per_s_counts_training_time_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tokens/s is training targets over training time (wall minus evaluations and checkpoints). The closing test
    evaluation once counted in the evaluation time but not in the wall time, so a test split slower to evaluate than
    the training steps (the Transformer's and AutoHFormer's, on the forecast-quick runs) made the training time
    negative and tokens/s 0."""
    import time

    slow = 0.5
    evaluate = Forecasting.evaluate

    def slow_test(self, model, split, ctx):  # type: ignore[no-untyped-def]
        if split == "test":
            time.sleep(slow)
        return evaluate(self, model, split, ctx)

    monkeypatch.setattr(Forecasting, "evaluate", slow_test)
    r = Trainer(_cfg(tmp_path, steps=2, eval_interval=2), log=None).fit()
    assert r.eval_time_s >= slow and r.wall_s >= slow
    assert 0 < r.train_time_s < r.wall_s - slow
    assert r.wall_s == pytest.approx(r.train_time_s + r.eval_time_s + r.checkpoint_time_s)
    assert r.tokens_per_s == pytest.approx(r.tokens / r.train_time_s) and r.tokens == 2 * 8 * 4 * 2
