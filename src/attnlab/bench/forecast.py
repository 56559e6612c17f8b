"""The ``forecast`` suite: what AutoHFormer costs against the full-attention Transformer forecaster as the
look-back ``L`` grows (spec ``time_series.md`` C.12; issue "time-series forecasting", results item 3).

Per look-back ``L`` (``--lengths``; default 336, 672, 1344, 2688 on a CPU) and the horizon 96 (24 with
``--quick``), 7 channels (ETTh1's), batch ``options.batch_size``, the models at the sizes of the
``etth1-autohformer`` and ``etth1-transformer`` presets: AutoHFormer as ``impl="auto"`` runs it (banded on a CPU
for the preset's window of 32, FlexAttention on CUDA; decoding steps, with at most ``window / 2 + 1`` cached keys,
run the dense form), the same AutoHFormer with its window applied as a dense mask over the whole ``(L + T)``-step
score matrix (``impl="dense"``, ``autohformer-dense``: what computing only the band saves; the dense form is eager
PyTorch, so part of its gap to the Transformer is SDPA's fused kernel, not the window), and the full-attention
Transformer forecaster:

* **train step**: the task's loss (MSE; AutoHFormer teacher-forced over ``L + T`` steps) forward and backward,
  the models timed interleaved (a, b, c, a, b, c, ...) so the ratios are fair on a shared machine, and their peak
  memory;
* **inference**: the full-horizon forecast in eval mode without gradients (AutoHFormer: a prefill over the
  look-back, then ``T`` steps one at a time with sliding key/value caches; the Transformer: one pass, a direct
  multi-step head), timed interleaved.

Growth exponents in ``L`` are fitted per model and figure. Before timing, each ``L`` is checked: both timed
AutoHFormer forms equal the reference form in float64 (teacher-forced output on one window), so a speed is never
reported for a wrong form.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.measure import fit_exponent, peak_memory, time_fns
from attnlab.bench.steps import (MiB, check_tolerance, correctness_status, log_log_panels, progress, relative_error,
                                 save_figure, short_error)

__all__ = ["run_forecast_cost", "FORECAST_MODELS", "N_CHANNELS"]

FORECAST_MODELS = ("autohformer", "autohformer-dense", "transformer")
N_CHANNELS = 7
COLUMNS = ["model", "L", "status", "train ms", "train ×transformer", "train MiB", "mem ×transformer",
           "infer ms", "infer ×transformer"]


def _configs() -> dict[str, Any]:
    from attnlab.train.presets import get_preset

    cfgs = {name: get_preset(f"etth1-{name}").model for name in ("autohformer", "transformer")}
    auto = cfgs["autohformer"]
    cfgs["autohformer-dense"] = dataclasses.replace(auto, autohformer=dataclasses.replace(auto.autohformer,
                                                                                          impl="dense"))
    return cfgs


def _build(cfg: Any, L: int, T: int, options: BenchOptions, dtype: torch.dtype | None = None, **changes: Any):
    if changes:
        cfg = dataclasses.replace(cfg, autohformer=dataclasses.replace(cfg.autohformer, **changes))
    torch.manual_seed(0)
    model = cfg.build(look_back=L, horizon=T, n_channels=N_CHANNELS)
    return model.to(device=options.device, dtype=dtype or options.dtype)


def _timed_impl(cfg: Any, L: int, T: int, options: BenchOptions) -> str:
    """The attention form the timed AutoHFormer runs over its ``L + T - 1`` teacher-forced steps (``"auto"`` resolved
    as the op resolves it)."""
    from attnlab.ops.decayed import resolve_impl

    return resolve_impl(cfg.autohformer.impl, device_type="cuda" if options.is_cuda else "cpu",
                        lookback=cfg.autohformer.lookback, kv_len=L + T - 1)


def _check(cfg: Any, L: int, T: int, options: BenchOptions) -> float:
    """Relative error of the form AutoHFormer ``cfg`` runs against the reference form (float64, one window)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, L, N_CHANNELS, generator=g, dtype=torch.float64).to(options.device)
    y = torch.randn(1, T, N_CHANNELS, generator=g, dtype=torch.float64).to(options.device)
    outs = []
    for impl in (_timed_impl(cfg, L, T, options), "reference"):
        m = _build(cfg, L, T, options, torch.float64, impl=impl, dropout=0.0).train()
        with torch.no_grad():
            outs.append(m(x, None, target=y))
    return relative_error(outs[0], outs[1])


