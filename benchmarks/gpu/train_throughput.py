"""Training throughput and model FLOPs utilisation (MFU) of attnlab's trainer on one GPU (issue 15).

What it runs: for each mechanism (``standard``, ``castle`` at parameter parity), attnlab's own
:class:`~attnlab.train.trainer.Trainer` (``fit()``: the task's batches, bf16 autocast, ``torch.compile``, AdamW,
gradient clipping, per-step host sync, metrics) on a ~124M-parameter LLaMA-style LM: 12 layers, d_model 768,
12 heads of 64 (CASTLE: ``heads_for_parity(12) = 7`` heads of 64), SwiGLU 2048, context 1024, tied embeddings,
WikiText-2 with the GPT-2 BPE (bundled ranks, through tiktoken; vocabulary 50,257), batch 32 sequences
(32,768 tokens per optimizer step), 200 steps. Evaluation only at the end, on the first ``--eval-windows``
windows of the validation split (the test split is dropped), so it does not count against training.

Measurement. The script subclasses the Trainer only to time it: ``train_step`` records the wall clock and the token
count at the start of every step (the trainer synchronises the GPU after every step, so the start of step ``s + 1``
is the end of step ``s`` including the trainer's own bookkeeping), ``_sync`` records when each step's GPU work has
finished. Steady-state tokens/s = tokens of steps ``skip .. n-2`` / (start of step ``n-1`` - start of step
``skip``), with ``--skip-steps`` (default 20) excluding compilation, recompilation and warm-up; the median step time
is reported beside it. Steady-state trainer overhead = 1 - (time inside the steps, up to the GPU sync, minus batch
making) / window time, the trainer's own ``overhead_fraction`` restricted to the window (the trainer's whole-run
figures, which include compilation, are reported too). The same subclass enforces ``--max-seconds`` per
mechanism: when the training loop (compilation included) has run that long, but never sooner than
``--min-window-seconds`` (10) after the first, compiling, step, the current step becomes the last (the learning-rate
schedule keeps ``decay_steps = --steps``, so a truncated run has the same schedule prefix).

FLOPs convention (PaLM, Chowdhery et al. 2022, appendix B): model FLOPs per token = ``6 N + 6 m L H Dh T``.
``N`` = parameters that take part in a matmul: every 2-D weight, with the tied embedding counted once as the LM head
(the input lookup is free; an untied input embedding would be left out), norm gains excluded. ``6 N``: 2 FLOPs per
multiply-add, forward + backward (3x the forward). Attention: ``m`` matmuls of size ``T x T x Dh`` per head and
layer in the forward, counted over the full ``T x T`` square (non-causal, as PaLM counts: a causal kernel does about
half that work), times 3 for forward + backward. Standard attention: ``m = 2`` (``QK^T``, ``PV``), giving PaLM's
``12 L H Dh T``. CASTLE (approximation, stated as such): ``m = 6``, the blocked algorithm's six ``T x T x Dh``
products per head (causal scores ``Q^C K^C^T``, lookahead gates ``Q^U K^U^T``, ``Q^C V^U^T``, the lookahead-state
update ``G V^U``, the query-state products ``Q^C D``, and ``P V^C``); its ``N`` includes its own seven projections
(``in_proj`` 6 H Dh x d_model and ``out_proj``). CASTLE's main figure is its tokens/s ratio to standard: MFU under
an approximate FLOP count is secondary. MFU is given against the H200 SXM dense bf16 peak (989.4 TFLOP/s,
datasheet; ``--peak-tflops``) and against a bf16 matmul ceiling measured here (an 8192^3 ``torch.matmul`` on
random data, median of 10 after 3 warm-up calls).

Robustness. Each attempt runs in its own process (``--no-isolate``: in this one), with a wall-clock limit, so a
hang or a poisoned CUDA context (e.g. an illegal address in a kernel) costs that attempt only. Attempts per
mechanism: compiled; if that fails, eager (recorded); for CASTLE, if the Triton kernel fails eagerly as well, the
pure-PyTorch ``chunked`` form compiled (recorded as such: not the Triton number). A CASTLE attempt with the Triton
kernel first checks it against the float32 ``parallel`` form (bf16, B 1, H 7, T 1024, Dh 64, output and the six
gradients; relative Frobenius error <= 3e-2), which also compiles the kernels before timing. A mechanism that fails
everywhere is reported with its errors. Results are written as they come: ``train-throughput-<tag>-<mechanism>.json``
after each mechanism, ``train-throughput-<tag>.{json,md}`` rewritten after each mechanism and at the end (tag
``cuda``; ``cpu-dry-run`` for ``--dry-run``), each attempt's log and the trainer's ``metrics.jsonl`` /
``result.json`` under ``runs/``. The trainer's end-of-run checkpoint (model and AdamW state, ~1.5 GB, written
after the measured steps) is skipped unless ``--checkpoint`` is given. Nothing of an earlier run is overwritten: when
``--out`` already holds ``train-throughput-<tag>.{json,md}`` or a ``train-throughput-<tag>-<mechanism>.json``, the
script refuses to start (exit 2, before anything is written) unless ``--force`` is given; re-run into a new folder.

Time. ``--max-seconds`` caps each attempt's training loop. ``--budget-seconds`` (default 150) shortens later
attempts so that the whole script ends in about that time; ``--hard-limit-seconds`` (default 270) is the most it
takes whatever happens (each worker also has its own limit and a timer that ends it). When less than
``--min-compiled-seconds`` (60) is left, a compiled attempt is skipped for the eager one (recorded). SIGTERM (e.g.
``timeout`` around the script) kills the running worker, writes the reports with what was measured and exits 124.
Under an outer limit, pass it as ``--budget-seconds`` and ``--hard-limit-seconds`` (a few seconds less).

Expected time on an H200 (estimate, not measured): process starts and WikiText-2 tokenisation ~15 s; standard: compile
~30-50 s, 200 steps of 32k tokens at ~0.06-0.08 s each ~15 s, end evaluation ~2 s; CASTLE gets what is left of the
budget (``--max-seconds`` 60 at most, compilation included).

    PYTHONPATH=src python benchmarks/gpu/train_throughput.py --out OUT_DIR
    PYTHONPATH=src python benchmarks/gpu/train_throughput.py --dry-run --out /tmp/tt   # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

_REPO = Path(__file__).resolve().parents[2]
try:  # run from the source tree without installing attnlab (PYTHONPATH=src), or with it installed
    import attnlab  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_REPO / "src"))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from gpu_common import matmul_ceiling  # noqa: E402

#: H200 SXM (and H100 SXM) dense bf16 tensor-core peak, TFLOP/s (NVIDIA datasheet; 1,979 is with 2:4 sparsity).
H200_PEAK_BF16_TFLOPS = 989.4
#: T x T x Dh matmuls per head and layer in the forward (see the module docstring; CASTLE's is an approximation).
ATTN_MATMULS = {"standard": 2, "castle": 6}
MECHANISMS = tuple(ATTN_MATMULS)
#: CASTLE Triton kernel check: relative Frobenius error bound for bf16 (the GPU test's bound for bf16 at T 1024).
KERNEL_CHECK_MAX_REL = 3e-2


# ------------------------------------------------------------------------------------------------------------------
# FLOPs and parameters


def flops_per_token(*, n_matmul_params: int, n_layers: int, n_heads: int, head_dim: int, context_len: int,
                    attn_matmuls: int = 2) -> float:
    """Training FLOPs per token, PaLM convention: ``6 N + 6 m L H Dh T`` (``m = 2`` gives ``6 N + 12 L H Dh T``).

    ``N``: parameters used in matmuls; ``m``: ``T x T x Dh`` matmuls per head and layer in the forward, counted over
    the full square (non-causal). Factor 6 = 2 FLOPs per multiply-add x 3 (forward + backward)."""
    return 6.0 * n_matmul_params + 6.0 * attn_matmuls * n_layers * n_heads * head_dim * context_len


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """``total`` (unique parameters), ``embedding`` (the token embedding), ``non_embedding`` (total - embedding) and
    ``matmul`` (2-D weights used in a matmul: the tied embedding counts once, as the LM head; an untied input
    embedding is a lookup and is left out)."""
    emb = getattr(model, "tok_emb", None)
    emb_w = emb.weight if emb is not None else None
    head = getattr(model, "lm_head", None)
    tied = emb_w is not None and head is not None and head.weight is emb_w
    total = matmul = 0
    for p in model.parameters():  # de-duplicates tied weights
        total += p.numel()
        if p.dim() >= 2 and (p is not emb_w or tied):
            matmul += p.numel()
    n_emb = emb_w.numel() if emb_w is not None else 0
    return {"total": total, "embedding": n_emb, "non_embedding": total - n_emb, "matmul": matmul, "tied": int(tied)}


# ------------------------------------------------------------------------------------------------------------------
# Configuration


def model_config(args: argparse.Namespace, mechanism: str, impl: str | None = None) -> Any:
    from attnlab.models.lm import LMConfig

    options = {mechanism: {"impl": impl}} if impl is not None else {}
    return LMConfig(n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads, context_len=args.context_len,
                    attention=mechanism, attention_options=options, parity=True, dropout=0.0, tie_embeddings=True)


def train_config(args: argparse.Namespace, mechanism: str, *, compile_model: bool, impl: str | None = None) -> Any:
    """The run: evaluation and the only checkpoint at the end, no progress bar, no TensorBoard."""
    from attnlab.tasks.lm import LMDataConfig
    from attnlab.train.config import OptimConfig, TrainConfig

    warmup = min(args.lr_warmup, max(0, args.steps - 1))
    optim = OptimConfig(lr=args.lr, warmup_steps=warmup, decay_steps=args.steps, weight_decay=0.1, grad_clip=1.0)
    return TrainConfig(task="lm", model=model_config(args, mechanism, impl),
                       data=LMDataConfig(source=args.source, tokenizer=args.tokenizer), optim=optim,
                       steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       eval_interval=args.steps, log_interval=args.log_interval, checkpoint_interval=None,
                       keep_checkpoints=1, seed=args.seed, device=args.device, precision="auto",
                       compile=compile_model, eval_batch_size=args.eval_batch_size, tensorboard=False, progress=False)


def attempt_plan(args: argparse.Namespace, mechanism: str) -> list[dict[str, Any]]:
    """What to try, in order, until one attempt succeeds."""
    if not args.compile:
        plan = [{"compile": False, "impl": None}]
    else:
        plan = [{"compile": True, "impl": None}, {"compile": False, "impl": None}]
    if mechanism == "castle" and args.device.startswith("cuda") and args.compile:
        plan.append({"compile": True, "impl": "chunked"})  # the Triton kernel failed even eagerly
    for i, p in enumerate(plan):
        p["label"] = f"{i + 1}-{'compiled' if p['compile'] else 'eager'}" + (f"-{p['impl']}" if p["impl"] else "")
    return plan


# ------------------------------------------------------------------------------------------------------------------
# Measurements that need no trainer


def castle_kernel_check(device: torch.device, shape: tuple[int, int, int, int] = (1, 7, 1024, 64)) -> dict[str, Any]:
    """The Triton CASTLE kernel (bf16) against the float32 ``parallel`` form on the same rounded inputs: output and
    the six gradients, relative Frobenius error, at the benchmark's shape per head (T 1024, Dh 64, 7 heads)."""
    from attnlab.ops.castle.api import castle_attention

    g = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(*shape, device=device, generator=g).to(torch.bfloat16).requires_grad_(True) for _ in range(6)]
    out = castle_attention(*xs, impl="triton")  # (1, 7, 1024, 64)
    go = torch.randn(out.shape, device=device, generator=g).to(torch.bfloat16)
    grads = torch.autograd.grad(out, xs, go)
    xr = [x.detach().float().requires_grad_(True) for x in xs]
    ref = castle_attention(*xr, impl="parallel")
    ref_grads = torch.autograd.grad(ref, xr, go.float())

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach().float(), b.detach().float()
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    errs = {"out": rel(out, ref)}
    errs |= {n: rel(a, b) for n, a, b in zip(("q_u", "k_u", "v_u", "q_c", "k_c", "v_c"), grads, ref_grads)}
    ok = all(math.isfinite(v) and v <= KERNEL_CHECK_MAX_REL for v in errs.values())
    return {"ok": ok, "max_rel": KERNEL_CHECK_MAX_REL, "rel_errors": errs,
            "case": f"bf16 triton vs float32 parallel, (B, H, T, D) = {tuple(shape)}"}


