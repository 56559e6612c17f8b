"""The built-in benchmark suites: ``mechanisms``, ``overhead`` and ``sparsity``.

Every time and memory figure is also given as a ratio to **raw PyTorch SDPA with causal masking**
(``F.scaled_dot_product_attention(q, k, v, is_causal=True)``, q/k/v of shape ``(B, H, T, d_model / H)``) measured
in the same process at the same ``T``. "fwd" is an inference forward (``torch.no_grad``); "fwd+bwd" is a forward
with autograd, then the backward of a fixed output gradient (input and parameter gradients included). Memory is
the peak allocated during the step (see :mod:`attnlab.bench.measure` for exactly what is counted on CPU).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.measure import fit_exponent, peak_memory, time_fn, time_fns

__all__ = ["measure_step", "sdpa_baseline", "check_tolerance", "progress"]

MiB = 2.0**20
BASELINE = "sdpa-causal (baseline)"


def check_tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance (times ``1 + max|reference|``) of a benchmark's correctness check vs float64."""
    return {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}.get(dtype, 1e-4)


def progress(items: list, options: BenchOptions, desc: str):
    if not options.progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def _short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {msg[:160]}"


def _timing_kwargs(options: BenchOptions) -> dict[str, Any]:
    return options.timing()


def measure_step(fwd: Callable[[], Any], fwdbwd: Callable[[], Any], options: BenchOptions,
                 baseline: tuple[Callable[[], Any], Callable[[], Any]] | None = None) -> dict[str, Any]:
    """Time and peak memory of an inference forward and of a forward+backward (milliseconds, MiB).

    With ``baseline`` (its own ``(fwd, fwdbwd)``), the baseline's calls are timed interleaved with the case's
    (a, b, a, b, ...), so that a slow spell of a shared machine hits both alike; its medians are returned as
    ``"baseline fwd ms"`` / ``"baseline fwd+bwd ms"`` for the ratios.

    An error of the forward propagates (the case failed). A forward+backward that raises (e.g. FlexAttention has
    no backward on CPU) or a memory measurement that cannot run (a compiled kernel cannot be traced under the
    CPU memory tracker) is left out and explained in the ``"note"`` entry.
    """
    kw = _timing_kwargs(options)

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return fn()
        return run

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
                notes.append(f"no fwd+bwd: {_short_error(exc).removeprefix('error: ')}")
                continue
        try:
            out[f"{label} MiB"] = peak_memory(fn, device=options.device) / MiB
        except Exception as exc:
            # e.g. FlexAttention's higher-order op has no rule for the CPU tracker; the failure inside a compiled
            # region leaves torch.compile's caches unusable, so start them afresh
            torch.compiler.reset()
            notes.append(f"{label} memory not measured: {_short_error(exc).removeprefix('error: ')[:90]}")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def measure_steps_interleaved(steps: dict[str, tuple[Callable[[], Any], Callable[[], Any]]],
                              options: BenchOptions) -> dict[str, dict[str, float]]:
    """:func:`measure_step` for several cases whose *ratios* matter: their timed calls are interleaved."""
    kw = _timing_kwargs(options)

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return fn()
        return run

    fwd = time_fns({k: no_grad(f) for k, (f, _) in steps.items()}, **kw)
    fb = time_fns({k: b for k, (_, b) in steps.items()}, **kw)
    return {k: {"fwd ms": fwd[k].median * 1e3, "fwd+bwd ms": fb[k].median * 1e3,
                "fwd MiB": peak_memory(no_grad(f), device=options.device) / MiB,
                "fwd+bwd MiB": peak_memory(b, device=options.device) / MiB} for k, (f, b) in steps.items()}