def run_forecast_cost(options: BenchOptions) -> SuiteResult:
    lengths = options.lengths_or(cpu=(336, 672, 1344, 2688), cuda=(336, 672, 1344, 2688, 5376), quick=(48, 96))
    T = 24 if options.quick else 96
    cfgs = _configs()
    tol = check_tolerance(torch.float64)
    rows: list[dict[str, Any]] = []
    B, dev = options.batch_size, options.device
    for L in progress(list(lengths), options, "forecast"):
        try:
            for m in ("autohformer", "autohformer-dense"):  # the first failure is the row's status
                what = f"{_timed_impl(cfgs[m], L, T, options)} vs reference "
                status = correctness_status(_check(cfgs[m], L, T, options), tol, what=what)
                if status != "ok":
                    break
        except Exception as exc:
            status = short_error(exc)
        if status != "ok":
            rows += [{"model": m, "L": L, "status": status} for m in FORECAST_MODELS]
            continue
        g = torch.Generator().manual_seed(1)
        x = torch.randn(B, L, N_CHANNELS, generator=g).to(device=dev, dtype=options.dtype)
        y = torch.randn(B, T, N_CHANNELS, generator=g).to(device=dev, dtype=options.dtype)
        models = {m: _build(cfgs[m], L, T, options) for m in FORECAST_MODELS}

        def train_step(m: str):
            model = models[m]

            def step() -> None:
                model.train().zero_grad(set_to_none=True)
                kw = {"target": y} if getattr(model, "uses_target", False) else {}
                F.mse_loss(model(x, None, **kw), y).backward()
            return step

        def infer(m: str):
            model = models[m]

            def run() -> None:
                model.eval()
                with torch.no_grad():
                    model(x, None)
            return run

        train_t = time_fns({m: train_step(m) for m in FORECAST_MODELS}, **options.timing())
        infer_t = time_fns({m: infer(m) for m in FORECAST_MODELS}, **options.timing())
        mem = {m: peak_memory(train_step(m), device=dev) / MiB for m in FORECAST_MODELS}
        for m in FORECAST_MODELS:
            rows.append({"model": m, "L": L, "status": "ok", "train ms": train_t[m].median * 1e3,
                         "train ×transformer": train_t[m].median / train_t["transformer"].median,
                         "train MiB": mem[m], "mem ×transformer": mem[m] / mem["transformer"],
                         "infer ms": infer_t[m].median * 1e3,
                         "infer ×transformer": infer_t[m].median / infer_t["transformer"].median})
    growth = Table(title="growth in L (fitted exponent)", columns=["model", "train time exp", "train mem exp",
                                                                  "infer time exp"])
    for m in FORECAST_MODELS:
        ok = [r for r in rows if r["model"] == m and r["status"] == "ok"]
        if len(ok) >= 2:
            xs = [r["L"] for r in ok]
            growth.rows.append({"model": m, "train time exp": fit_exponent(xs, [r["train ms"] for r in ok]),
                                "train mem exp": fit_exponent(xs, [r["train MiB"] for r in ok]),
                                "infer time exp": fit_exponent(xs, [r["infer ms"] for r in ok])})
    notes = [f"horizon {T}, {N_CHANNELS} channels, batch {B}, {options.dtype}; the etth1-autohformer and "
             "etth1-transformer preset sizes; medians of interleaved timings; peak memory of one training step.",
             "autohformer runs impl='auto' (training and prefill banded on a CPU for the window of 32, FlexAttention "
             "on CUDA; decoding steps over at most window/2 + 1 cached keys dense); autohformer-dense is the same "
             "model with the window applied as a dense mask everywhere (impl='dense', eager PyTorch, unlike the "
             "Transformer's fused SDPA kernel).",
             "AutoHFormer decodes the horizon step by step with sliding caches (its inference is T sequential "
             "calls); the Transformer forecaster predicts the horizon in one pass."]
    return SuiteResult(suite="forecast", options=options, notes=notes, data={"rows": rows},
                       tables=[Table(title="training step and full-horizon inference by look-back", columns=COLUMNS,
                                     rows=rows), growth])


def plot_forecast_cost(result: SuiteResult, stem: Path) -> list[Path]:
    fig = log_log_panels(result.data["rows"], series="model", x="L", xlabel="look-back L",
                         panels=[("train ms", "training step", "ms"), ("train MiB", "training peak memory", "MiB"),
                                 ("infer ms", "full-horizon inference", "ms")])
    return [save_figure(fig, stem)]


register_suite(Suite(name="forecast", description="AutoHFormer (banded and dense-masked) vs the full-attention "
                     "Transformer forecaster: training step, peak memory and full-horizon inference by look-back",
                     run=run_forecast_cost, plot=plot_forecast_cost))
