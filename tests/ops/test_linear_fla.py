"""``linear_attention(..., impl="fla")`` (flash-linear-attention's kernels) == the recurrent reference.

CPU tier, without fla: the arguments fla cannot take raise ValueError naming them, a missing fla raises an ImportError
that says what to install, ``impl="auto"`` never picks fla, and the autotuning trims. With fla installed (``pip
install 'attnlab[fla]'``; not part of the dev extra, so these are skipped without it): fla's real chunk kernels
under Triton's interpreter, in a fresh process (the interpreter must be on before triton is first imported), in
float32 only (the interpreter's bfloat16 ``tl.dot`` is wrong in triton 3.9), against the float64 recurrent form:
outputs, final state and every gradient (observed <= 4e-7; tolerance 1e-5), with one configuration per kernel and
with the "small" autotuning (pruned candidates, each timed).

GPU tier (``gpu`` marker; fla required): the compiled kernels against the float64 recurrent form on the same
(rounded) inputs, fresh random inputs, outputs, final state and gradients of q, k, v (and of the initial state).
Tolerances, relative Frobenius error, with the expected size from emulating fla's roundings in float64 on CPU
(T = 1000, D = 64/128): float32 2e-3 (TF32 dot products: ~2.7e-4 on the output), bfloat16 2e-2 (bf16 operands,
per-chunk states and numerator: ~2.2e-3 on the output). Moving the causal diagonal by one gives ~0.5.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attnlab.ops.linear import LINEAR_IMPLS, LinearState, linear_attention
from attnlab.ops.linear import api as linear_api
from attnlab.ops.linear import fla_backend

HAS_FLA = importlib.util.find_spec("fla") is not None  # not imported here: fla imports triton (see the docstring)
TOL = {torch.float32: 2e-3, torch.bfloat16: 2e-2}


def qkv(B=1, H=2, H_kv=2, T=8, D=4, Dv=4, dtype=torch.float32, device="cpu"):
    return (torch.randn(B, H, T, D, dtype=dtype, device=device), torch.randn(B, H_kv, T, D, dtype=dtype, device=device),
            torch.randn(B, H_kv, T, Dv, dtype=dtype, device=device))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ----------------------------------------------------------------------------------------------------- CPU tier


def test_fla_is_a_form_and_auto_never_picks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "fla" in LINEAR_IMPLS

    def boom(*args, **kwargs):
        raise AssertionError("impl='auto' called the fla form")

    monkeypatch.setattr(linear_api, "linear_attention_fla", boom)
    for T in (1, 9):  # auto: the recurrent step for one query, else the chunked form
        x = qkv(T=T)
        out, _ = linear_attention(*x, impl="auto")
        torch.testing.assert_close(out, linear_attention(*x, impl="chunked")[0])


@pytest.mark.parametrize(
    "kwargs, inputs, pattern",
    [
        ({"causal": False}, {}, r"impl='fla' computes causal linear attention only, got causal=False"),
        ({}, {"dtype": torch.float64}, r"impl='fla' needs q.dtype float32 or bfloat16.*got torch.float64"),
        ({}, {"dtype": torch.float16}, r"impl='fla' needs q.dtype float32 or bfloat16, got torch.float16"),
        ({"feature_map": "taylor"}, {"dtype": torch.bfloat16},
         r"even feature dim F and value head dim Dv.*got F=21 \(feature_map='taylor'\) and Dv=4"),
        ({}, {"dtype": torch.bfloat16, "Dv": 3}, r"got F=4 \(feature_map='elu1'\) and Dv=3"),
        ({}, {}, r"impl='fla' needs CUDA tensors \(fla's Triton kernels\), got q.device=cpu"),
    ],
)
def test_unsupported_arguments_raise_before_fla_is_imported(monkeypatch, kwargs, inputs, pattern) -> None:
    monkeypatch.setattr(fla_backend, "_interpreter_active", lambda: False)
    monkeypatch.setattr(fla_backend, "require_fla", lambda: pytest.fail("fla was imported before validation"))
    with pytest.raises(ValueError, match=pattern):
        linear_attention(*qkv(**inputs), impl="fla", **kwargs)


def test_odd_feature_dim_is_fine_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The even-F rule is fla's 16-bit assertion: float32 taylor (F = 21) passes validation, up to the device."""
    monkeypatch.setattr(fla_backend, "_interpreter_active", lambda: False)
    with pytest.raises(ValueError, match=r"needs CUDA tensors"):
        linear_attention(*qkv(), impl="fla", feature_map="taylor")