# ------------------------------------------------------------------------------------------------------------------
# One training attempt (in a worker process unless --no-isolate)


def _timed_trainer_class() -> type:
    from attnlab.train.trainer import Trainer

    class TimedTrainer(Trainer):
        """The Trainer, unchanged, plus timestamps per step and a wall-clock deadline for the training loop."""

        def __init__(self, *a: Any, deadline_s: float | None = None, min_window_s: float = 0.0,
                     write_checkpoint: bool = False, **kw: Any) -> None:
            self.deadline_s = deadline_s
            self.min_window_s = min_window_s
            self.marks: list[dict[str, float]] = []
            self.loop_t0: float | None = None
            self.stopped_early_at: int | None = None
            self.write_checkpoint = write_checkpoint
            self.save_error: str | None = None
            super().__init__(*a, **kw)

        def train_step(self):  # type: ignore[no-untyped-def]
            now = time.perf_counter()
            if self.loop_t0 is None:
                self.loop_t0 = now
            self.marks.append({"step": self.step, "t_start": now, "tokens": self.tokens_seen})
            # past the deadline, and (so that a compilation that outlasts the deadline still leaves steps to
            # measure) at least min_window_s after the end of the first step
            if (self.deadline_s is not None and now - self.loop_t0 > self.deadline_s
                    and now - self.marks[0].get("t_synced", now) >= self.min_window_s
                    and self.step + 1 < self.config.steps):
                self.config.steps = self.step + 1  # this step is the last: the loop then evaluates and saves
                self.stopped_early_at = self.step + 1
            out = super().train_step()
            self.marks[-1]["data_s"] = float(out[4])
            return out

        def _sync(self) -> None:
            super()._sync()
            if self.marks:
                self.marks[-1]["t_synced"] = time.perf_counter()

        def save(self):  # type: ignore[no-untyped-def]
            """The end-of-run checkpoint (outside the measured steps): skipped unless asked for, and a failure to
            write it (full disk, a missing dependency) is recorded instead of losing the measurement."""
            if not self.write_checkpoint:
                self.last_saved = self.step
                return None
            try:
                return super().save()
            except Exception as e:
                self.save_error = f"{type(e).__name__}: {e}"
                self.last_saved = self.step
                return None

    return TimedTrainer


