"""Distillation objectives for the prompt-answer tasks: plain KD and LeaF (spec ``causal_training.md`` Part B).

Shape legend: B batch, T sequence length, V vocabulary size.

The task holds a frozen teacher (:attr:`attnlab.tasks.base.Task.teacher`) loaded from an ordinary attnlab
checkpoint of the same task and vocabulary (``options.teacher.checkpoint``). For LeaF, stage 1
(:func:`detect_training_confounders`) runs once before training over every training example with the teacher
and a *detection student* (``options.student.checkpoint``, typically a run of the same task trained plainly on
the IID data): it marks confounding tokens (:func:`attnlab.methods.detect_confounders`) and keeps one
counterfactual per marked span. Stage 2 is the loss of the task: token-level KD on the original rows plus λ
times KD on the counterfactuals of those rows (:func:`attnlab.methods.token_kd_loss`), logged as the terms
``main`` (original) and ``kd_cf`` (counterfactual, already weighted). ``objective = "kd"`` is the same without
counterfactuals (the "KD, no mask" row of spec B.7).

A checkpoint path may hold ``{seed}``, replaced by the run's seed, so that a comparison over seeds can pair each
seed with its own student (``runs/stg/runs/plain/seed{seed}``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, get_args

import numpy as np
import torch
from torch import Tensor, nn

from attnlab._validation import check_bool, check_float
from attnlab.methods.leaf import LeafDetectConfig, detect_confounders, prune_span
from attnlab.methods.saliency import SaliencyMode, SaliencyReduce

__all__ = ["TeacherOptions", "StudentOptions", "LeafOptions", "SampleFilter", "LeafData",
           "detect_training_confounders", "resolve_checkpoint_path", "pad_rows"]

SampleFilter = Literal["all", "teacher_right_student_wrong", "pruning_fixes_student"]


def _check_path(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{name} must be a checkpoint path (a non-empty string) or unset, got {value!r}")


@dataclass(kw_only=True)
class TeacherOptions:
    """Attributes:
        checkpoint: the teacher's run or checkpoint directory (``{seed}`` is replaced by the run's seed); needed
            by ``objective = "kd"`` and ``"leaf"``.
    """

    checkpoint: str | None = None

    def __post_init__(self) -> None:
        _check_path("teacher.checkpoint", self.checkpoint)


@dataclass(kw_only=True)
class StudentOptions:
    """Attributes:
        checkpoint: the detection student of LeaF's stage 1 (needed by ``objective = "leaf"``; optional for
            ``"kd"``), a run of the same model config; ``{seed}`` is replaced by the run's seed.
        init: start stage 2 from that student's weights (LeaF distils into the pre-KD student) instead of a
            fresh initialisation.
    """

    checkpoint: str | None = None
    init: bool = True

    def __post_init__(self) -> None:
        _check_path("student.checkpoint", self.checkpoint)
        check_bool("student.init", self.init)


@dataclass(kw_only=True)
class LeafOptions:
    """Options of LeaF (spec B.3-B.5).

    Attributes:
        p: the quantile position of the threshold τ = min(q_p(Δ), cap) (0.05 / 0.10 in the released scripts).
        cap: the cap on τ (0.5 as released).
        lam: λ, the weight of the counterfactual KD term (``mix = "weighted"``).
        mix: ``"weighted"`` (KD + λ KD_cf) or ``"mixed_rows"`` (the release's single file of mixed rows: the
            row-count-weighted mean of the two terms).
        temperature: the KD temperature (the loss is scaled by its square).
        reduce: the saliency's reduction over the embedding (``"l2"`` as released).
        mode: module mode of the saliency passes (``"eval"``: deterministic; the release uses ``"train"``).
        sample_filter: which training samples get counterfactuals: ``"all"``, ``"teacher_right_student_wrong"``
            (the released file name suggests it), or ``"pruning_fixes_student"`` (also require the student to
            answer the counterfactual correctly).
        spans: ``"marked"`` (LeaF) or ``"random"``, a control: each marked span is replaced by a span of the same
            length at a random place among the same sample's scored tokens (seeded by the sample's index), so that
            stage 2 sees as many pruned rows of the same lengths, pruned blindly. The detection figures then
            describe the random spans.
    """

    p: float = 0.10
    cap: float = 0.5
    lam: float = 1.0
    mix: Literal["weighted", "mixed_rows"] = "weighted"
    temperature: float = 1.0
    reduce: SaliencyReduce = "l2"
    mode: SaliencyMode = "eval"
    sample_filter: SampleFilter = "all"
    spans: Literal["marked", "random"] = "marked"

    def __post_init__(self) -> None:
        check_float("leaf.lam", self.lam, low=0.0, high=float("inf"))
        check_float("leaf.temperature", self.temperature, low=0.0, low_inclusive=False, high=float("inf"))
        for name, value, choices in (("leaf.mix", self.mix, ("weighted", "mixed_rows")),
                                     ("leaf.sample_filter", self.sample_filter, get_args(SampleFilter)),
                                     ("leaf.spans", self.spans, ("marked", "random"))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        try:
            self.detect_config()
        except ValueError as e:
            raise ValueError(f"leaf.{e}") from None

    def detect_config(self, never_mark_ids: frozenset[int] = frozenset()) -> LeafDetectConfig:
        return LeafDetectConfig(p=self.p, cap=self.cap, reduce=self.reduce, mode=self.mode,
                                never_mark_ids=never_mark_ids)


def resolve_checkpoint_path(path: str, seed: int) -> str:
    """``path`` with ``{seed}`` replaced by ``seed``."""
    return path.replace("{seed}", str(seed))


@dataclass
class LeafData:
    """Stage-1 output over the training examples.

    Attributes:
        counterfactuals: per training example, its counterfactuals as ``(idx, targets)`` id lists (after the
            sample filter).
        spans: per training example, the ``[start, end)`` spans marked (before the sample filter).
        stats: detection quality: token precision/recall of the marks against the planted spurious tokens,
            the share of causal and of other scored tokens marked, counterfactuals per sample, samples kept by
            the filter, and the stage's wall time.
    """

    counterfactuals: list[list[tuple[list[int], list[int]]]]
    spans: list[list[tuple[int, int]]]
    stats: dict[str, float] = field(default_factory=dict)


def _span_mask(T: int, spans: Sequence[tuple[int, int]]) -> Tensor:
    m = torch.zeros(T, dtype=torch.bool)
    for a, e in spans:
        m[a:e] = True
    return m


@torch.no_grad()
def _answers_right(model: nn.Module, idx: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """``(B,)`` bool: every labelled position's argmax equals its label (greedy exact match)."""
    hit = (model(idx).argmax(-1) == targets) | (targets == ignore_index)  # (B, T)
    return hit.all(dim=1)


