"""The ``objectives`` suite: what CAT and LeaF cost over plain training (spec ``causal_training.md``, acceptance
figure 5).

Per length ``T`` one training step of the same LM (``options.d_model``, ``options.n_heads``, 2 layers, batch
``options.batch_size``, answer-only loss on the last two positions) under each objective, timed interleaved with the
plain step (a, b, a, b, ...) for the ratio, and its peak memory:

* ``plain``: the fast path (the layer's SDPA backend), cross-entropy, backward;
* ``cat``: the same with every layer's probabilities captured in the graph (the reference softmax beside the
  backend) and CAT's re-attention term over a random adjacency, backward;
* ``kd``: a frozen teacher of the same size (no gradient) and the student's KD loss, backward;
* ``leaf stage 2``: KD on the batch plus KD on one counterfactual per row (3 tokens pruned), backward;
* ``leaf stage 1``: the detection of one batch: teacher and student input-gradient saliency (two backward passes
  to the embeddings), marks, spans and counterfactuals (a pre-processing pass, paid once per training example).

Each case is checked first: CAT's logits under capture equal the fast path's and its probabilities' rows sum to 1;
KD and LeaF stage 2 with the teacher a copy of the student are 0; stage 1 with teacher = student marks nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.measure import fit_exponent, peak_memory, time_fns
from attnlab.bench.steps import (MiB, check_tolerance, correctness_status, log_log_panels, progress, relative_error,
                                 save_figure, short_error)

__all__ = ["run_objectives", "OBJECTIVE_CASES"]

OBJECTIVE_CASES = ["plain", "cat", "kd", "leaf stage 2", "leaf stage 1"]
COLUMNS = ["case", "T", "status", "step ms", "× plain", "peak MiB", "mem × plain", "note"]
_VOCAB = 64


def _models(options: BenchOptions, T: int):
    from attnlab.models.lm import LMConfig

    torch.manual_seed(0)
    cfg = LMConfig(n_layers=2, d_model=options.d_model, n_heads=options.n_heads, context_len=T, vocab_size=_VOCAB)
    student = cfg.build().to(device=options.device, dtype=options.dtype)
    teacher = cfg.build().to(device=options.device, dtype=options.dtype).eval().requires_grad_(False)
    return student, teacher


def _cases(options: BenchOptions, T: int) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """The step of each case and its correctness error (relative, or 0/inf for a property)."""
    from attnlab.layers.capture import capture_attention
    from attnlab.methods import CATConfig, LeafDetectConfig, cat_loss, detect_confounders, token_kd_loss

    B, dev = options.batch_size, options.device
    student, teacher = _models(options, T)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, _VOCAB, (B, T), generator=g).to(dev)
    targets = torch.full((B, T), -100, dtype=torch.long)
    targets[:, -3:-1] = idx[:, -2:].cpu()
    targets = targets.to(dev)
    M = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        M[b, -3:-1, torch.randperm(T - 3, generator=g)[:3]] = True
    M = M.to(dev)
    cf_idx = torch.cat([idx[:, :5], idx[:, 8:]], dim=1)  # one counterfactual per row: tokens 5..7 pruned
    cf_targets = torch.cat([targets[:, :5], targets[:, 8:]], dim=1)
    score = torch.zeros(B, T, dtype=torch.bool, device=dev)
    score[:, : T - 3] = True
    cat_cfg = CATConfig(alpha=2.0, decay="none")
    detect = LeafDetectConfig(p=0.1)

    def ce(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    def kd(t_model, i: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            tl = t_model(i)
        return token_kd_loss(tl, student(i), t)

    def plain() -> None:
        student.zero_grad(set_to_none=True)
        ce(student(idx)).backward()

    def cat_loss_value() -> tuple[Tensor, Tensor, list[Tensor]]:
        with capture_attention(student, keep_graph=True) as cap:
            logits = student(idx)
        probs = [p for _, p in cap.all()]
        return logits, ce(logits) + cat_loss(cap.all(), M, cat_cfg).loss, probs

    def cat() -> None:
        student.zero_grad(set_to_none=True)
        cat_loss_value()[1].backward()

    def kd_step() -> None:
        student.zero_grad(set_to_none=True)
        kd(teacher, idx, targets).backward()

    def leaf2() -> None:
        student.zero_grad(set_to_none=True)
        (kd(teacher, idx, targets) + kd(teacher, cf_idx, cf_targets)).backward()

    def leaf1() -> None:
        detect_confounders(teacher, student, idx, targets, score, detect)

    # correctness gates
    errors: dict[str, float] = {}
    with torch.no_grad():
        fast = student(idx)
    logits, _, probs = cat_loss_value()
    row_err = max(float((p.detach().sum(-1) - 1).abs().max()) for p in probs)
    errors["cat"] = max(relative_error(logits.detach(), fast), row_err)
    errors["plain"] = 0.0
    twin = copy.deepcopy(student).eval().requires_grad_(False)
    with torch.no_grad():
        errors["kd"] = float(kd(twin, idx, targets).abs())
        errors["leaf stage 2"] = float((kd(twin, idx, targets) + kd(twin, cf_idx, cf_targets)).abs())
    errors["leaf stage 1"] = float(detect_confounders(twin, student.eval(), idx, targets, score, detect).marked.sum())
    student.train()
    return {"plain": plain, "cat": cat, "kd": kd_step, "leaf stage 2": leaf2, "leaf stage 1": leaf1}, errors


def run_objectives(options: BenchOptions) -> SuiteResult:
    lengths = options.lengths_or(cpu=(64, 128, 256), cuda=(256, 512, 1024, 2048), quick=(32, 64))
    tol = check_tolerance(options.dtype)
    rows: list[dict[str, Any]] = []
    for T in progress(list(lengths), options, "objectives"):
        try:
            fns, errors = _cases(options, T)
        except Exception as exc:  # a case that cannot be built is reported, not hidden
            rows += [{"case": c, "T": T, "status": short_error(exc)} for c in OBJECTIVE_CASES]
            continue
        ok = {c: correctness_status(errors[c], tol, what="check ") for c in OBJECTIVE_CASES}
        plain_fn = fns["plain"]
        base_mem = peak_memory(plain_fn, device=options.device) / MiB
        for c in OBJECTIVE_CASES:
            row: dict[str, Any] = {"case": c, "T": T, "status": ok[c]}
            if ok[c] == "ok":
                timed = {"case": fns[c]} if c == "plain" else {"case": fns[c], "plain": plain_fn}
                t = time_fns(timed, **options.timing())
                row["step ms"] = t["case"].median * 1e3
                row["× plain"] = 1.0 if c == "plain" else t["case"].median / t["plain"].median
                row["peak MiB"] = peak_memory(fns[c], device=options.device) / MiB
                row["mem × plain"] = row["peak MiB"] / base_mem if base_mem else None
            rows.append(row)
    growth = Table(title="growth in T (fitted exponent of step time and peak memory)",
                   columns=["case", "time exp", "mem exp"])
    for c in OBJECTIVE_CASES:
        ok_rows = [r for r in rows if r["case"] == c and r.get("step ms")]
        if len(ok_rows) >= 2:
            xs = [r["T"] for r in ok_rows]
            growth.rows.append({"case": c, "time exp": fit_exponent(xs, [r["step ms"] for r in ok_rows]),
                                "mem exp": fit_exponent(xs, [r["peak MiB"] for r in ok_rows])})
    notes = [f"LM of 2 layers, d_model {options.d_model}, {options.n_heads} heads, batch {options.batch_size}, "
             f"{options.dtype}; each case timed interleaved with the plain step; medians.",
             "cat keeps every layer's (B, H, T, T) probabilities in the graph (the reference softmax beside the "
             "backend); leaf stage 1 is the per-batch detection pass, paid once per training example, not per step."]
    return SuiteResult(suite="objectives", options=options, notes=notes, data={"rows": rows},
                       tables=[Table(title="one training step per objective", columns=COLUMNS, rows=rows), growth])


def plot_objectives(result: SuiteResult, stem: Path) -> list[Path]:
    fig = log_log_panels(result.data["rows"], series="case", x="T", xlabel="T",
                         panels=[("step ms", "time per step", "ms"), ("peak MiB", "peak memory per step", "MiB")])
    return [save_figure(fig, stem)]


register_suite(Suite(name="objectives", description="CAT and LeaF against plain training: step time, peak memory, "
                     "growth in T", run=run_objectives, plot=plot_objectives))