def steady_state(marks: list[dict[str, float]], skip: int) -> dict[str, Any]:
    """Throughput over steps ``skip .. n-2`` from the per-step marks (see the module docstring). With fewer than
    ``skip + 2`` steps the window starts at ``n // 2`` instead (``short_window`` says so)."""
    n = len(marks)
    if n < 2:
        return {"ok": False, "reason": f"only {n} step(s) ran"}
    short = n < skip + 2
    s = n // 2 if short else skip
    s = min(s, n - 2)
    last = n - 1
    window_s = marks[last]["t_start"] - marks[s]["t_start"]
    tokens = marks[last]["tokens"] - marks[s]["tokens"]
    step_s = [marks[i + 1]["t_start"] - marks[i]["t_start"] for i in range(s, last)]
    compute = [m["t_synced"] - m["t_start"] - m.get("data_s", 0.0) for m in marks[s:last] if "t_synced" in m]
    data = [m.get("data_s", 0.0) for m in marks[s:last]]
    srt = sorted(step_s)
    return {
        "ok": window_s > 0, "short_window": short, "first_step": s, "steps": last - s, "window_s": window_s,
        "tokens": int(tokens), "tokens_per_s": tokens / window_s if window_s > 0 else 0.0,
        "median_step_s": statistics.median(step_s), "p90_step_s": srt[min(len(srt) - 1, int(0.9 * len(srt)))],
        "max_step_s": srt[-1], "min_step_s": srt[0],
        "overhead_fraction": max(0.0, 1.0 - sum(compute) / window_s) if window_s > 0 and compute else None,
        "data_fraction": sum(data) / window_s if window_s > 0 else None,
    }


def _dynamo_summary() -> dict[str, Any]:
    try:
        from torch._dynamo.utils import counters

        breaks = counters.get("graph_break", {})
        top = sorted(breaks.items(), key=lambda kv: -kv[1])[:8]
        return {"graph_breaks": int(sum(breaks.values())), "graph_break_reasons": {k[:300]: v for k, v in top},
                "unique_graphs": int(counters.get("stats", {}).get("unique_graphs", 0))}
    except Exception as e:  # private API: never let it cost a result
        return {"error": f"{type(e).__name__}: {e}"}