def test_missing_fla_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    fla_backend._chunk_linear_attn.cache_clear()
    for name in ("fla", "fla.ops", "fla.ops.linear_attn"):
        monkeypatch.setitem(sys.modules, name, None)  # `import fla...` now fails as if it were not installed
    monkeypatch.setattr(fla_backend, "_interpreter_active", lambda: True)  # let CPU tensors past the device check
    try:
        assert not fla_backend.fla_available()
        with pytest.raises(ImportError, match=r"pip install 'attnlab\[fla\]'.*pip install flash-linear-attention"):
            linear_attention(*qkv(), impl="fla")
        with pytest.raises(ImportError, match=r"impl='fla' needs flash-linear-attention's kernels"):
            fla_backend.set_fla_autotuning("small")
    finally:
        fla_backend._chunk_linear_attn.cache_clear()


def test_importing_attnlab_does_not_import_fla() -> None:
    code = ("import sys, attnlab, attnlab.ops.linear, attnlab.layers; "
            "assert 'fla' not in sys.modules, 'fla imported'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_bad_autotuning_mode() -> None:
    with pytest.raises(ValueError, match=r"mode='fast' is not an autotuning mode; expected one of full, small, single"):
        fla_backend.set_fla_autotuning("fast")


def test_small_autotuning_keeps_one_config_per_tile_that_fits() -> None:
    triton = pytest.importorskip("triton")
    C = triton.Config
    # fla 0.6's chunk_fwd_kernel_h candidates on a Hopper GPU: 4 tiles x 4 warp counts x 3 stage counts
    h = [C({"BK": a, "BV": b}, num_warps=w, num_stages=s) for a in (32, 64) for b in (32, 64) for w in (1, 2, 4, 8)
         for s in (2, 3, 4)]
    got = fla_backend._small_prune(h, {}, K=64, V=64)
    assert [(c.kwargs["BK"], c.kwargs["BV"], c.num_warps, c.num_stages) for c in got] == [
        (32, 32, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 4, 2)]
    assert [c.kwargs["BV"] for c in fla_backend._small_prune(h, {}, K=64, V=32)] == [32, 32]  # BV=64 > V=32
    assert len(fla_backend._small_prune(h, {}, K=8, V=8)) == 4  # nothing fits: fall back to every tile
    # chunk_fwd_kernel_o: three tiles, one configuration each
    o = [C({"BK": 128, "BV": 128}, num_warps=8, num_stages=3), C({"BK": 64, "BV": 64}, num_warps=4, num_stages=3),
         C({"BK": 32, "BV": 32}, num_warps=2, num_stages=3)]
    assert [c.kwargs["BK"] for c in fla_backend._small_prune(o, {}, K=64, V=64)] == [64, 32]
    assert [c.kwargs["BK"] for c in fla_backend._small_prune(o, {}, K=100, V=128)] == [128, 64, 32]
    # chunk_bwd_kernel_dqkwg: no tile choice; at least two candidates, then one for "single"
    d = [C({}, num_warps=w, num_stages=s) for w in (2, 4) for s in (2, 3, 4)]
    assert [(c.num_warps, c.num_stages) for c in fla_backend._small_prune(d, {}, K=64, V=64)] == [(4, 2), (4, 3)]
    assert [(c.num_warps, c.num_stages) for c in fla_backend._trimmed(d, single=True)] == [(4, 2)]
    # an existing early_config_prune runs first
    only_big = lambda configs, nargs, **kw: [c for c in configs if c.kwargs.get("BK") == 64]  # noqa: E731
    assert {c.kwargs["BK"] for c in fla_backend._small_prune(h, {}, previous=only_big, K=64, V=64)} == {64}


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import builtins, json, os, sys, warnings
    assert os.environ["TRITON_INTERPRET"] == "1"
    warnings.filterwarnings("ignore")
    import torch
    import triton.language as tl
    from attnlab.ops.linear import LinearState, linear_attention
    from attnlab.ops.linear import fla_backend

    assert fla_backend._interpreter_active()
    assert fla_backend.set_fla_autotuning("single") > 50  # the interpreter cannot time candidates
    from fla.ops.common import chunk_h
    tuner = fla_backend._autotuner_of(chunk_h.chunk_fwd_kernel_h)
    counts = {"single": len(tuner.configs)}
    fla_backend.set_fla_autotuning("full")
    counts["full"] = len(tuner.configs)
    fla_backend.set_fla_autotuning("single")

    # fla 0.6 calls .to() on `for i_t in range(NT)` counters; compiled Triton makes them tensors, the interpreter
    # leaves Python ints. Test-only shim: loop counters as interpreter tensors.
    def _range(*args):
        for i in builtins.range(*[int(a) for a in args]):
            yield tl.full([], i, tl.int32)

    for name, mod in list(sys.modules.items()):
        if name.startswith("fla.ops") and mod is not None:
            mod.__dict__["range"] = _range

    def rel(a, b):
        a, b = a.detach().double(), b.detach().double()
        return float((a - b).norm() / b.norm().clamp_min(1e-300))

    def run_case(fm, B, H, Hkv, T, D, Dv, init):
        q = torch.randn(B, H, T, D, requires_grad=True)
        k = torch.randn(B, Hkv, T, D, requires_grad=True)
        v = torch.randn(B, Hkv, T, Dv, requires_grad=True)
        xs = [q, k, v]
        st = None
        if init:
            st = LinearState(torch.randn(B, H, D, Dv, requires_grad=True), (torch.rand(B, H, D) + 0.5).requires_grad_())
            xs += list(st)
        out, s = linear_attention(q, k, v, feature_map=fm, impl="fla", initial_state=st)
        go, gkv, gz = torch.randn_like(out), torch.randn_like(s.kv), torch.randn_like(s.z)
        grads = torch.autograd.grad((out * go).sum() + (s.kv * gkv).sum() + (s.z * gz).sum(), xs)
        xr = [x.detach().double().requires_grad_(True) for x in xs]
        ref, sr = linear_attention(*xr[:3], feature_map=fm, impl="recurrent",
                                   initial_state=LinearState(*xr[3:]) if init else None)
        gref = torch.autograd.grad((ref * go.double()).sum() + (sr.kv * gkv.double()).sum()
                                   + (sr.z * gz.double()).sum(), xr)
        errs = {"out": rel(out, ref), "kv": rel(s.kv, sr.kv), "z": rel(s.z, sr.z)}
        errs |= {f"d{n}": rel(a, b) for n, a, b in zip(("q", "k", "v", "kv0", "z0"), grads, gref)}
        return {"case": [fm, B, H, Hkv, T, D, Dv, init], "errs": errs}

    torch.manual_seed(0)
    # (feature map, B, H, H_kv, T, D, Dv, initial state): a ragged second chunk with GQA and a state; one full chunk;
    # a single step
    cases = [("elu1", 2, 4, 2, 70, 16, 8, True), ("relu", 1, 2, 2, 64, 16, 16, False), ("elu1", 1, 2, 1, 1, 8, 8, True)]
    rows = [run_case(*c) for c in cases]

    # the "small" mode's path (tile pruning at the launch, then timing each candidate) with a wall-clock timer in
    # place of CUDA events, which the interpreter lacks
    import time
    def wall_bench(kernel_call, quantiles=None):
        t0 = time.perf_counter()
        kernel_call()
        ms = 1e3 * (time.perf_counter() - t0)
        return [ms] * len(quantiles) if quantiles else ms

    fla_backend._quick_bench = wall_bench
    fla_backend.set_fla_autotuning("small")
    rows.append(run_case(*cases[0]))
    from fla.ops.common import chunk_o
    timed = {n: len(fla_backend._autotuner_of(k).configs_timings)
             for n, k in (("fwd_h", chunk_h.chunk_fwd_kernel_h), ("bwd_dh", chunk_h.chunk_bwd_kernel_dh),
                          ("fwd_o", chunk_o.chunk_fwd_kernel_o), ("dqkwg", chunk_o.chunk_bwd_kernel_dqkwg))}
    counts["small timed"] = timed
    fla_backend.set_fla_autotuning("full")
    print("RESULT " + json.dumps({"counts": counts, "rows": rows}))
    """
)


@pytest.mark.skipif(not HAS_FLA, reason="fla is not installed (pip install 'attnlab[fla]'; not in the dev extra)")
def test_fla_kernels_under_triton_interpreter(tmp_path: Path) -> None:
    """fla's real chunk kernels (forward and backward) on CPU through Triton's interpreter, float32, ~5 s."""
    pytest.importorskip("triton")
    script = tmp_path / "fla_interp.py"
    script.write_text(_INTERPRETER_SCRIPT)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    counts = result.pop("counts")
    assert counts.pop("single") == 1 and counts.pop("full") == 48
    # "small": fla's CPU tile lists are 16/32 wide; F=16, Dv=8 keep the 16x16 tile (two stage counts) of the state
    # kernels; chunk_fwd_kernel_o has no tile that fits and falls back to its three; dqkwg: warps 4, stages 2 and 3
    assert counts["small timed"] == {"fwd_h": 2, "bwd_dh": 2, "fwd_o": 3, "dqkwg": 2}, counts
    assert len(result["rows"]) == 4
    for row in result["rows"]:
        # interpreter: IEEE float32 dot products, so float32 rounding only (observed <= 4e-7)
        assert max(row["errs"].values()) <= 1e-5, row


# ----------------------------------------------------------------------------------------------------- GPU tier


@pytest.fixture(scope="module")
def fla_single_config():
    """fla on CUDA with one launch configuration per kernel (correctness does not need autotuning; it keeps the
    tier's compile time to ~6 kernels per dtype and head size). Restores fla's autotuning afterwards."""
    pytest.importorskip("fla", reason="fla is not installed (pip install 'attnlab[fla]')")
    if fla_backend._interpreter_active():
        pytest.skip("TRITON_INTERPRET=1 is active in this process; the GPU tier measures the compiled kernels")
    fla_backend.set_fla_autotuning("single")
    yield
    fla_backend.set_fla_autotuning("full")


# (feature map, B, H, H_kv, T, D, Dv, initial state): T=100 ragged; T=1000 ragged with GQA and a carried state at
# D=128; T=256 a multiple of the chunk with Dv != D and relu features
GPU_CASES = [
    ("elu1", 2, 4, 4, 100, 64, 64, False),
    ("elu1", 1, 4, 2, 1000, 128, 128, True),
    ("relu", 1, 2, 2, 256, 64, 32, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_fla_matches_reference_on_cuda(fla_single_config, dtype, case) -> None:
    fm, B, H, Hkv, T, D, Dv, init = case
    dev = "cuda"
    q, k, v = (x.requires_grad_(True) for x in qkv(B, H, Hkv, T, D, Dv, dtype=dtype, device=dev))
    xs = [q, k, v]
    st = None
    if init:
        st = LinearState(torch.randn(B, H, D, Dv, device=dev).to(dtype).requires_grad_(True),
                         (torch.rand(B, H, D, device=dev) + 0.5).to(dtype).requires_grad_(True))
        xs += list(st)
    out, s = linear_attention(q, k, v, feature_map=fm, impl="fla", initial_state=st)
    assert out.dtype == dtype and s.kv.dtype == dtype and s.z.dtype == dtype
    # output seeds rounded to dtype, so that both sides differentiate the same function
    go, gkv, gz = (torch.randn(t.shape, device=dev).to(dtype).double() for t in (out, s.kv, s.z))
    loss = (out * go.to(dtype)).sum() + (s.kv * gkv.to(dtype)).sum() + (s.z * gz.to(dtype)).sum()
    grads = torch.autograd.grad(loss, xs)

    xr = [x.detach().double().requires_grad_(True) for x in xs]  # the same rounded inputs, in float64
    ref, sr = linear_attention(*xr[:3], feature_map=fm, impl="recurrent",
                               initial_state=LinearState(*xr[3:]) if init else None)
    gref = torch.autograd.grad((ref * go).sum() + (sr.kv * gkv).sum() + (sr.z * gz).sum(), xr)

    errs = {"out": rel(out, ref), "state.kv": rel(s.kv, sr.kv), "state.z": rel(s.z, sr.z)}
    errs |= {f"grad {n}": rel(a, b) for n, a, b in zip(("q", "k", "v", "kv0", "z0"), grads, gref)}
    assert all(torch.isfinite(g).all() for g in (out, *grads))
    assert max(errs.values()) <= TOL[dtype], errs
