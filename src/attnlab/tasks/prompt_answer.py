"""Prompt-answer tasks with planted spurious tokens: the shared base of ``stg`` and ``arith-distractors``.

Shape legend: B batch, T sequence length, V vocabulary size.

An example is a word-level prompt (``tokens``), a short answer (``answer``) and the ``[start, end)`` token spans of
its ``causes`` and its planted ``spurious`` tokens. A sequence is ``prompt + answer``; the loss covers the answer
tokens only (the positions ``len(prompt) - 1 ..`` predict them). Splits: ``train`` and the evaluation splits
``iid`` (held out, same rules), ``ood`` (the spurious tokens independent of the answer) and ``flipped`` (the
spurious correlation reversed). Model: attnlab's LM from scratch over the task's fixed vocabulary plus a pad token.

Objectives (``options.objective``, :class:`PromptAnswerOptions`):

* ``plain``: the answer-only cross-entropy;
* ``cat``: plus CAT's re-attention term (spec ``causal_training.md`` A.5) over the layer- and head-averaged
  attention of the rows that predict the answer, towards the cause spans (logged as ``cat``);
* ``kd``: token-level KD from a frozen teacher checkpoint on the answer positions (spec B.4's first term);
* ``leaf``: LeaF: stage 1 before training marks confounders with the teacher and a detection student
  (:mod:`attnlab.tasks.distill`); stage 2 adds λ times KD on each row's counterfactuals (logged as ``kd_cf``).

Evaluation (``val``: IID and OOD, the loss is the IID one; ``test``: all three). Metrics (percent): ``acc_iid``,
``acc_ood``, ``acc_flipped`` (exact match of the answer by greedy decoding, which is the argmax at every answer
position given the true prefix), ``gap`` (IID - flipped), ``majority`` (the training set's most frequent answer on
the IID split), ``cause_mass`` / ``spurious_mass`` (mean attention of the answer rows on the cause and spurious
spans, averaged over layers and heads, IID split) and, with LeaF, the stage-1 detection figures.
"""

from __future__ import annotations

import collections
import hashlib
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.methods.cat import CATConfig, averaged_attention, cat_loss
from attnlab.methods.leaf import token_kd_loss
from attnlab.models.common import IGNORE_INDEX
from attnlab.models.lm import LMConfig
from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task
from attnlab.tasks.distill import (
    LeafData,
    LeafOptions,
    StudentOptions,
    TeacherOptions,
    detect_training_confounders,
    pad_rows,
    resolve_checkpoint_path,
)
from attnlab.tasks.forecast import epoch_order_rows

__all__ = ["PromptExample", "PromptAnswerOptions", "PromptAnswerTask", "OBJECTIVES", "VARIANTS",
           "DEFAULT_VARIANTS", "answer_adjacency", "PAD"]

PAD = "<pad>"
OBJECTIVES = ("plain", "cat", "kd", "leaf")

#: the variants ``attnlab compare`` knows for these tasks; ``kd`` and ``leaf`` need ``options.teacher.checkpoint``
#: (and ``leaf`` ``options.student.checkpoint``) given with ``--set``
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"options.objective": "plain"},
    "cat-epoch": {"options.objective": "cat", "options.cat.decay": "epoch"},
    "cat-progress": {"options.objective": "cat", "options.cat.decay": "progress"},
    "cat-none": {"options.objective": "cat", "options.cat.decay": "none"},
    "kd": {"options.objective": "kd"},
    "leaf": {"options.objective": "leaf"},
}
#: what ``attnlab compare --task ...`` trains without further options (no checkpoints needed)
DEFAULT_VARIANTS = ["plain", "cat-epoch", "cat-progress", "cat-none"]


class PromptExample(Protocol):
    tokens: tuple[str, ...]
    answer: tuple[str, ...]
    causes: tuple[tuple[int, int], ...]
    spurious: tuple[tuple[int, int], ...]

    @property
    def label(self) -> str: ...