def _qkv(options: BenchOptions, T: int, *, requires_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    H = options.n_heads
    shape = (options.batch_size, H, T, options.d_model // H)
    return tuple(torch.randn(shape, device=options.device, dtype=options.dtype, requires_grad=requires_grad)
                 for _ in range(3))  # type: ignore[return-value]


def sdpa_steps(options: BenchOptions, T: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Raw causal SDPA at length ``T`` as ``(fwd, fwdbwd)``: the denominator of every ratio."""
    q, k, v = _qkv(options, T, requires_grad=True)
    g = torch.randn_like(q)

    def fwd() -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwdbwd() -> None:
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)

    return fwd, fwdbwd


def sdpa_baseline(options: BenchOptions, T: int) -> dict[str, float]:
    """Time and memory of raw causal SDPA at length ``T``."""
    return measure_step(*sdpa_steps(options, T), options)


_RATIO_OF = {"fwd ms": "fwd ×sdpa", "fwd+bwd ms": "fwd+bwd ×sdpa", "fwd MiB": "fwd mem ×sdpa",
             "fwd+bwd MiB": "fwd+bwd mem ×sdpa"}


def _with_ratios(row: dict[str, Any], base: dict[str, float]) -> dict[str, Any]:
    """Add the ratios to the baseline; time ratios use the baseline timed interleaved with the row when the row
    carries one (``"baseline fwd ms"``), memory ratios the baseline's (deterministic) peak memory."""
    for k, r in _RATIO_OF.items():
        b = row.get(f"baseline {k}") or base.get(k)
        if k in row and b:
            row[r] = row[k] / b
    return row


# --------------------------------------------------------------------------------------------------------------
# mechanisms


def _specs(options: BenchOptions) -> list:
    from attnlab.layers.registry import all_specs, get

    if options.mechanisms is not None:
        return [get(n) for n in options.mechanisms]
    return all_specs()


def _layer_correctness(spec, options: BenchOptions, T: int) -> tuple[float, float]:
    """Max error of the layer as benchmarked (default backend, bench dtype, device) vs its reference backend in
    float64 on CPU, and the tolerance."""
    torch.manual_seed(0)
    layer = spec.build(d_model=options.d_model, n_heads=options.n_heads).eval()
    ref = copy.deepcopy(layer).to(dtype=torch.float64)
    ref.impl = spec.backends[0]
    layer = layer.to(device=options.device, dtype=options.dtype)
    x = torch.randn(options.batch_size, T, options.d_model, dtype=torch.float64)
    with torch.no_grad():
        y_ref = ref(x)
        y = layer(x.to(device=options.device, dtype=options.dtype)).to(device="cpu", dtype=torch.float64)
    tol = check_tolerance(options.dtype) * (1.0 + float(y_ref.abs().max()))
    err = float((y - y_ref).abs().max()) if y.shape == y_ref.shape else float("nan")
    return err, tol


def _layer_steps(layer: nn.Module, options: BenchOptions, T: int):
    x = torch.randn(options.batch_size, T, options.d_model, device=options.device, dtype=options.dtype,
                    requires_grad=True)
    g = torch.randn_like(x)

    def fwd() -> Tensor:
        return layer(x)

    def fwdbwd() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(g)

    return fwd, fwdbwd


def _memory_limit_bytes(options: BenchOptions) -> float:
    """Half of the device's memory: a case projected to need more is not run."""
    if options.is_cuda:
        return 0.5 * torch.cuda.get_device_properties(torch.device(options.device)).total_memory
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return float("inf")


def _projection_guard(done: list[dict[str, Any]], T: int, options: BenchOptions) -> str | None:
    """Why length ``T`` is not measured, projected from the lengths measured so far (``None``: measure it).

    The peak memory and the time of one forward+backward are extrapolated with the growth exponent fitted so far
    (or quadratically from a single point); a case over half the device memory, or slower than ``budget_s``
    per call, is reported as not measured rather than risking the machine.
    """
    pts = [r for r in done if r.get("fwd+bwd MiB", 0) > 0 and r.get("fwd+bwd ms", 0) > 0]
    if not pts:
        return None
    last = pts[-1]
    notes = []
    for key, limit, unit in (("fwd+bwd MiB", _memory_limit_bytes(options) / MiB, "MiB"),
                             ("fwd+bwd ms", options.budget_s * 1e3, "ms")):
        p = fit_exponent([r["T"] for r in pts], [r[key] for r in pts]) if len(pts) > 1 else 2.0
        p = 2.0 if math.isnan(p) else max(p, 1.0)
        proj = last[key] * (T / last["T"]) ** p
        if proj > limit:
            notes.append(f"not measured: projected {key.split()[0]} {proj:.0f} {unit} > limit {limit:.0f} {unit}")
    return "; ".join(notes) or None


MAIN_COLUMNS = ["mechanism", "impl", "T", "status", "fwd ms", "baseline fwd ms", "fwd ×sdpa", "fwd+bwd ms",
                "baseline fwd+bwd ms", "fwd+bwd ×sdpa",
                "fwd MiB", "fwd mem ×sdpa", "fwd+bwd MiB", "fwd+bwd mem ×sdpa", "note"]
GROWTH_COLUMNS = ["mechanism", "time exp fwd", "time exp fwd+bwd", "mem exp fwd", "mem exp fwd+bwd"]


def _growth_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["mechanism"] for r in rows):
        ok = [r for r in rows if r["mechanism"] == name and r.get("status") == "ok"]
        g: dict[str, Any] = {"mechanism": name}
        for col, key in (("time exp fwd", "fwd ms"), ("time exp fwd+bwd", "fwd+bwd ms"),
                         ("mem exp fwd", "fwd MiB"), ("mem exp fwd+bwd", "fwd+bwd MiB")):
            g[col] = fit_exponent([r["T"] for r in ok], [r.get(key, float("nan")) for r in ok])
        out.append(g)
    return out


def run_mechanisms(options: BenchOptions) -> SuiteResult:
    lengths = options.lengths_or(cpu=(256, 1024, 4096), cuda=(1024, 4096, 16384), quick=(128, 256))
    specs = _specs(options)
    rows: list[dict[str, Any]] = []
    baselines = {}
    for T in progress(list(lengths), options, "sdpa baseline"):
        baselines[T] = sdpa_baseline(options, T)
        rows.append(_with_ratios({"mechanism": BASELINE, "impl": "sdpa", "T": T, "status": "ok", **baselines[T]},
                                 baselines[T]))
    for spec in progress(specs, options, "mechanisms"):
        try:
            err, tol = _layer_correctness(spec, options, min(64, min(lengths)))
            status = "ok" if err <= tol else f"FAILED correctness: max error {err:.3g} > tolerance {tol:.3g}"
        except Exception as exc:  # reported, not hidden
            status = _short_error(exc)
        torch.manual_seed(0)
        layer = None
        done: list[dict[str, Any]] = []
        for T in lengths:
            row: dict[str, Any] = {"mechanism": spec.name, "T": T, "status": status}
            guard = _projection_guard(done, T, options) if status == "ok" else None
            if guard:
                row["status"] = "ok"
                row["note"] = guard
            elif status == "ok":
                try:
                    if layer is None:
                        layer = spec.build(d_model=options.d_model, n_heads=options.n_heads).eval().to(
                            device=options.device, dtype=options.dtype)
                    row["impl"] = str(getattr(layer, "impl", ""))
                    row.update(measure_step(*_layer_steps(layer, options, T), options,
                                            baseline=sdpa_steps(options, T)))
                    _with_ratios(row, baselines[T])
                    done.append(row)
                except Exception as exc:
                    row["status"] = _short_error(exc)
            rows.append(row)
    growth = _growth_rows(rows)
    notes = [f"Every ratio divides by raw causal SDPA (`F.scaled_dot_product_attention(q, k, v, is_causal=True)`, "
             f"q/k/v (B={options.batch_size}, H={options.n_heads}, T, {options.d_model // options.n_heads})) "
             f"at the same T, measured in this process; time ratios use SDPA timed interleaved with the mechanism's own calls "
             f"(a, b, a, b, ...), so a slow spell of the machine hits both alike. A layer also pays its projections, so ratios > 1 are "
             f"expected; `attnlab bench overhead` separates the module overhead.",
             "Correctness first: each layer, as benchmarked, is compared with its reference backend in float64 at "
             f"T={min(64, min(lengths))}; a failure is reported instead of a speed.",
             "Growth exponents: least-squares slope of log(cost) against log(T) over the lengths measured."]
    return SuiteResult(suite="mechanisms", options=options,
                       tables=[Table(title="Time and peak memory", columns=MAIN_COLUMNS, rows=rows),
                               Table(title="Growth exponents in T", columns=GROWTH_COLUMNS, rows=growth)],
                       notes=notes, data={"lengths": list(lengths)})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_mechanisms(result: SuiteResult, stem: Path) -> list[Path]:
    plt = _pyplot()
    rows = [r for r in result.tables[0].rows if r.get("status") == "ok"]
    names = list(dict.fromkeys(r["mechanism"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), dpi=110)
    panels = [("fwd ms", "forward time (ms)"), ("fwd+bwd ms", "forward+backward time (ms)"),
              ("fwd MiB", "forward peak memory (MiB)"), ("fwd+bwd MiB", "forward+backward peak memory (MiB)")]
    cmap = plt.get_cmap("tab20")
    for ax, (key, label) in zip(axes.flat, panels):
        for i, n in enumerate(names):
            pts = [(r["T"], r[key]) for r in rows if r["mechanism"] == n and r.get(key, 0) > 0]
            if not pts:
                continue
            xs, ys = zip(*pts)
            base = n == BASELINE
            ax.plot(xs, ys, marker="o", ms=4, lw=2.5 if base else 1.3, ls="--" if base else "-",
                    color="black" if base else cmap(i % 20), label=n)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    o = result.options
    fig.suptitle(f"attnlab mechanisms on {o.device} ({str(o.dtype).removeprefix('torch.')}, d_model={o.d_model}, "
                 f"n_heads={o.n_heads}, batch={o.batch_size})")
    fig.tight_layout(rect=(0, 0, 0.8, 0.97))
    p = stem.with_name(stem.name + ".png")
    fig.savefig(p)
    plt.close(fig)
    return [p]


# --------------------------------------------------------------------------------------------------------------
# overhead: the standard module vs its own projections + raw SDPA by hand

OVERHEAD_MECHANISM = "standard"
OVERHEAD_TARGET = 1.15


def _hand_path(layer: nn.Module, options: BenchOptions) -> Callable[[Tensor], Tensor]:
    """The module's own projections (read from its ``nn.Linear`` submodules) around raw causal SDPA.

    Supports a fused ``(d_model -> 3 * H * D)`` projection followed by an output projection, or four separate
    q/k/v/output projections in that order. The correctness check catches a wrong reading of the layout.
    """
    lins = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    H = options.n_heads
    if len(lins) == 2 and lins[0].out_features % 3 == 0:
        qkv, o = lins
        D = qkv.out_features // (3 * H)

        def fused(x: Tensor) -> Tensor:
            B, T, _ = x.shape
            q, k, v = qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
            return o(y.transpose(1, 2).reshape(B, T, H * D))

        return fused
    if len(lins) == 4:
        wq, wk, wv, o = lins
        D = wq.out_features // H

        def split(x: Tensor) -> Tensor:
            B, T, _ = x.shape
            q, k, v = (w(x).view(B, T, -1, D).transpose(1, 2) for w in (wq, wk, wv))  # (B, H(_kv), T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != H)
            return o(y.transpose(1, 2).reshape(B, T, H * D))

        return split
    raise ValueError(f"cannot read the projections of {type(layer).__name__}: found {len(lins)} nn.Linear "
                     "submodules, expected a fused qkv + output (2) or q, k, v, output (4)")


def run_overhead(options: BenchOptions) -> SuiteResult:
    from attnlab.layers.registry import get

    lengths = options.lengths_or(cpu=(1024,), cuda=(1024, 4096), quick=(256,))
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    notes = [f"Module overhead = `{OVERHEAD_MECHANISM}` module forward / (the module's own projections + raw causal "
             f"SDPA + its output projection, written by hand, same weights). Target: <= {OVERHEAD_TARGET}x at T=1024 "
             "(forward, inference). The layer is built with rope=False, dropout=0.0 so that the hand path does "
             "the same work; raw SDPA alone is reported too."]
    try:
        spec = get(OVERHEAD_MECHANISM)
        torch.manual_seed(0)
        layer = spec.build(d_model=options.d_model, n_heads=options.n_heads, rope=False, dropout=0.0).eval()
        layer = layer.to(device=options.device, dtype=options.dtype)
        hand = _hand_path(layer, options)
        xc = torch.randn(options.batch_size, min(64, min(lengths)), options.d_model, device=options.device,
                         dtype=options.dtype)
        with torch.no_grad():
            y_mod, y_hand = layer(xc), hand(xc)
        err = float((y_mod - y_hand).abs().max())
        tol = check_tolerance(options.dtype) * (1.0 + float(y_hand.abs().max()))
        status = "ok" if err <= tol else f"FAILED correctness: module vs hand path max error {err:.3g} > {tol:.3g}"
    except Exception as exc:
        layer, hand, status = None, None, _short_error(exc)
    for T in progress(list(lengths), options, "overhead"):
        raw = "raw SDPA (causal)"
        q, k, v = _qkv(options, T, requires_grad=True)
        gq = torch.randn_like(q)

        def raw_fwdbwd() -> None:
            q.grad = k.grad = v.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(gq)

        steps: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            raw: (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), raw_fwdbwd)}
        if status == "ok":
            x = torch.randn(options.batch_size, T, options.d_model, device=options.device, dtype=options.dtype,
                            requires_grad=True)
            g = torch.randn_like(x)
            for case, fn in (("projections + SDPA by hand", hand), (f"{OVERHEAD_MECHANISM} module", layer)):
                def fwdbwd(fn=fn) -> None:
                    layer.zero_grad(set_to_none=True)
                    x.grad = None
                    fn(x).backward(g)

                steps[case] = (lambda fn=fn: fn(x), fwdbwd)
        measured = measure_steps_interleaved(steps, options)
        base = measured[raw]
        for case, m in measured.items():
            rows.append(_with_ratios({"case": case, "T": T, "status": "ok", **m}, base))
        if status != "ok":
            rows.append({"case": f"{OVERHEAD_MECHANISM} module", "T": T, "status": status})
            continue
        mod, hd = measured[f"{OVERHEAD_MECHANISM} module"], measured["projections + SDPA by hand"]
        r_f, r_fb = mod["fwd ms"] / hd["fwd ms"], mod["fwd+bwd ms"] / hd["fwd+bwd ms"]
        summary.append({"T": T, "module / hand fwd": r_f, "module / hand fwd+bwd": r_fb,
                        "module / raw SDPA fwd": mod["fwd ms"] / base["fwd ms"],
                        "target": f"<= {OVERHEAD_TARGET}" if T == 1024 else "",
                        "met": ("yes" if r_f <= OVERHEAD_TARGET else "NO") if T == 1024 else ""})
    cols = ["case", "T", "status", "fwd ms", "fwd ×sdpa", "fwd+bwd ms", "fwd+bwd ×sdpa", "fwd MiB", "fwd+bwd MiB"]
    return SuiteResult(suite="overhead", options=options, notes=notes,
                       tables=[Table(title="Time and memory", columns=cols, rows=rows),
                               Table(title="Module overhead", columns=["T", "module / hand fwd",
                                     "module / hand fwd+bwd", "module / raw SDPA fwd", "target", "met"],
                                     rows=summary)])


def plot_overhead(result: SuiteResult, stem: Path) -> list[Path]:
    plt = _pyplot()
    rows = [r for r in result.tables[0].rows if r.get("status") == "ok"]
    if not rows:
        return []
    Ts = sorted({r["T"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    width = 0.8 / len(cases)
    for ax, key in zip(axes, ("fwd ms", "fwd+bwd ms")):
        for i, c in enumerate(cases):
            ys = [next((r[key] for r in rows if r["case"] == c and r["T"] == T), 0.0) for T in Ts]
            ax.bar([j + i * width for j in range(len(Ts))], ys, width, label=c)
        ax.set_xticks([j + width * (len(cases) - 1) / 2 for j in range(len(Ts))], [f"T={T}" for T in Ts])
        ax.set_ylabel(key)
        ax.set_title(key.replace(" ms", "") + " time")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"module overhead of '{OVERHEAD_MECHANISM}' on {result.options.device}")
    fig.tight_layout()
    p = stem.with_name(stem.name + ".png")
    fig.savefig(p)
    plt.close(fig)
    return [p]


# --------------------------------------------------------------------------------------------------------------
# sparsity: masked softmax attention at decreasing density


def sparsity_masks(T: int) -> list:
    """Sliding-window, strided and BigBird masks at decreasing density for length ``T``, plus dense causal."""
    from attnlab.masks import bigbird, causal, sliding_window, strided

    ms = [causal()]
    ms += [sliding_window(max(1, T // d)) for d in (2, 4, 8, 16, 32, 64)]
    # strided density is about (s + T / s) / T, smallest at s = sqrt(T): go down from 4 sqrt(T) to sqrt(T)
    r = max(2, int(math.sqrt(T)))
    ms += [strided(s) for s in (4 * r, 2 * r, r)]
    ms += [bigbird(max(1, T // d), n_global=16, n_random=4, seed=0, max_len=max(T, 16)) for d in (4, 16, 64)]
    return ms


SPARSITY_BACKENDS = ("sdpa", "flex")


def run_sparsity(options: BenchOptions) -> SuiteResult:
    from attnlab.masks import dense
    from attnlab.ops.softmax import softmax_attention

    lengths = options.lengths_or(cpu=(2048,), cuda=(8192, 16384), quick=(256,))
    rows: list[dict[str, Any]] = []
    cases = [(T, m, b) for T in lengths for m in sparsity_masks(T) for b in SPARSITY_BACKENDS]
    baselines: dict[int, dict[str, float]] = {}
    checked: dict[tuple[str, str], str] = {}
    for T, mask, backend in progress(cases, options, "sparsity"):
        if T not in baselines:
            baselines[T] = sdpa_baseline(options, T)
            rows.append(_with_ratios({"mask": BASELINE, "backend": "sdpa", "T": T, "density": 0.5 + 0.5 / T,
                                      "status": "ok", **baselines[T]}, baselines[T]))
        dens = float(dense(mask, T, T).double().mean())
        row: dict[str, Any] = {"mask": mask.name, "backend": backend, "T": T, "density": dens}
        kind = mask.name.split("(")[0]
        key = (kind, backend)
        if key not in checked:  # correctness of this pattern family on this backend at a small T, against the
            try:                # float64 reference on CPU, in the benchmarked dtype and device
                Tc = 96
                mc = sparsity_masks(Tc)[[m.name.split("(")[0] for m in sparsity_masks(Tc)].index(kind)]
                q, k, v = (torch.randn(1, options.n_heads, Tc, options.d_model // options.n_heads,
                                       dtype=torch.float64) for _ in range(3))
                ref = softmax_attention(q, k, v, mask=mc, impl="reference")
                got = softmax_attention(*(t.to(device=options.device, dtype=options.dtype) for t in (q, k, v)),
                                        mask=mc, impl=backend).to(device="cpu", dtype=torch.float64)
                err = float((got - ref).abs().max())
                tol = check_tolerance(options.dtype) * (1.0 + float(ref.abs().max()))
                checked[key] = "ok" if err <= tol else f"FAILED correctness: max error {err:.3g} > {tol:.3g}"
            except Exception as exc:
                checked[key] = _short_error(exc)
        row["status"] = checked[key]
        if row["status"] == "ok":
            try:
                q, k, v = _qkv(options, T, requires_grad=True)
                g = torch.randn_like(q)

                def fwd(q=q, k=k, v=v, mask=mask, backend=backend) -> Tensor:
                    return softmax_attention(q, k, v, mask=mask, impl=backend)

                def fwdbwd(q=q, k=k, v=v, g=g, mask=mask, backend=backend) -> None:
                    q.grad = k.grad = v.grad = None
                    softmax_attention(q, k, v, mask=mask, impl=backend).backward(g)

                row.update(measure_step(fwd, fwdbwd, options))
                _with_ratios(row, baselines[T])
            except Exception as exc:
                row["status"] = _short_error(exc)
        rows.append(row)
    slopes = []
    for T in lengths:
        for kind in dict.fromkeys(r["mask"].split("(")[0] for r in rows if r["T"] == T and r["mask"] != BASELINE):
            for backend in SPARSITY_BACKENDS:
                ok = [r for r in rows if r["T"] == T and r["backend"] == backend and r.get("status") == "ok"
                      and r["mask"].split("(")[0] == kind]
                if len({r["density"] for r in ok}) < 2:
                    continue
                slopes.append({"T": T, "pattern": kind, "backend": backend,
                               "time exp fwd (vs density)": fit_exponent([r["density"] for r in ok],
                                                                         [r.get("fwd ms", 0) for r in ok]),
                               "time exp fwd+bwd (vs density)": fit_exponent([r["density"] for r in ok],
                                                                             [r.get("fwd+bwd ms", 0) for r in ok])})
    notes = ["Masked softmax attention (`attnlab.ops.softmax.softmax_attention`) over masks of decreasing density. "
             "A backend only gains from sparsity if it skips masked blocks (FlexAttention's block mask on CUDA); "
             "SDPA with a dense boolean mask costs the same at every density, and FlexAttention on CPU is not "
             "block-sparse in every build: the table reports what this machine measured.",
             "Density exponent: slope of log(time) against log(density) within a pattern family "
             "(1 = time proportional to density, 0 = no gain from sparsity)."]
    cols = ["mask", "backend", "T", "density", "status", "fwd ms", "fwd ×sdpa", "fwd+bwd ms", "fwd+bwd ×sdpa",
            "fwd MiB", "fwd+bwd MiB", "note"]
    return SuiteResult(suite="sparsity", options=options, notes=notes,
                       tables=[Table(title="Time and memory by mask density", columns=cols, rows=rows),
                               Table(title="Gain from sparsity", columns=["T", "pattern", "backend",
                                     "time exp fwd (vs density)", "time exp fwd+bwd (vs density)"], rows=slopes)])


def plot_sparsity(result: SuiteResult, stem: Path) -> list[Path]:
    plt = _pyplot()
    rows = [r for r in result.tables[0].rows if r.get("status") == "ok" and r["mask"] != BASELINE]
    if not rows:
        return []
    paths = []
    for T in sorted({r["T"] for r in rows}):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
        for ax, key in zip(axes, ("fwd ×sdpa", "fwd+bwd ×sdpa")):
            for kind in dict.fromkeys(r["mask"].split("(")[0] for r in rows):
                for backend, ls in zip(SPARSITY_BACKENDS, ("-", "--")):
                    pts = sorted((r["density"], r[key]) for r in rows if r["T"] == T and r["backend"] == backend
                                 and r["mask"].split("(")[0] == kind and key in r)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", ms=4, ls=ls, label=f"{kind} / {backend}")
            ax.axhline(1.0, color="black", lw=1, ls=":", label="raw causal SDPA")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("mask density (fraction of visible pairs)")
            ax.set_ylabel(f"time ratio to raw causal SDPA ({key.split(' ')[0]})")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"masked attention vs density, T={T}, {result.options.device}")
        fig.tight_layout()
        p = stem.with_name(f"{stem.name}-T{T}.png")
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


register_suite(Suite(name="mechanisms", description="every registered mechanism: time, memory, growth in T",
                     run=run_mechanisms, plot=plot_mechanisms))
register_suite(Suite(name="overhead", description=f"'{OVERHEAD_MECHANISM}' module vs its projections + raw SDPA",
                     run=run_overhead, plot=plot_overhead))
register_suite(Suite(name="sparsity", description="masked softmax attention at decreasing mask density",
                     run=run_sparsity, plot=plot_sparsity))