def load_data(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The corpus for the runs: the validation split cut to ``--eval-windows`` windows, no test split."""
    from attnlab.data import load_corpus

    c = load_corpus(args.source, tokenizer=args.tokenizer, progress=False)
    n_val = min(len(c.val), args.eval_windows * args.context_len + 1)
    info = {"source": args.source, "tokenizer": c.tokenizer.name, "vocab_size": c.vocab_size,
            "train_tokens": len(c.train), "val_tokens_used": n_val, "val_tokens_total": len(c.val),
            "test_split": "dropped (not evaluated)"}
    return dataclasses.replace(c, val=c.val[:n_val], test=None), info


def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    """Load (and tokenise into the shared cache, which the workers then read) the corpus once; if the GPT-2 BPE
    cannot be used (tiktoken missing), fall back to WikiText-2's word-level vocabulary and say so (``args`` is
    updated, so every attempt uses the fallback)."""
    t0 = time.perf_counter()
    try:
        _, info = load_data(args)
    except Exception as e:
        first = f"{type(e).__name__}: {e}"
        if args.tokenizer != "gpt2":
            return {"error": first}
        print(f"data: the gpt2 tokenizer failed ({first}); falling back to tokenizer='word'", flush=True)
        args.tokenizer = "word"
        try:
            _, info = load_data(args)
        except Exception as e2:
            return {"error": f"{first}; word fallback: {type(e2).__name__}: {e2}"}
        info["tokenizer_fallback"] = f"gpt2 failed: {first}"
    info["load_s"] = time.perf_counter() - t0
    return info


def run_attempt(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one mechanism once with the trainer and measure it; raises on failure."""
    args = argparse.Namespace(**spec["args"])
    mechanism, attempt = spec["mechanism"], spec["attempt"]
    run_dir = Path(spec["run_dir"])
    out: dict[str, Any] = {"mechanism": mechanism, "attempt": attempt["label"], "compile": attempt["compile"],
                           "impl": attempt["impl"] or "auto", "deadline_s": spec["deadline_s"]}
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    device = torch.device(args.device)
    if mechanism == "castle" and device.type == "cuda" and attempt["impl"] is None:
        from attnlab.ops.castle.api import triton_available

        out["triton_available"] = triton_available()
        if triton_available():
            t0 = time.perf_counter()
            try:
                out["kernel_check"] = castle_kernel_check(device)
            except Exception as e:
                out["kernel_check"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            out["kernel_check"]["seconds"] = time.perf_counter() - t0
    corpus, out["data"] = load_data(args)
    cfg = train_config(args, mechanism, compile_model=attempt["compile"], impl=attempt["impl"])
    out["config"] = cfg.to_dict()
    log = spec.get("log") or (lambda s: print(f"[{mechanism}] {s}", flush=True))
    TimedTrainer = _timed_trainer_class()
    t_setup = time.perf_counter()
    trainer = TimedTrainer(cfg, out_dir=run_dir, data=corpus, log=log, deadline_s=spec["deadline_s"],
                           min_window_s=args.min_window_seconds, write_checkpoint=args.checkpoint)
    out["setup_s"] = time.perf_counter() - t_setup
    model = trainer.model
    attn = model.blocks[0].attn
    n_heads, head_dim = int(attn.n_heads), int(attn.head_dim)
    counts = param_counts(model)
    out["params"] = counts
    out["layer"] = {"n_heads": n_heads, "head_dim": head_dim, "impl": str(getattr(attn, "impl", "")),
                    "class": type(attn).__name__}
    m = ATTN_MATMULS[mechanism]
    fpt = flops_per_token(n_matmul_params=counts["matmul"], n_layers=cfg.model.n_layers, n_heads=n_heads,
                          head_dim=head_dim, context_len=cfg.model.context_len, attn_matmuls=m)
    out["flops_per_token"] = fpt
    out["attention_flops_fraction"] = 6.0 * m * cfg.model.n_layers * n_heads * head_dim * cfg.model.context_len / fpt
    out["tokens_per_step"] = cfg.batch_size * cfg.model.context_len
    r = trainer.fit()
    marks = trainer.marks
    out["steps_requested"] = spec["args"]["steps"]
    out["steps_run"] = r.steps
    out["stopped_early_at"] = trainer.stopped_early_at
    out["first_step_s"] = marks[0]["t_synced"] - marks[0]["t_start"] if marks and "t_synced" in marks[0] else None
    skip = args.skip_steps
    out["warmup_s"] = marks[min(skip, len(marks) - 1)]["t_start"] - marks[0]["t_start"] if marks else None
    out["steady"] = steady_state(marks, skip)
    out["step_times_ms"] = [round(1e3 * (b["t_start"] - a["t_start"]), 2) for a, b in zip(marks, marks[1:])]
    whole = r.to_dict()
    losses = [loss for _, loss in r.train_losses]
    whole.pop("train_losses", None)
    out["trainer_result"] = whole
    k = max(1, min(10, len(losses) // 4))
    first, last = (statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])) if losses else (math.nan, math.nan)
    out["loss"] = {"first": losses[0] if losses else None, "first_mean": first, "last_mean": last, "mean_over": k,
                   "fell": bool(losses) and math.isfinite(last) and last < first,
                   "val": r.val.loss if r.val is not None else None}
    out["checkpoint"] = ("written" if args.checkpoint and trainer.save_error is None else
                         f"failed: {trainer.save_error}" if args.checkpoint else "skipped (--checkpoint to write it)")
    out["peak_memory_gib"] = r.peak_memory_bytes / 2**30
    out["memory_kind"] = r.memory_kind
    if attempt["compile"]:
        out["dynamo"] = _dynamo_summary()
    del trainer, model, attn
    return out


def _copy_run_files(run_dir: Path, dest: Path) -> None:
    """Keep the trainer's small files (metrics, result); the checkpoint (~1.5 GB at 124M) stays behind."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "result.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result_path = Path(spec["result_path"])
    if spec.get("hard_s"):  # never outlive the parent's limit, even if the parent itself was killed
        import threading

        timer = threading.Timer(float(spec["hard_s"]) + 10.0, os._exit, args=(124,))
        timer.daemon = True
        timer.start()
    try:
        res = run_attempt(spec)
        res["ok"] = True
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides what to try next
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"[:4000], "traceback": traceback.format_exc()[-8000:]}
    result_path.write_text(json.dumps(res, indent=1, default=str))
    sys.stdout.flush()
    sys.stderr.flush()
    # a compiled run leaves compile workers and CUDA state behind: exit without waiting on them
    os._exit(0 if res["ok"] else 1)


# ------------------------------------------------------------------------------------------------------------------
# Orchestration


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Terminated(Exception):
    """SIGTERM (e.g. from ``timeout`` around this script): stop, and write what was measured."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's session (it was started with ``start_new_session``, so its group id is its pid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.kill()
        proc.wait(timeout=10)
    except Exception:
        pass


def run_isolated(spec: dict[str, Any], *, timeout_s: float, log_path: Path) -> dict[str, Any]:
    """Run :func:`run_attempt` in a fresh Python process (its own CUDA context) with a wall-clock limit."""
    spec_path = Path(spec["run_dir"]).with_suffix(".spec.json")
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, default=str))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as logf:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # Terminated (SIGTERM from an outer time limit), KeyboardInterrupt: stop the worker
            _kill_group(proc)
            raise
        _kill_group(proc)  # what the worker left behind (e.g. compile workers), and the worker if it still runs
        if timed_out:
            return {"ok": False, "error": f"timed out after {timeout_s:.0f} s (killed)", "log_tail": _tail(log_path)}
    result_path = Path(spec["result_path"])
    if not result_path.is_file():
        return {"ok": False, "error": f"worker exited with code {rc} and wrote no result", "log_tail": _tail(log_path)}
    res = json.loads(result_path.read_text())
    if not res.get("ok"):
        res["log_tail"] = _tail(log_path)
    return res