def _random_spans(spans: list[tuple[int, int]], scored: Tensor, sample: int) -> list[tuple[int, int]]:
    """Spans of the lengths of ``spans`` at random starts among the scored positions ``scored (T,)`` where the whole
    span stays scored (the control of ``LeafOptions.spans = "random"``; seeded by ``sample``)."""
    rng = np.random.default_rng([sample, 0x5EED])
    pos = scored.nonzero().squeeze(1).tolist()
    allowed = set(pos)
    out = []
    for start, end in spans:
        n = end - start
        starts = [p for p in pos if all(q in allowed for q in range(p, p + n))]
        s = int(starts[rng.integers(len(starts))])
        out.append((s, s + n))
    return out


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Right-pad ``(ids, targets)`` rows into ``idx`` ``(B, T)`` (``pad_id``) and ``targets`` ``(B, T)``
    (``ignore_index``), ``T`` the longest row."""
    T = max(len(i) for i, _ in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    tg = torch.full((len(rows), T), ignore_index, dtype=torch.long)
    for b, (i, t) in enumerate(rows):
        idx[b, : len(i)] = torch.tensor(i)
        tg[b, : len(t)] = torch.tensor(t)
    return idx, tg


def detect_training_confounders(
    teacher: nn.Module,
    student: nn.Module,
    examples: Sequence[Any],
    tensors: Callable[[Sequence[Any]], tuple[Tensor, Tensor, Tensor]],
    options: LeafOptions,
    *,
    pad_id: int,
    ignore_index: int = -100,
    batch_size: int = 64,
) -> LeafData:
    """LeaF stage 1 over ``examples`` (each with ``spurious`` and ``causes`` token spans).

    Args:
        teacher, student: the frozen models, on the CPU in float32 (moved nowhere).
        tensors: ``examples -> (idx (B, T), targets (B, T), score_mask (B, T))``, right-padded with ``pad_id``
            (which no sequence holds otherwise; each counterfactual is cut to its own row's length).
        options: the LeaF options (threshold, saliency, sample filter).

    Returns:
        The counterfactuals per example and the detection statistics (see :class:`LeafData`).
    """
    t0 = time.perf_counter()
    config = options.detect_config(frozenset({pad_id}))
    out: list[list[tuple[list[int], list[int]]]] = []
    spans: list[list[tuple[int, int]]] = []
    n_marked = n_marked_spur = n_spur = n_marked_cause = n_cause = n_scored = n_kept = 0
    for lo in range(0, len(examples), batch_size):
        exs = examples[lo : lo + batch_size]
        idx, targets, score = tensors(exs)
        det = detect_confounders(teacher, student, idx, targets, score, config, ignore_index=ignore_index)
        keep = torch.ones(len(exs), dtype=torch.bool)
        if options.sample_filter != "all":
            keep = _answers_right(teacher, idx, targets, ignore_index) & ~_answers_right(student, idx, targets,
                                                                                           ignore_index)
        by_sample: list[list[tuple[list[int], list[int]]]] = [[] for _ in exs]
        lengths = (idx != pad_id).sum(dim=1).tolist()  # each row's own length (the batch is right-padded)
        used = det.spans if options.spans == "marked" else [
            _random_spans(sp, score[b], lo + b) for b, sp in enumerate(det.spans)]
        marks = torch.stack([_span_mask(idx.shape[1], sp) for sp in used])  # (B, T)
        for b, sp in enumerate(used):
            for start, end in sp:
                cf_idx, cf_targets = prune_span(idx[b], targets[b], start, end)
                n = lengths[b] - (end - start)  # the pruned row without the batch's padding
                by_sample[b].append((cf_idx[:n].tolist(), cf_targets[:n].tolist()))
        if options.sample_filter == "pruning_fixes_student":
            for b, cfs in enumerate(by_sample):
                if keep[b] and cfs:
                    ci, ct = pad_rows(cfs, pad_id, ignore_index)
                    fixed = _answers_right(student, ci, ct, ignore_index).tolist()
                    by_sample[b] = [c for c, ok in zip(cfs, fixed) if ok]
        for b, ex in enumerate(exs):
            T = idx.shape[1]
            scored, marked = score[b], marks[b]
            spur = _span_mask(T, ex.spurious) & scored
            cause = _span_mask(T, ex.causes) & scored
            n_scored += int(scored.sum())
            n_marked += int(marked.sum())
            n_spur += int(spur.sum())
            n_marked_spur += int((marked & spur).sum())
            n_cause += int(cause.sum())
            n_marked_cause += int((marked & cause).sum())
            kept = by_sample[b] if keep[b] else []
            n_kept += bool(kept)
            out.append(kept)
            spans.append(used[b])
    n_cf = sum(len(c) for c in out)
    stats = {
        "leaf_precision": n_marked_spur / n_marked if n_marked else float("nan"),
        "leaf_recall": n_marked_spur / n_spur if n_spur else float("nan"),
        "leaf_marked_causal": n_marked_cause / n_cause if n_cause else float("nan"),
        "leaf_marked_share": n_marked / n_scored if n_scored else 0.0,
        "leaf_cf_per_sample": n_cf / max(len(examples), 1),
        "leaf_samples_with_cf": n_kept / max(len(examples), 1),
        "leaf_stage1_s": time.perf_counter() - t0,
    }
    return LeafData(out, spans, stats)

