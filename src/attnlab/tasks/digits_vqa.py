"""Two-image digit questions: a small, real multimodal task for the future-aware masks (spec future_mask.md E4).

The data are :mod:`attnlab.data.digits` (scikit-learn's 8x8 handwritten digits; ``pip install attnlab[digits]``):
``<bos> image_a <and> image_b <kind?>`` -> one answer token. The model is a :class:`~attnlab.models.vlm.PatchVLM`
(patch embedding in front of attnlab's LM). The loss is the cross-entropy of the answer token, predicted at the
last position (a text row, so the masks change it only through what the visual rows computed).

``options.train_mask`` (``"c"``, ``"f"``, ``"v2v"``, ``"v2t"``) is the mask the model trains under; it is the key
``attnlab compare`` varies. Every evaluation scores the same trained model under **every** mask, so a run trained
causally gives the paper's inference-only protocol and the other runs the "trained with the mask" one. Metrics
(percent): ``acc`` (under the training mask), ``acc_c``, ``acc_f``, ``acc_v2v``, ``acc_v2t`` (under each mask),
and ``acc_same``, ``acc_larger``, ``acc_sum`` (each question kind, under the training mask). The loss reported is
under the training mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import check_float, check_int
from attnlab.data.digits import (
    QUESTION_KINDS,
    DigitQuestions,
    QuestionKind,
    answers,
    draw_questions,
    layout,
    load_digit_images,
    vocabulary,
)
from attnlab.masks.vlm import FUTURE_KINDS, FutureKind
from attnlab.models.vlm import PatchVLMConfig
from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task

__all__ = ["DigitsDataConfig", "DigitsOptions", "DigitsVQA"]


@dataclass(kw_only=True)
class DigitsDataConfig:
    """Which images and questions.

    Attributes:
        train_fraction, val_fraction: the image split (fixed permutation; the rest is ``test``).
        kinds: the question kinds asked (``"same"``, ``"larger"``, ``"sum"``), drawn uniformly.
        eval_questions: questions per evaluation split (a fixed set drawn from ``eval_seed``).
        eval_seed: the seed of the evaluation sets, the same for every run.
    """

    train_fraction: float = 0.6
    val_fraction: float = 0.2
    kinds: list[str] = field(default_factory=lambda: list(QUESTION_KINDS))
    eval_questions: int = 3000
    eval_seed: int = 0

    def __post_init__(self) -> None:
        check_float("train_fraction", self.train_fraction, low=0.0, high=1.0, low_inclusive=False)
        check_float("val_fraction", self.val_fraction, low=0.0, high=1.0, low_inclusive=False)
        if self.train_fraction + self.val_fraction >= 1.0:
            raise ValueError(f"train_fraction={self.train_fraction} + val_fraction={self.val_fraction} must be below "
                             "1 (the rest is the test split)")
        if isinstance(self.kinds, tuple):
            self.kinds = list(self.kinds)
        if (not isinstance(self.kinds, list) or not self.kinds or len(set(self.kinds)) != len(self.kinds)
                or any(k not in QUESTION_KINDS for k in self.kinds)):
            raise ValueError(f"kinds must be a non-empty list of distinct question kinds from "
                             f"{', '.join(QUESTION_KINDS)}, got {self.kinds!r}")
        check_int("eval_questions", self.eval_questions, 1)
        check_int("eval_seed", self.eval_seed, 0)


@dataclass(kw_only=True)
class DigitsOptions:
    """Attributes:
        train_mask: the future-aware mask the model trains under (``"c"``: causal; spec future_mask.md §2.1)."""

    train_mask: FutureKind = "c"

    def __post_init__(self) -> None:
        if self.train_mask not in FUTURE_KINDS:
            raise ValueError(f"train_mask must be one of {', '.join(FUTURE_KINDS)}, got {self.train_mask!r}")


class DigitsVQA(Task):
    """Two-image digit questions (see the module docstring)."""

    name = "digits-vqa"
    model_config = PatchVLMConfig
    data_config = DigitsDataConfig
    options_config = DigitsOptions
    compare_key = "options.train_mask"
    variant_label = "training mask"
    default_variants = list(FUTURE_KINDS)
    primary_metric = ("acc", "max")
    metric_format = ".2f"
    loss_label = "cross-entropy of the answer (nats)"
    data_argument = "images"

    def __init__(self, model: PatchVLMConfig, data: DigitsDataConfig, *, seed: int,
                 options: DigitsOptions | None = None, images: Any = None, progress: bool = False) -> None:
        super().__init__(model, data, seed=seed, progress=progress)
        self.options = options if options is not None else DigitsOptions()
        self.vocab = vocabulary()
        is_visual, _ = layout(model.patch_size)
        self.is_visual = torch.from_numpy(is_visual)
        self._images = images
        self._eval: dict[str, DigitQuestions] = {}

    @classmethod
    def valid_variants(cls) -> list[str]:
        return list(FUTURE_KINDS)

    @classmethod
    def check_config(cls, model: PatchVLMConfig, data: DigitsDataConfig, options: Any) -> None:
        """The model must read two 8x8 images, and the layout must fit its context."""
        if model.image_size != 8 or model.n_images != 2:
            raise ValueError(f"model.image_size must be 8 and model.n_images 2 for the digits task, got "
                             f"{model.image_size} and {model.n_images}")
        L = int(layout(model.patch_size)[0].shape[0])
        if model.lm.context_len < L:
            raise ValueError(f"model.lm.context_len={model.lm.context_len} is shorter than the task's layout of {L} "
                             f"positions (patch_size={model.patch_size})")

    # ------------------------------------------------------------------------------------------------- data
    @property
    def images(self) -> Any:
        """The image splits (:func:`attnlab.data.digits.load_digit_images`), loaded on first use."""
        if self._images is None:
            self._images = load_digit_images(train_fraction=self.data_cfg.train_fraction,
                                             val_fraction=self.data_cfg.val_fraction)
        return self._images

    def shared_data(self) -> Any:
        return self.images

    @property
    def splits(self) -> tuple[str, ...]:
        return ("val", "test")

    def global_batch(self, step: int, batch_size: int) -> list[tuple[int, int, int]]:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step, 0xD161])))
        q = draw_questions(self.images["train"].labels, batch_size, rng, self.data_cfg.kinds)  # type: ignore[arg-type]
        return list(zip(q.a.tolist(), q.b.tolist(), q.kind.tolist()))

    def count_targets(self, rows: Any) -> int:
        return len(rows)

    def questions(self, split: str) -> DigitQuestions:
        """The fixed evaluation questions of ``split`` (drawn from ``data.eval_seed``)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split not in self._eval:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
                [self.data_cfg.eval_seed, ("val", "test").index(split), 0xE7A1])))
            self._eval[split] = draw_questions(self.images[split].labels, self.data_cfg.eval_questions, rng,
                                               self.data_cfg.kinds)  # type: ignore[arg-type]
        return self._eval[split]

    def tensors(self, split: str, q: DigitQuestions, device: torch.device) -> dict[str, Tensor]:
        """``ids (B, L)``, ``pixels (B, 2, 8, 8)``, ``answer (B,)`` and ``kind (B,)`` of questions ``q``."""
        imgs = self.images[split]
        B, L = len(q), int(self.is_visual.shape[0])
        ids = np.full((B, L), self.vocab.id("<img>"), dtype=np.int64)
        ids[:, 0] = self.vocab.id("<bos>")
        ids[:, int(np.flatnonzero(~self.is_visual.numpy())[1])] = self.vocab.id("<and>")
        ids[:, -1] = [self.vocab.id(f"<{QUESTION_KINDS[k]}?>") for k in q.kind]
        pixels = np.stack([imgs.images[q.a], imgs.images[q.b]], axis=1)  # (B, 2, 8, 8)
        out = {"ids": ids, "pixels": pixels, "answer": answers(imgs.labels, q, self.vocab), "kind": q.kind}
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}

    def make_batch(self, rows: Any, device: torch.device) -> Batch:
        r = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        q = DigitQuestions(a=r[:, 0], b=r[:, 1], kind=r[:, 2])
        return Batch(inputs=self.tensors("train", q, device), n_targets=len(q))

    # ------------------------------------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        return self.model_cfg.build(vocab_size=self.vocab.size, is_visual=self.is_visual)

    @staticmethod
    def answer_logits(model: nn.Module, inputs: dict[str, Tensor], mask: FutureKind) -> Tensor:
        """The logits ``(B, V)`` of the answer, predicted at the last position under ``mask``."""
        return model(inputs["ids"], inputs["pixels"], mask=mask)[:, -1].float()

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        logits = self.answer_logits(model, batch.inputs, self.options.train_mask)
        return Loss(main=F.cross_entropy(logits, batch.inputs["answer"]))

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, ctx: EvalContext) -> EvalResult:
        """Loss under the training mask and accuracy under every mask over the split's fixed questions."""
        q = self.questions(split)
        n, nk = len(q), len(QUESTION_KINDS)
        was_training = model.training
        model.eval()
        correct = torch.zeros(len(FUTURE_KINDS), nk, dtype=torch.float64, device=ctx.device)  # per mask, kind
        count = torch.zeros(nk, dtype=torch.float64, device=ctx.device)
        nll = torch.zeros((), dtype=torch.float64, device=ctx.device)
        try:
            for i, lo in enumerate(range(0, n, ctx.batch_size)):
                if i % ctx.world_size != ctx.rank:
                    continue
                t = self.tensors(split, q.take(np.arange(lo, min(lo + ctx.batch_size, n))), ctx.device)
                count += torch.bincount(t["kind"], minlength=nk).double()
                for m, mask in enumerate(FUTURE_KINDS):
                    with ctx.autocast():
                        logits = self.answer_logits(model, t, mask)  # type: ignore[arg-type]
                    hit = (logits.argmax(-1) == t["answer"]).double()
                    correct[m] += torch.zeros(nk, dtype=torch.float64, device=ctx.device).index_add_(0, t["kind"], hit)
                    if mask == self.options.train_mask:
                        nll += F.cross_entropy(logits.double(), t["answer"], reduction="sum")
        finally:
            model.train(was_training)
        ctx.all_reduce_sum(correct, count, nll)
        train_m = FUTURE_KINDS.index(self.options.train_mask)
        metrics = {f"acc_{mask}": 100.0 * float(correct[m].sum()) / n for m, mask in enumerate(FUTURE_KINDS)}
        metrics = {"acc": metrics[f"acc_{self.options.train_mask}"], **metrics}
        for k, kind in enumerate(QUESTION_KINDS):
            if count[k] > 0:
                metrics[f"acc_{kind}"] = 100.0 * float(correct[train_m, k] / count[k])
        return EvalResult(split=split, loss=float(nll) / n, tokens=n, metrics=metrics)

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        return {"vocab": list(self.vocab.tokens)}

    @classmethod
    def from_state(cls, model: PatchVLMConfig, data: DigitsDataConfig, state: dict[str, Any], *, seed: int = 0,
                   options: DigitsOptions | None = None) -> "DigitsVQA":
        """The task of a checkpoint (its vocabulary must be this version's)."""
        task = cls(model, data, seed=seed, options=options)
        if state.get("vocab", list(task.vocab.tokens)) != list(task.vocab.tokens):
            raise ValueError("the checkpoint's digits vocabulary differs from this attnlab's; it was written by "
                             "another version of the task")
        return task

    def describe(self) -> str:
        d = self.data_cfg
        kinds: list[QuestionKind] = d.kinds  # type: ignore[assignment]
        return (f"two-image digit questions ({', '.join(kinds)}), {int(self.is_visual.sum())} visual tokens, "
                f"trained under mask {self.options.train_mask!r}")