def run_in_process(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        res = run_attempt(spec)
        res["ok"] = True
        return res
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:4000], "traceback": traceback.format_exc()[-8000:]}
    finally:
        gc.collect()
        try:
            torch._dynamo.reset()
        except Exception:
            pass
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Clock:
    def __init__(self, budget_s: float, hard_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget_s, self.hard_s = budget_s, hard_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def budget_left(self) -> float:
        return self.budget_s - self.elapsed()

    def hard_left(self) -> float:
        return self.hard_s - self.elapsed()


def run_mechanism(args: argparse.Namespace, mechanism: str, *, clock: Clock, work_dir: Path, out_dir: Path,
                  runner: Callable[..., dict[str, Any]] | None = None, log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Try the mechanism's attempts in order until one succeeds; the record holds every attempt."""
    record: dict[str, Any] = {"mechanism": mechanism, "ok": False, "attempts": []}
    for attempt in attempt_plan(args, mechanism):
        hard_left = clock.hard_left() - 5.0
        time_left = min(hard_left, clock.budget_left())
        if attempt["compile"] and time_left < args.min_compiled_seconds:
            record["attempts"].append({"attempt": attempt["label"], "ok": False, "error": (
                f"skipped: {time_left:.0f} s left, under --min-compiled-seconds {args.min_compiled_seconds:.0f}: "
                "too little to compile and then measure")})
            log(f"[{mechanism}] attempt {attempt['label']} skipped: {time_left:.0f} s left, too little to compile")
            continue
        # the training loop's deadline: this mechanism's cap, what the budget leaves (at least the minimum), and
        # always inside the hard limit
        soft = max(min(args.max_seconds, clock.budget_left() - args.reserve_seconds), args.min_attempt_seconds)
        soft = min(soft, hard_left - args.reserve_seconds)
        if soft < args.min_attempt_seconds / 2:
            record["attempts"].append({"attempt": attempt["label"], "ok": False, "error": (
                f"skipped: out of time ({clock.hard_left():.0f} s left of --hard-limit-seconds)")})
            log(f"[{mechanism}] attempt {attempt['label']} skipped: out of time")
            break
        hard = min(soft + args.grace_seconds, hard_left)
        name = f"{mechanism}-{attempt['label']}"
        spec = {"mechanism": mechanism, "attempt": attempt, "args": vars(args), "deadline_s": soft, "hard_s": hard,
                "run_dir": str(work_dir / name), "result_path": str(work_dir / f"{name}.result.json")}
        log(f"[{mechanism}] attempt {attempt['label']}: training loop deadline {soft:.0f} s, process limit "
            f"{hard:.0f} s ({clock.elapsed():.0f} s into the script)")
        t0 = time.perf_counter()
        if runner is not None:
            res = runner(spec)
        elif args.isolate:
            res = run_isolated(spec, timeout_s=hard, log_path=out_dir / "runs" / f"{name}.log")
        else:
            res = run_in_process(spec)
        res.setdefault("attempt", attempt["label"])
        res["attempt_wall_s"] = time.perf_counter() - t0
        _copy_run_files(Path(spec["run_dir"]), out_dir / "runs" / name)
        shutil.rmtree(spec["run_dir"], ignore_errors=True)  # the checkpoint
        if res.get("ok"):
            record["attempts"].append({"attempt": res["attempt"], "ok": True, "attempt_wall_s": res["attempt_wall_s"]})
            failed = [a["attempt"] for a in record["attempts"] if not a.get("ok")]
            record.update({k: v for k, v in res.items() if k != "attempts"})
            record["fallback_after"] = failed
            break
        record["attempts"].append(res)
        log(f"[{mechanism}] attempt {attempt['label']} failed after {res['attempt_wall_s']:.0f} s: {res.get('error')}")
        if res.get("log_tail"):
            log(res["log_tail"])
    record["attempts_summary"] = [f"{a.get('attempt')}: {'ok' if a.get('ok') else a.get('error', '')[:300]}"
                                  for a in record["attempts"]]
    return record


def add_mfu(rec: dict[str, Any], *, peak_tflops: float, ceiling_tflops: float | None) -> None:
    """MFU of a successful record from its steady-state tokens/s and FLOPs per token."""
    if not rec.get("ok") or not rec.get("steady", {}).get("ok"):
        return
    achieved = rec["steady"]["tokens_per_s"] * rec["flops_per_token"] / 1e12
    rec["achieved_tflops"] = achieved
    rec["mfu_vs_peak"] = achieved / peak_tflops
    rec["mfu_vs_measured_matmul"] = achieved / ceiling_tflops if ceiling_tflops else None


def environment(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "host": platform.node(), "cpus": os.cpu_count()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:
        env["triton"] = f"unavailable ({type(e).__name__})"
    try:
        import tiktoken

        env["tiktoken"] = tiktoken.__version__
    except Exception as e:
        env["tiktoken"] = f"unavailable ({type(e).__name__})"
    if torch.device(args.device).type == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(args.device))
        env["gpu"] = p.name
        env["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        env["sm_count"] = p.multi_processor_count
        env["capability"] = f"{p.major}.{p.minor}"
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        env["git_commit"] = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip()
    except Exception:
        pass
    return env


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else format(v, spec)
    return str(v)


COLUMNS = ["mechanism", "attempt", "params M (total / non-emb / matmul)", "GFLOP/token", "steady steps (0-based)",
           "tokens/s", "step ms (median)", "MFU vs peak", "MFU vs measured matmul", "trainer overhead (steady / run)",
           "peak mem GiB", "train loss first -> last", "val loss", "tok/s vs standard", "status"]


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        if not r.get("ok"):
            rows.append([r["mechanism"], "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                         "FAILED: " + "; ".join(r.get("attempts_summary", []))[:300]])
            continue
        p, st, lo = r["params"], r["steady"], r["loss"]
        status = []
        if r.get("fallback_after"):
            status.append(f"fallback after failed {', '.join(r['fallback_after'])}")
        if r["impl"] != "auto":
            status.append(f"impl={r['impl']}")
        if r.get("kernel_check") and not r["kernel_check"].get("ok"):
            status.append("KERNEL CHECK FAILED")
        if not lo["fell"]:
            status.append("LOSS DID NOT FALL")
        if st.get("short_window"):
            status.append("short window")
        if r.get("stopped_early_at"):
            status.append(f"deadline at step {r['stopped_early_at']}")
        tr = r["trainer_result"]
        rows.append([
            r["mechanism"], f"{r['attempt']} ({r['layer']['n_heads']}x{r['layer']['head_dim']} heads)",
            f"{p['total'] / 1e6:.1f} / {p['non_embedding'] / 1e6:.1f} / {p['matmul'] / 1e6:.1f}",
            f"{r['flops_per_token'] / 1e9:.3f}",
            f"{st['first_step']}..{st['first_step'] + st['steps'] - 1}" if st.get("ok") else "-",
            _fmt(st.get("tokens_per_s"), ",.0f"), _fmt(1e3 * st["median_step_s"] if st.get("ok") else None, ".1f"),
            _fmt(r.get("mfu_vs_peak"), ".1%"), _fmt(r.get("mfu_vs_measured_matmul"), ".1%"),
            f"{_fmt(st.get('overhead_fraction'), '.1%')} / {_fmt(tr.get('overhead_fraction'), '.1%')}",
            _fmt(r.get("peak_memory_gib"), ".1f") if r.get("memory_kind") == "cuda-allocated" else "-",
            f"{_fmt(lo['first'], '.2f')} -> {_fmt(lo['last_mean'], '.2f')}", _fmt(lo.get("val"), ".3f"),
            _fmt(r.get("ratio_to_standard"), ".3f"), ", ".join(status) or "ok",
        ])
    return rows


def _median_tps(r: dict[str, Any]) -> float | None:
    st = r.get("steady", {})
    return r["tokens_per_step"] / st["median_step_s"] if st.get("ok") and st.get("median_step_s") else None


def _data_line(d: dict[str, Any]) -> str:
    if "error" in d:
        return f"failed to load ({d['error']})"
    line = (f"{d.get('source')} with the {d.get('tokenizer')} tokenizer (vocabulary {d.get('vocab_size', 0):,}), "
            f"{d.get('train_tokens', 0):,} training tokens; evaluation at the end on the first "
            f"{d.get('val_tokens_used', 0):,} of {d.get('val_tokens_total', 0):,} validation tokens")
    if d.get("tokenizer_fallback"):
        line += f" (fallback: {d['tokenizer_fallback']})"
    return line


def existing_results(out_dir: Path, tag: str) -> list[Path]:
    """The results of an earlier run in ``out_dir`` that this run would overwrite: ``train-throughput-<tag>.json``
    and ``.md``, and every ``train-throughput-<tag>-<mechanism>.json`` (any mechanism, not only this run's)."""
    if not out_dir.is_dir():
        return []
    found = [out_dir / f"train-throughput-{tag}.{ext}" for ext in ("json", "md")]
    found = [p for p in found if p.exists()]
    return found + sorted(out_dir.glob(f"train-throughput-{tag}-*.json"))


def write_reports(out_dir: Path, tag: str, summary: dict[str, Any], *, final: bool) -> tuple[Path, Path]:
    js = out_dir / f"train-throughput-{tag}.json"
    md = out_dir / f"train-throughput-{tag}.md"
    summary["complete"] = final
    js.write_text(json.dumps(summary, indent=1, default=str))
    results, env, ceil = summary["results"], summary["environment"], summary.get("matmul_ceiling") or {}
    lines = [f"# Training throughput and MFU ({tag})", ""]
    if summary.get("terminated"):
        lines += [f"**Stopped from outside ({summary['terminated']}): the results below are what was measured.**",
                  ""]
    elif not final:
        lines += ["**Partial: the script has not finished (or was stopped).**", ""]
    lines += [f"Command: `{summary['command']}`  ", f"Date: {summary['date']}  ",
              "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("host",)), "",
              f"Model: {summary['model']}. Data: {_data_line(summary.get('data') or {})}.", "",
              f"MFU convention: PaLM `6N + 6·m·L·H·Dh·T` (N = matmul parameters, tied LM head counted once; "
              f"attention over the full T x T square; m = 2 standard, m = 6 CASTLE, an approximation). Peak: "
              f"{summary['peak_tflops']} TFLOP/s dense bf16 (datasheet); measured matmul ceiling: "
              f"{_fmt(ceil.get('tflops'), '.1f')} TFLOP/s ({ceil.get('n')}^3 {ceil.get('dtype')}, median of "
              f"{ceil.get('reps')}). Tokens/s over the steady steps (after {summary['skip_steps']} warm-up/compile "
              "steps), trainer overhead over the same steps / over the whole run (compilation included).", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for row in table_rows(results):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    lines.append("")
    for r in results:
        if r.get("ok"):
            extra = [f"first step (compile) {_fmt(r.get('first_step_s'), '.1f')} s",
                     f"steps before the window {_fmt(r.get('warmup_s'), '.1f')} s",
                     f"p90 step {_fmt(1e3 * r['steady']['p90_step_s'] if r['steady'].get('ok') else None, '.1f')} ms",
                     f"tokens/s at the median step {_fmt(_median_tps(r), ',.0f')}",
                     f"attention {r['attention_flops_fraction']:.1%} of the FLOPs",
                     f"attempt wall {_fmt(r.get('attempt_wall_s'), '.0f')} s"]
            if r.get("kernel_check"):
                kc = r["kernel_check"]
                errs = kc.get("rel_errors")
                extra.append(f"kernel check {'ok' if kc.get('ok') else 'FAILED'}"
                             + (f" (max rel. error {max(errs.values()):.2g})" if errs else f" ({kc.get('error')})"))
            if r.get("dynamo"):
                extra.append(f"graph breaks {r['dynamo'].get('graph_breaks')}")
            lines.append(f"- {r['mechanism']}: " + "; ".join(extra))
        for a in r.get("attempts", []):
            if not a.get("ok"):
                lines.append(f"- {r['mechanism']} attempt {a.get('attempt')} failed: {str(a.get('error'))[:500]}")
    md.write_text("\n".join(lines) + "\n")
    return md, js


def print_table(results: list[dict[str, Any]]) -> None:
    short = [0, 1, 5, 6, 7, 8, 9, 10, 11, 13, 14]
    rows = [[COLUMNS[i] for i in short]] + [[row[i] for i in short] for row in table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(short))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), flush=True)


# ------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (JSON, Markdown, logs, metrics)")
    ap.add_argument("--mechanisms", default="standard,castle", help=f"comma-separated, of {', '.join(MECHANISMS)}")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per mechanism (default 200; dry run 12)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per optimizer step (default 32; dry 4)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    ap.add_argument("--skip-steps", type=int, default=None,
                    help="steps left out of the steady-state window (compile, warm-up; default 20, dry run 4)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="training-loop deadline per attempt, compilation included (default 60; dry run 60)")
    ap.add_argument("--budget-seconds", type=float, default=150.0, help="soft limit for the whole script")
    ap.add_argument("--hard-limit-seconds", type=float, default=270.0, help="the whole script never runs longer")
    ap.add_argument("--grace-seconds", type=float, default=75.0,
                    help="per attempt: process limit = deadline + this (start-up, a compile that overruns, eval)")
    ap.add_argument("--min-window-seconds", type=float, default=None,
                    help="the deadline never stops training sooner than this after the first (compiling) step "
                         "(default 10; dry run 0)")
    ap.add_argument("--reserve-seconds", type=float, default=15.0, help="budget kept back per attempt for its end")
    ap.add_argument("--min-attempt-seconds", type=float, default=25.0,
                    help="an attempt's deadline is at least this, budget or not (within the hard limit)")
    ap.add_argument("--min-compiled-seconds", type=float, default=60.0,
                    help="a compiled attempt is skipped (for the eager one) when less time than this is left")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="eager only")
    ap.add_argument("--no-isolate", dest="isolate", action="store_false",
                    help="run the attempts in this process instead of one process each")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model (2 layers, d 64, context 64), no compile")
    ap.add_argument("--source", default=None, help="corpus (default wikitext2; dry run tinyshakespeare)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer (default gpt2; dry run char)")
    ap.add_argument("--eval-windows", type=int, default=32, help="validation windows evaluated at the end")
    ap.add_argument("--eval-batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 6e-4; dry run 3e-3)")
    ap.add_argument("--lr-warmup", type=int, default=None, help="learning-rate warm-up steps (default 20; dry 2)")
    ap.add_argument("--log-interval", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--peak-tflops", type=float, default=H200_PEAK_BF16_TFLOPS)
    ap.add_argument("--ceiling-n", type=int, default=None, help="matmul ceiling size (default 8192; dry run 256)")
    ap.add_argument("--checkpoint", action="store_true",
                    help="let the trainer write its end-of-run checkpoint (~1.5 GB at 124M; not timed either way)")
    ap.add_argument("--tf32", action="store_true", help="torch.set_float32_matmul_precision('high') in the runs")
    ap.add_argument("--work-dir", default=None, help="where run directories (checkpoints) go; default a temp dir")
    ap.add_argument("--force", action="store_true",
                    help="run even though --out holds an earlier run's results, overwriting its "
                         "train-throughput-<tag>.{json,md}, the train-throughput-<tag>-<mechanism>.json of the "
                         "mechanisms run again and their runs/ logs and metrics (without it such a folder is refused)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    dry = args.dry_run
    defaults = {"steps": 12 if dry else 200, "batch_size": 4 if dry else 32, "skip_steps": 4 if dry else 20,
                "max_seconds": 60.0, "source": "tinyshakespeare" if dry else "wikitext2",
                "tokenizer": "char" if dry else "gpt2", "lr": 3e-3 if dry else 6e-4, "lr_warmup": 2 if dry else 20,
                "ceiling_n": 256 if dry else 8192, "min_window_seconds": 0.0 if dry else 10.0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.n_layers, args.d_model, args.n_heads, args.context_len = (2, 64, 4, 64) if dry else (12, 768, 12, 1024)
    args.device = "cpu" if dry else "cuda"
    if dry:
        args.compile = False
        args.min_attempt_seconds = min(args.min_attempt_seconds, 5.0)
    mechs = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    bad = [m for m in mechs if m not in MECHANISMS]
    if bad or not mechs:
        ap.error(f"--mechanisms must be a comma-separated list of {', '.join(MECHANISMS)}, got {args.mechanisms!r}")
    args.mechanism_list = mechs
    for name in ("steps", "batch_size", "grad_accum", "eval_windows", "log_interval", "ceiling_n"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.skip_steps < 0:
        ap.error(f"--skip-steps must be >= 0, got {args.skip_steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if len(raw) == 2 and raw[0] == "--worker":
        return worker_main(raw[1])
    args = parse_args(raw)
    clock = Clock(args.budget_seconds, args.hard_limit_seconds)
    out_dir = Path(args.out)
    tag = "cpu-dry-run" if args.dry_run else "cuda"
    earlier = existing_results(out_dir, tag)
    if earlier and not args.force:  # checked before anything is written: an earlier run's results are kept
        print(f"train_throughput: {out_dir} already holds an earlier run's results "
              f"({', '.join(p.name for p in earlier)}); nothing was written. Choose a new --out folder, "
              "or pass --force to overwrite them", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs one (use --dry-run for the CPU check)", file=sys.stderr)
        return 2
    own_work = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="attnlab-train-throughput-")) if own_work else Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    saved_cache_env = os.environ.get("ATTNLAB_CACHE_DIR")
    if not saved_cache_env:  # a token cache every worker can write and read (restored at the end)
        os.environ["ATTNLAB_CACHE_DIR"] = str(work_dir / "token-cache")
    env = environment(args)
    print(f"train_throughput: {env}", flush=True)
    summary: dict[str, Any] = {
        "command": "python benchmarks/gpu/train_throughput.py " + " ".join(raw),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "environment": env,
        "peak_tflops": args.peak_tflops, "skip_steps": args.skip_steps,
        "model": (f"LM {args.n_layers} layers, d_model {args.d_model}, {args.n_heads} standard heads (CASTLE: "
                  f"parity heads of the same head dim), context {args.context_len}, batch {args.batch_size} x "
                  f"{args.context_len} tokens, {args.steps} steps, bf16 autocast on CUDA, compile={args.compile}"),
        "args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": [],
    }
    summary["data"] = prepare_data(args)
    summary["args"]["tokenizer"] = args.tokenizer  # (after a fallback)
    print(f"data: {summary['data']}", flush=True)
    device = torch.device(args.device)
    try:
        summary["matmul_ceiling"] = matmul_ceiling(device, n=args.ceiling_n)
        print(f"matmul ceiling: {summary['matmul_ceiling']}", flush=True)
    except Exception as e:
        summary["matmul_ceiling"] = {"error": f"{type(e).__name__}: {e}"}
    ceiling = summary["matmul_ceiling"].get("tflops")
    write_reports(out_dir, tag, summary, final=False)
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    terminated = None
    try:
        for mech in args.mechanism_list:
            try:
                rec = run_mechanism(args, mech, clock=clock, work_dir=work_dir, out_dir=out_dir,
                                    log=lambda s: print(s, flush=True))
            except (Terminated, KeyboardInterrupt) as e:
                terminated = f"{type(e).__name__}: {e} at {clock.elapsed():.0f} s, while running {mech}"
                print(terminated, flush=True)
                rec = {"mechanism": mech, "ok": False, "attempts": [{"ok": False, "error": terminated}],
                       "attempts_summary": [terminated]}
            add_mfu(rec, peak_tflops=args.peak_tflops, ceiling_tflops=ceiling)
            summary["results"].append(rec)
            std = next((r for r in summary["results"] if r["mechanism"] == "standard" and r.get("ok")), None)
            for r in summary["results"]:
                if std is not None and r.get("ok") and r["steady"].get("ok") and std["steady"].get("ok"):
                    r["ratio_to_standard"] = r["steady"]["tokens_per_s"] / std["steady"]["tokens_per_s"]
            (out_dir / f"train-throughput-{tag}-{mech}.json").write_text(json.dumps(rec, indent=1, default=str))
            write_reports(out_dir, tag, summary, final=False)
            status = (f"{rec['steady'].get('tokens_per_s', 0):,.0f} tok/s, MFU {_fmt(rec.get('mfu_vs_peak'), '.1%')}"
                      if rec.get("ok") else "FAILED")
            print(f"[{mech}] done at {clock.elapsed():.0f} s: {status}", flush=True)
            if terminated:
                break
    finally:
        summary["script_wall_s"] = clock.elapsed()
        summary["terminated"] = terminated
        md, js = write_reports(out_dir, tag, summary, final=terminated is None)
        if in_main:
            signal.signal(signal.SIGTERM, old_handler if old_handler is not None else signal.SIG_DFL)
        if own_work:
            shutil.rmtree(work_dir, ignore_errors=True)
        if not saved_cache_env:
            os.environ.pop("ATTNLAB_CACHE_DIR", None)
    print(f"\nwrote {md} and {js} ({summary['script_wall_s']:.0f} s)", flush=True)
    print_table(summary["results"])
    if terminated:
        return 124
    return 0 if all(r.get("ok") for r in summary["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
