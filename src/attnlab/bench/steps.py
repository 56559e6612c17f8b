"""What every suite measures with: steps to time, the SDPA baseline, ratios, correctness gates, plots.

A *step* is a pair ``(fwd, fwdbwd)`` of calls without arguments: ``fwd`` runs the case's forward (the measuring
code wraps it in ``torch.no_grad`` for an inference figure), ``fwdbwd`` clears the gradients it produces, runs the
forward with autograd and the backward of a fixed output gradient. The inputs are allocated when the step is
made, before any call, so they are not part of a memory figure.

"fwd" is an inference forward (``torch.no_grad``); "fwd+bwd" is a forward with autograd, then the backward of a
fixed output gradient (input and parameter gradients included). Memory is the peak allocated during the step (see
:mod:`attnlab.bench.measure` for exactly what is counted on CPU). Every time and memory figure of the
``mechanisms`` and ``sparsity`` suites is also given as a ratio to **raw PyTorch SDPA with causal masking**
(``F.scaled_dot_product_attention(q, k, v, is_causal=True)``, q/k/v of shape ``(B, H, T, d_model / H)``)
measured in the same process at the same ``T``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.bench.core import BenchOptions
from attnlab.bench.measure import peak_memory, time_fns

__all__ = ["MiB", "GiB", "BASELINE", "Step", "check_tolerance", "relative_error", "correctness_status", "number", "short_error", "progress",
           "no_grad", "step", "layer_step", "qkv", "sdpa_step", "measure_step", "time_steps", "measure_steps_interleaved",
           "sdpa_baseline", "with_ratios", "half_device_memory", "pyplot", "save_figure", "log_log_panels"]

MiB = 2.0**20
GiB = 2.0**30
BASELINE = "sdpa-causal (baseline)"

Step = tuple[Callable[[], Any], Callable[[], Any]]  # (fwd, fwdbwd)


def check_tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance (times ``1 + max|reference|``) of a benchmark's correctness check vs float64."""
    return {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}.get(dtype, 1e-4)


def relative_error(got: Tensor | None, ref: Tensor | None) -> float:
    """Max abs error of ``got`` (moved to float64 on CPU) divided by ``1 + max|ref|``; ``inf`` for a missing
    gradient or a shape mismatch, ``0`` when both are missing."""
    if got is None or ref is None:
        return 0.0 if got is None and ref is None else math.inf
    got = got.detach().to(device="cpu", dtype=torch.float64)
    ref = ref.detach().to(device="cpu", dtype=torch.float64)
    if got.shape != ref.shape:
        return math.inf
    return float((got - ref).abs().max()) / (1.0 + float(ref.abs().max()))


def correctness_status(err: float, tol: float, *, what: str = "") -> str:
    """``"ok"`` when ``err <= tol`` (``nan`` fails), else the failure that replaces the case's speed."""
    return "ok" if err <= tol else f"FAILED correctness: {what}max error {err:.3g} > tolerance {tol:.3g}"


def number(v: Any) -> float:
    """A table cell as a float: ``nan`` for a missing or non-numeric cell (a note, a skip reason)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def short_error(exc: BaseException) -> str:
    """The status of a case that raised: ``"error: Type: first line of the message"``."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {msg[:160]}"


def progress(items: list, options: BenchOptions, desc: str):
    if not options.progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run under ``torch.no_grad`` (an inference forward)."""
    def run() -> Any:
        with torch.no_grad():
            return fn()
    return run


def step(forward: Callable[[], Tensor], grad: Tensor, *, leaves: Sequence[Tensor] = (),
         module: nn.Module | None = None) -> Step:
    """``(forward, fwdbwd)``: ``fwdbwd`` clears the gradients of ``leaves`` and ``module``, then backpropagates
    ``grad`` through a fresh ``forward()``."""
    def fwdbwd() -> None:
        if module is not None:
            module.zero_grad(set_to_none=True)
        for t in leaves:
            t.grad = None
        forward().backward(grad)

    return forward, fwdbwd


def layer_step(layer: nn.Module, x: Tensor, grad: Tensor | None = None) -> Step:
    """A layer applied to ``x`` (``(B, T, d_model)``, requiring grad): input and parameter gradients."""
    return step(lambda: layer(x), torch.randn_like(x) if grad is None else grad, leaves=[x], module=layer)


def qkv(options: BenchOptions, T: int, *, requires_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Random q, k, v of shape ``(B, H, T, d_model / H)`` in the bench dtype and device."""
    H = options.n_heads
    shape = (options.batch_size, H, T, options.d_model // H)
    return tuple(torch.randn(shape, device=options.device, dtype=options.dtype, requires_grad=requires_grad)
                 for _ in range(3))  # type: ignore[return-value]


def sdpa_step(options: BenchOptions, T: int) -> Step:
    """Raw causal SDPA at length ``T``: the denominator of every ratio."""
    q, k, v = qkv(options, T, requires_grad=True)
    return step(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), torch.randn_like(q),
                leaves=[q, k, v])