@dataclass(kw_only=True)
class PromptAnswerOptions:
    """Attributes:
        objective: ``"plain"``, ``"cat"``, ``"kd"`` or ``"leaf"`` (module docstring).
        cat: CAT's options (``objective = "cat"``), e.g. ``--set options.cat.alpha=2``.
        teacher: the frozen teacher checkpoint (``kd``, ``leaf``): ``--set options.teacher.checkpoint=runs/t``.
        student: LeaF's detection student and whether stage 2 starts from it (``leaf``; optional for ``kd``).
        leaf: LeaF's threshold, λ, mixing and sample filter; its ``temperature`` is also plain KD's.
    """

    objective: Literal["plain", "cat", "kd", "leaf"] = "plain"
    cat: CATConfig = field(default_factory=CATConfig)
    teacher: TeacherOptions = field(default_factory=TeacherOptions)
    student: StudentOptions = field(default_factory=StudentOptions)
    leaf: LeafOptions = field(default_factory=LeafOptions)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        for name, cls in (("cat", CATConfig), ("teacher", TeacherOptions), ("student", StudentOptions),
                          ("leaf", LeafOptions)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.objective in ("kd", "leaf") and self.teacher.checkpoint is None:
            raise ValueError(f"objective={self.objective!r} needs a teacher: set options.teacher.checkpoint")
        if self.objective == "leaf" and self.student.checkpoint is None:
            raise ValueError("objective='leaf' needs the detection student of stage 1: set "
                             "options.student.checkpoint")


def answer_adjacency(examples: Sequence[PromptExample], T: int) -> Tensor:
    """The causal adjacency ``(B, T, T)`` bool of spec A.4 for the sequences ``prompt + answer``: the rows that
    predict the answer tokens (``kp - 1 ..``, ``kp`` = prompt length) mark the cause columns."""
    M = torch.zeros(len(examples), T, T, dtype=torch.bool)
    for b, ex in enumerate(examples):
        kp = len(ex.tokens)
        for a, e in ex.causes:
            M[b, kp - 1 : kp - 1 + len(ex.answer), a:e] = True
    return M


def _weights_sha256(ckpt_dir: Any) -> str:
    """SHA-256 of a checkpoint's ``model.safetensors`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(Path(ckpt_dir) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class PromptAnswerTask(Task):
    """The shared task (module docstring). Subclasses set ``name``, ``data_config``, :attr:`min_context` and
    implement :meth:`vocabulary`, :meth:`generate_examples` and :meth:`scored_span`."""

    model_config = LMConfig
    options_config = PromptAnswerOptions
    compare_key = "options.objective"
    variant_label = "objective"
    default_variants = DEFAULT_VARIANTS
    primary_metric = ("acc_ood", "max")
    metric_format = ".2f"
    loss_label = "cross-entropy of the answer tokens (nats)"
    data_argument = "examples"
    #: the longest ``prompt + answer`` the task generates (the model's context must hold it)
    min_context: ClassVar[int] = 1

    def __init__(self, model: LMConfig, data: Any, *, seed: int, options: PromptAnswerOptions | None = None,
                 examples: Any = None, progress: bool = False) -> None:
        super().__init__(model, data, seed=seed, progress=progress)
        self.options = options if options is not None else PromptAnswerOptions()
        self.vocab = (PAD, *self.vocabulary())
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self._examples = examples
        self._global_batch = 0
        self._student: nn.Module | None = None
        self.leaf_data: LeafData | None = None
        #: the teacher/student checkpoints loaded (path and weights hash), kept in the task state for resumes
        self._sources: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------------------------------- subclass hooks
    @classmethod
    @abstractmethod
    def vocabulary(cls) -> tuple[str, ...]:
        """Every token a sequence can hold (the pad token is added in front)."""

    @abstractmethod
    def generate_examples(self) -> dict[str, list[Any]]:
        """``train``, ``iid``, ``ood`` and ``flipped`` examples from the data config."""

    @abstractmethod
    def scored_span(self, ex: Any) -> tuple[int, int]:
        """The ``[start, end)`` prompt tokens LeaF's saliency scores (the instruction, without fixed template)."""

    # ------------------------------------------------------------------------------------------- variants
    @classmethod
    def valid_variants(cls) -> list[str]:
        return list(VARIANTS)

    @classmethod
    def variant_overrides(cls, variant: str, options: dict[str, Any]) -> dict[str, Any]:
        """A named objective of :data:`VARIANTS`, plus the comparison's own options for it."""
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not an objective of task {cls.name!r}; variants: "
                             f"{', '.join(VARIANTS)}")
        return {**VARIANTS[variant], **options}

    @classmethod
    def check_config(cls, model: LMConfig, data: Any, options: Any) -> None:
        """The model's context must hold a whole sequence (:attr:`min_context` tokens)."""
        if model.context_len < cls.min_context:
            raise ValueError(f"model.context_len={model.context_len} is shorter than a {cls.name} sequence "
                             f"({cls.min_context} tokens)")

    # ------------------------------------------------------------------------------------------------- data
    @property
    def examples(self) -> dict[str, list[Any]]:
        """``train`` and the evaluation splits ``iid``, ``ood``, ``flipped``, generated on first use."""
        if self._examples is None:
            self._examples = self.generate_examples()
        return self._examples

    def shared_data(self) -> Any:
        return self.examples

    @property
    def splits(self) -> tuple[str, ...]:
        return ("val", "test")

    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        self._global_batch = batch_size  # for CAT's epoch count
        return epoch_order_rows(step, seed=self.seed, n_windows=len(self.examples["train"]), batch_size=batch_size)

    def count_targets(self, rows: Any) -> int:
        train = self.examples["train"]
        return sum(len(train[int(i)].answer) for i in np.asarray(rows))

    def sequence(self, ex: Any) -> tuple[list[int], list[int]]:
        """Token ids of ``prompt + answer`` and the aligned targets (``-100`` off the answer positions)."""
        ids = [self.ids[t] for t in ex.tokens + ex.answer]
        kp, na = len(ex.tokens), len(ex.answer)
        targets = [IGNORE_INDEX] * len(ids)
        targets[kp - 1 : kp - 1 + na] = ids[kp : kp + na]
        return ids, targets

    def _pad(self, rows: list[tuple[list[int], list[int]]], device: torch.device) -> tuple[Tensor, Tensor]:
        idx, targets = pad_rows(rows, self.ids[PAD], IGNORE_INDEX)
        return idx.to(device), targets.to(device)

    def tensors(self, examples: Sequence[Any], device: torch.device) -> dict[str, Tensor]:
        """``idx`` ``(B, T)``, ``targets`` ``(B, T)`` (-100 except at the answer-predicting positions) and the
        adjacency ``M`` ``(B, T, T)`` of ``examples`` (right-padded)."""
        idx, targets = self._pad([self.sequence(ex) for ex in examples], device)
        return {"idx": idx, "targets": targets, "M": answer_adjacency(examples, idx.shape[1]).to(device)}

    def make_batch(self, rows: Any, device: torch.device) -> Batch:
        rows = [int(i) for i in np.asarray(rows)]
        exs = [self.examples["train"][i] for i in rows]
        inputs = self.tensors(exs, device)
        if self.options.objective == "leaf":
            cfs = [cf for i in rows for cf in self._leaf().counterfactuals[i]]
            if cfs:
                inputs["cf_idx"], inputs["cf_targets"] = self._pad(cfs, device)
        return Batch(inputs=inputs, n_targets=sum(len(ex.answer) for ex in exs))

    # ------------------------------------------------------------------------------------- checkpoints
    def required_checkpoints(self) -> dict[str, str]:
        """``teacher`` for ``kd``/``leaf``; ``student`` for ``leaf`` and for ``kd`` when given."""
        need: dict[str, str] = {}
        o = self.options
        if o.objective in ("kd", "leaf") and o.teacher.checkpoint is not None:
            need["teacher"] = resolve_checkpoint_path(o.teacher.checkpoint, self.seed)
        if o.objective in ("kd", "leaf") and o.student.checkpoint is not None:
            need["student"] = resolve_checkpoint_path(o.student.checkpoint, self.seed)
        return need

    def attach_checkpoints(self, loaded: dict[str, Any]) -> None:
        """Take the loaded teacher (and student): both must be runs of this task with its vocabulary."""
        for role, trained in loaded.items():
            other = trained.task
            if getattr(other, "name", None) != self.name or list(getattr(other, "vocab", ())) != list(self.vocab):
                raise ValueError(f"options.{role}.checkpoint={trained.path} is a run of task "
                                 f"{getattr(other, 'name', '?')!r} with its own vocabulary; the {role} must be a "
                                 f"{self.name!r} run (same tokens)")
            self._sources[role] = {"checkpoint": str(trained.path), "weights_sha256": _weights_sha256(trained.path)}
        if "teacher" in loaded:
            self.teacher = loaded["teacher"].model.eval().requires_grad_(False)
        if "student" in loaded:
            self._student = loaded["student"].model.eval().requires_grad_(False)
        if self.options.objective == "leaf":
            self._leaf()  # stage 1 before training, with the models as loaded

    def _leaf(self) -> LeafData:
        """Stage 1 over the training examples (once; on the CPU in float32, with a fixed random seed and the global
        random state restored afterwards; the teacher is put back on its device and dtype)."""
        if self.leaf_data is None:
            if self.teacher is None or self._student is None:
                raise ValueError("objective='leaf' needs the teacher and the detection student loaded "
                                 "(attach_checkpoints); the trainer does this from options.*.checkpoint")
            def tensors(exs: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
                x = self.tensors(exs, torch.device("cpu"))
                score = torch.zeros_like(x["idx"], dtype=torch.bool)
                for b, ex in enumerate(exs):
                    a, e = self.scored_span(ex)
                    score[b, a:e] = True
                return x["idx"], x["targets"], score
            ref = next(self.teacher.parameters())
            device, dtype = ref.device, ref.dtype  # (``ref`` itself moves with the module)
            teacher = self.teacher.to(device="cpu", dtype=torch.float32)
            student = self._student.to(device="cpu", dtype=torch.float32)
            with torch.random.fork_rng(devices=[]):  # the same marks on every resume, even in train mode
                torch.manual_seed(0)
                self.leaf_data = detect_training_confounders(teacher, student, self.examples["train"], tensors,
                                                             self.options.leaf, pad_id=self.ids[PAD],
                                                             ignore_index=IGNORE_INDEX)
            self.teacher.to(device=device, dtype=dtype)
        return self.leaf_data

    # ------------------------------------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        model = self.model_cfg.with_vocab_size(len(self.vocab)).build()
        if self._student is not None and self.options.student.init:
            try:
                model.load_state_dict(self._student.state_dict())
            except RuntimeError as e:
                raise ValueError(f"options.student.checkpoint holds another model than this run's model config "
                                 f"({str(e).splitlines()[0]}); give the same model settings or "
                                 "options.student.init=false") from None
        self._student = None  # stage 1 is done and the weights are copied: the detection student is not kept
        return model

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        x = batch.inputs
        objective = self.options.objective
        if objective in ("kd", "leaf"):
            return self._kd_loss(model, x)
        if objective == "plain":
            logits = model(x["idx"])
            return Loss(main=F.cross_entropy(logits.float().flatten(0, 1), x["targets"].flatten(),
                                             ignore_index=IGNORE_INDEX))
        from attnlab.layers.capture import capture_attention

        with capture_attention(model, keep_graph=True) as captured:
            logits = model(x["idx"])
        ce = F.cross_entropy(logits.float().flatten(0, 1), x["targets"].flatten(), ignore_index=IGNORE_INDEX)
        step, total = self.step_progress
        epoch = step * self._global_batch // len(self.examples["train"])  # 0-based epochs of training examples
        res = cat_loss(captured.all(), x["M"], self.options.cat, epoch=epoch, progress=min(1.0, step / max(total, 1)))
        return Loss(main=ce, aux={"cat": res.loss})

    def _kd_loss(self, model: nn.Module, x: dict[str, Tensor]) -> Loss:
        """KD on the original rows (``main``) plus the weighted KD on their counterfactuals (``kd_cf``, LeaF)."""
        if self.teacher is None:
            raise ValueError(f"objective={self.options.objective!r} needs the teacher loaded (attach_checkpoints)")
        o = self.options.leaf
        kd = dict(temperature=o.temperature, ignore_index=IGNORE_INDEX)

        def term(idx: Tensor, targets: Tensor) -> Tensor:
            with torch.no_grad():
                t_logits = self.teacher(idx).float()  # (B, T, V)
            return token_kd_loss(t_logits, model(idx).float(), targets, **kd)

        main = term(x["idx"], x["targets"])
        if self.options.objective == "kd" or "cf_idx" not in x:
            return Loss(main=main, aux={"kd_cf": torch.zeros_like(main)} if self.options.objective == "leaf" else {})
        cf = term(x["cf_idx"], x["cf_targets"])  # teacher and student read the same pruned rows (oracle B7)
        if o.mix == "weighted":
            return Loss(main=main, aux={"kd_cf": o.lam * cf})
        n_o, n_c = x["idx"].shape[0], x["cf_idx"].shape[0]
        return Loss(main=main * (n_o / (n_o + n_c)), aux={"kd_cf": cf * (n_c / (n_o + n_c))})

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _score(self, model: nn.Module, examples: list[Any], ctx: EvalContext,
               masses: bool = False) -> tuple[float, float, int, float, float]:
        """(sum of answer NLL, correct count, n, cause mass sum, spurious mass sum) over ``examples``."""
        nll = correct = cause = spur = 0.0
        for i, lo in enumerate(range(0, len(examples), ctx.batch_size)):
            if i % ctx.world_size != ctx.rank:
                continue
            exs = examples[lo : lo + ctx.batch_size]
            x = self.tensors(exs, ctx.device)
            if masses:
                from attnlab.layers.capture import capture_attention

                with capture_attention(model) as captured:
                    logits = model(x["idx"])
                abar = averaged_attention(p for _, p in captured.all())  # (B, T, T)
            else:
                logits = model(x["idx"])
            mask = x["targets"] != IGNORE_INDEX  # (B, T)
            nll += float(F.cross_entropy(logits.double()[mask], x["targets"][mask], reduction="sum"))
            hit = (logits.argmax(-1) == x["targets"]) | ~mask  # (B, T)
            correct += float(hit.all(dim=1).sum())
            if masses:
                for b, ex in enumerate(exs):
                    kp, na = len(ex.tokens), len(ex.answer)
                    rows = abar[b, kp - 1 : kp - 1 + na]  # (na, T): the answer-predicting rows
                    cause += float(sum(rows[:, a:e].sum() for a, e in ex.causes)) / na
                    spur += float(sum(rows[:, a:e].sum() for a, e in ex.spurious)) / na
        out = torch.tensor([nll, correct, cause, spur], dtype=torch.float64, device=ctx.device)
        ctx.all_reduce_sum(out)
        return float(out[0]), float(out[1]), len(examples), float(out[2]), float(out[3])

    def evaluate(self, model: nn.Module, split: str, ctx: EvalContext) -> EvalResult:
        """``val``: IID and OOD; ``test``: IID, OOD and flipped (module docstring)."""
        if split not in self.splits:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        was_training = model.training
        model.eval()
        try:
            nll, correct, n, cause, spur = self._score(model, self.examples["iid"], ctx, masses=True)
            metrics = {"acc_iid": 100 * correct / n, "cause_mass": cause / n, "spurious_mass": spur / n}
            for s in ("ood", "flipped") if split == "test" else ("ood",):
                _, c, m, _, _ = self._score(model, self.examples[s], ctx)
                metrics[f"acc_{s}"] = 100 * c / m
            if split == "test":
                metrics["gap"] = metrics["acc_iid"] - metrics["acc_flipped"]
            top = collections.Counter(ex.label for ex in self.examples["train"]).most_common(1)[0][0]
            metrics["majority"] = 100 * sum(ex.label == top for ex in self.examples["iid"]) / n
            if self.leaf_data is not None:
                metrics.update(self.leaf_data.stats)
        finally:
            model.train(was_training)
        n_answer = sum(len(ex.answer) for ex in self.examples["iid"])
        return EvalResult(split=split, loss=nll / n_answer, tokens=n_answer, metrics=metrics)

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        return {"vocab": list(self.vocab), **({"sources": self._sources} if self._sources else {})}

    def resume_diffs(self, saved: dict[str, Any]) -> list[str]:
        """A resumed run must distil from the same teacher and student weights as before."""
        before, now = saved.get("sources", {}), self._sources
        return [f"options.{role}.checkpoint: checkpoint {before.get(role)} vs now {now.get(role)}"
                for role in sorted(set(before) | set(now)) if before.get(role) != now.get(role)]

    @classmethod
    def from_state(cls, model: LMConfig, data: Any, state: dict[str, Any], *, seed: int = 0,
                   options: PromptAnswerOptions | None = None) -> "PromptAnswerTask":
        task = cls(model, data, seed=seed, options=options)
        if state.get("vocab", list(task.vocab)) != list(task.vocab):
            raise ValueError(f"the checkpoint's {cls.name} vocabulary differs from this attnlab's")
        return task

    def describe_objective(self) -> str:
        o = self.options
        if o.objective == "plain":
            return "plain (answer-only loss)"
        if o.objective == "cat":
            return f"CAT alpha={o.cat.alpha}, decay {o.cat.decay}"
        if o.objective == "kd":
            return f"KD from {o.teacher.checkpoint}"
        return (f"LeaF: teacher {o.teacher.checkpoint}, detection student {o.student.checkpoint}, p={o.leaf.p}, "
                f"lambda={o.leaf.lam}, {o.leaf.mix}")