def measure_step(fwd: Callable[[], Any], fwdbwd: Callable[[], Any], options: BenchOptions,
                 baseline: Step | None = None) -> dict[str, Any]:
    """Time and peak memory of an inference forward and of a forward+backward (milliseconds, MiB).

    With ``baseline`` (its own ``(fwd, fwdbwd)``), the baseline's calls are timed interleaved with the case's
    (a, b, a, b, ...), so that a slow spell of a shared machine hits both alike; its medians are returned as
    ``"baseline fwd ms"`` / ``"baseline fwd+bwd ms"`` for the ratios.

    An error of the forward propagates (the case failed). A forward+backward that raises (e.g. FlexAttention has
    no backward on CPU) or a memory measurement that cannot run (a compiled kernel cannot be traced under the
    CPU memory tracker) is left out and explained in the ``"note"`` entry.
    """
    kw = options.timing()
    no_grad_fwd = no_grad(fwd)

    def timed(case: Callable[[], Any], base: Callable[[], Any] | None, label: str, out: dict[str, Any]) -> None:
        fns = {"case": case} if base is None else {"case": case, "baseline": base}
        t = time_fns(fns, **kw)
        out[f"{label} ms"] = t["case"].median * 1e3
        if base is not None:
            out[f"baseline {label} ms"] = t["baseline"].median * 1e3

    out: dict[str, Any] = {}
    timed(no_grad_fwd, no_grad(baseline[0]) if baseline else None, "fwd", out)
    notes = []
    for label, fn in (("fwd", no_grad_fwd), ("fwd+bwd", fwdbwd)):
        if label == "fwd+bwd":
            try:
                timed(fn, baseline[1] if baseline else None, "fwd+bwd", out)
            except Exception as exc:
                notes.append(f"no fwd+bwd: {short_error(exc).removeprefix('error: ')}")
                continue
        try:
            out[f"{label} MiB"] = peak_memory(fn, device=options.device) / MiB
        except Exception as exc:
            # e.g. FlexAttention's higher-order op has no rule for the CPU tracker; the failure inside a compiled
            # region leaves torch.compile's caches unusable, so start them afresh
            torch.compiler.reset()
            notes.append(f"{label} memory not measured: {short_error(exc).removeprefix('error: ')[:90]}")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def time_steps(steps: dict[str, Step], options: BenchOptions) -> dict[str, dict[str, float]]:
    """Median ``"fwd ms"`` (under ``torch.no_grad``) and ``"fwd+bwd ms"`` of several steps whose *ratios* matter:
    their timed calls are interleaved."""
    kw = options.timing()
    fwd = time_fns({k: no_grad(f) for k, (f, _) in steps.items()}, **kw)
    fb = time_fns({k: b for k, (_, b) in steps.items()}, **kw)
    return {k: {"fwd ms": fwd[k].median * 1e3, "fwd+bwd ms": fb[k].median * 1e3} for k in steps}


def measure_steps_interleaved(steps: dict[str, Step], options: BenchOptions) -> dict[str, dict[str, float]]:
    """:func:`time_steps` and the peak memory of each step (``"fwd MiB"``, ``"fwd+bwd MiB"``)."""
    times = time_steps(steps, options)
    return {k: {**times[k], "fwd MiB": peak_memory(no_grad(f), device=options.device) / MiB,
                "fwd+bwd MiB": peak_memory(b, device=options.device) / MiB} for k, (f, b) in steps.items()}


def sdpa_baseline(options: BenchOptions, T: int) -> dict[str, float]:
    """Time and memory of raw causal SDPA at length ``T``."""
    return measure_step(*sdpa_step(options, T), options)


_RATIO_OF = {"fwd ms": "fwd ×sdpa", "fwd+bwd ms": "fwd+bwd ×sdpa", "fwd MiB": "fwd mem ×sdpa",
             "fwd+bwd MiB": "fwd+bwd mem ×sdpa"}


def with_ratios(row: dict[str, Any], base: dict[str, float]) -> dict[str, Any]:
    """Add the ratios to the baseline; time ratios use the baseline timed interleaved with the row when the row
    carries one (``"baseline fwd ms"``), memory ratios the baseline's (deterministic) peak memory."""
    for k, r in _RATIO_OF.items():
        b = row.get(f"baseline {k}") or base.get(k)
        if k in row and b:
            row[r] = row[k] / b
    return row


def half_device_memory(options: BenchOptions) -> float:
    """Half of the device's memory in bytes (``inf`` where the machine does not say)."""
    if options.is_cuda:
        return 0.5 * torch.cuda.get_device_properties(torch.device(options.device)).total_memory
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return float("inf")


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported only when a suite plots)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: Path, suffix: str = "", *, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay out ``fig`` (within ``rect``, where given), save it as ``<stem><suffix>.png`` and close it."""
    fig.tight_layout(**({} if rect is None else {"rect": rect}))
    p = stem.with_name(f"{stem.name}{suffix}.png")
    fig.savefig(p)
    pyplot().close(fig)
    return p


def log_log_panels(rows: list[dict[str, Any]], *, series: str, x: str, panels: list[tuple[str, str, str]],
                   xlabel: str, legend_fontsize: int = 8):
    """A figure of log-log panels, one per ``(y key, title, unit)`` of ``panels``, one line per value of
    ``rows[series]`` through the rows whose status is ok and that hold the y key."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, title, unit) in zip(axes[0], panels):
        for name in dict.fromkeys(r[series] for r in rows):
            pts = [(r[x], r[key]) for r in rows if r[series] == name and r.get("status", "ok") == "ok" and r.get(key)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set(xscale="log", yscale="log", title=title, xlabel=xlabel, ylabel=unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_fontsize)
    return fig
