"""The Spurious Token Game as a task (``--task stg``), with CAT's re-attention term as an option (spec
``causal_training.md`` A.5, A.7, A.9).

Data: :mod:`attnlab.data.stg` (generated, seeded): ``data.n_train`` IID training examples, and ``data.n_test``
examples of each evaluation split: IID (held out, same rules), OOD (independent values) and flipped (the spurious
correlation reversed). Tokens: the fixed word-level vocabulary of :func:`attnlab.data.stg.stg_vocabulary` plus a
pad token; each sequence is the prompt then the two answer words. Model: attnlab's LM trained from scratch. Loss:
the cross-entropy of the two answer tokens only (spec A.9's answer-only loss).

CAT (``options.objective = "cat"`` with ``options.cat``, a :class:`attnlab.methods.CATConfig`): the attention probabilities
of the supervised layers are captured with their graph (:func:`attnlab.layers.capture.capture_attention`) and the
re-attention term (:func:`attnlab.methods.cat_loss`) over the causal adjacency is added as the auxiliary term
``cat``. The adjacency follows spec A.4 with the answer as the effect and the three causal ``Name : value`` groups as
its causes: the rows that predict an answer token (the positions just before each) attend to the cause columns.
The decay's epoch is ``step * batch_size // n_train`` and its progress ``step / steps`` (the trainer's
:attr:`~attnlab.tasks.base.Task.step_progress`).

Evaluation: ``val`` scores the IID held-out and the OOD splits (the loss is the IID one); ``test`` all three. Metrics (percent): ``acc_iid``,
``acc_ood``, ``acc_flipped`` (exact match of both answer words by greedy decoding, which for a two-token answer is
argmax at both positions), ``gap`` (IID - flipped), ``majority`` (always answering the training set's most frequent
label, on the IID split), and the mean attention of the answer rows, averaged over layers and heads, on the cause
groups and on the spurious groups (``cause_mass``, ``spurious_mass``, IID split).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import check_int
from attnlab.data.stg import STGExample, stg_split, stg_vocabulary
from attnlab.methods.cat import CATConfig, averaged_attention, cat_loss
from attnlab.models.common import IGNORE_INDEX
from attnlab.models.lm import LMConfig
from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task
from attnlab.tasks.forecast import epoch_order_rows

__all__ = ["STGDataConfig", "STGOptions", "SpuriousTokenGame", "stg_adjacency", "VARIANTS"]

PAD = "<pad>"


@dataclass(kw_only=True)
class STGDataConfig:
    """Attributes:
        n_train: IID training examples (the release: 1,600).
        n_test: examples of each evaluation split (the release: 400).
        seed: the generator's seed (the release: 42); the evaluation splits use ``seed + 1``.
    """

    n_train: int = 1600
    n_test: int = 400
    seed: int = 42

    def __post_init__(self) -> None:
        check_int("n_train", self.n_train, 1)
        check_int("n_test", self.n_test, 1)
        check_int("seed", self.seed, 0)


@dataclass(kw_only=True)
class STGOptions:
    """Attributes:
        objective: ``"plain"`` (the answer-only loss) or ``"cat"`` (plus CAT's re-attention term).
        cat: the CAT term's options (used with ``objective="cat"``), e.g. ``--set options.cat.alpha=2``.
    """

    objective: Literal["plain", "cat"] = "plain"
    cat: CATConfig = field(default_factory=CATConfig)

    def __post_init__(self) -> None:
        if self.objective not in ("plain", "cat"):
            raise ValueError(f"objective must be 'plain' or 'cat', got {self.objective!r}")
        if not isinstance(self.cat, CATConfig):
            raise ValueError(f"cat must be a CATConfig, got {type(self.cat).__name__}")


#: the variants ``attnlab compare --task stg`` trains: plain training and CAT with each decay schedule
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"options.objective": "plain"},
    "cat-epoch": {"options.objective": "cat", "options.cat.decay": "epoch"},
    "cat-progress": {"options.objective": "cat", "options.cat.decay": "progress"},
    "cat-none": {"options.objective": "cat", "options.cat.decay": "none"},
}


def stg_adjacency(examples: list[STGExample], T: int) -> Tensor:
    """The causal adjacency ``(B, T, T)`` bool of spec A.4 for the sequences ``prompt + answer``: the rows
    ``[kp - 1, kp + 2 - 1)`` that predict the two answer tokens (``kp`` = prompt length) mark the cause columns."""
    M = torch.zeros(len(examples), T, T, dtype=torch.bool)
    for b, ex in enumerate(examples):
        kp = len(ex.tokens)
        for a, e in ex.causes:
            M[b, kp - 1 : kp - 1 + len(ex.answer), a:e] = True
    return M


class SpuriousTokenGame(Task):
    """The STG task (see the module docstring)."""

    name = "stg"
    model_config = LMConfig
    data_config = STGDataConfig
    options_config = STGOptions
    compare_key = "options.objective"
    variant_label = "objective"
    default_variants = list(VARIANTS)
    primary_metric = ("acc_ood", "max")
    metric_format = ".2f"
    loss_label = "cross-entropy of the answer tokens (nats)"
    data_argument = "examples"

    def __init__(self, model: LMConfig, data: STGDataConfig, *, seed: int, options: STGOptions | None = None,
                 examples: Any = None, progress: bool = False) -> None:
        super().__init__(model, data, seed=seed, progress=progress)
        self.options = options if options is not None else STGOptions()
        self.vocab = (PAD, *stg_vocabulary())
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self._examples = examples
        self._global_batch = 0

    @classmethod
    def valid_variants(cls) -> list[str]:
        return list(VARIANTS)

    @classmethod
    def variant_overrides(cls, variant: str, options: dict[str, Any]) -> dict[str, Any]:
        """``plain`` or ``cat-<decay>`` (:data:`VARIANTS`), plus the comparison's own options for it."""
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not an STG objective; variants: {', '.join(VARIANTS)}")
        return {**VARIANTS[variant], **options}

    @classmethod
    def check_config(cls, model: LMConfig, data: STGDataConfig, options: Any) -> None:
        """The model's context must hold a whole sequence (45 tokens: 11 request words, 8 x 3 for the statistics,
        7 commas, ``Answer:``, 2 answer words)."""
        if model.context_len < 45:
            raise ValueError(f"model.context_len={model.context_len} is shorter than an STG sequence (45 tokens)")

    # ------------------------------------------------------------------------------------------------- data
    @property
    def examples(self) -> dict[str, list[STGExample]]:
        """``train`` and the evaluation splits ``iid``, ``ood``, ``flipped``, generated on first use."""
        if self._examples is None:
            d = self.data_cfg
            self._examples = {"train": stg_split("iid", d.n_train, d.seed),
                              **{s: stg_split(s, d.n_test, d.seed + 1) for s in ("iid", "ood", "flipped")}}  # type: ignore[arg-type]
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
        return 2 * len(rows)

    def tensors(self, examples: list[STGExample], device: torch.device) -> dict[str, Tensor]:
        """``idx`` ``(B, T)``, ``targets`` ``(B, T)`` (-100 except at the two answer-predicting positions) and the
        adjacency ``M`` ``(B, T, T)`` of ``examples`` (right-padded)."""
        seqs = [[self.ids[t] for t in ex.tokens + ex.answer] for ex in examples]
        T = max(len(s) for s in seqs)
        idx = torch.zeros(len(seqs), T, dtype=torch.long)
        targets = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
        for b, (s, ex) in enumerate(zip(seqs, examples)):
            idx[b, : len(s)] = torch.tensor(s)
            kp = len(ex.tokens)
            targets[b, kp - 1 : kp + 1] = torch.tensor(s[kp : kp + 2])
        return {"idx": idx.to(device), "targets": targets.to(device), "M": stg_adjacency(examples, T).to(device)}

    def make_batch(self, rows: Any, device: torch.device) -> Batch:
        exs = [self.examples["train"][int(i)] for i in np.asarray(rows)]
        return Batch(inputs=self.tensors(exs, device), n_targets=2 * len(exs))

    # ------------------------------------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        return self.model_cfg.with_vocab_size(len(self.vocab)).build()

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        x = batch.inputs
        cat = self.options.cat
        if self.options.objective == "plain":
            logits = model(x["idx"])
            return Loss(main=F.cross_entropy(logits.float().flatten(0, 1), x["targets"].flatten(),
                                             ignore_index=IGNORE_INDEX))
        from attnlab.layers.capture import capture_attention

        with capture_attention(model, keep_graph=True) as captured:
            logits = model(x["idx"])
        ce = F.cross_entropy(logits.float().flatten(0, 1), x["targets"].flatten(), ignore_index=IGNORE_INDEX)
        step, total = self.step_progress
        epoch = step * self._global_batch // len(self.examples["train"])  # 0-based epochs of training examples
        res = cat_loss(captured.all(), x["M"], cat, epoch=epoch, progress=min(1.0, step / max(total, 1)))
        return Loss(main=ce, aux={"cat": res.loss})

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _score(self, model: nn.Module, examples: list[STGExample], ctx: EvalContext,
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
                    rows = abar[b, len(ex.tokens) - 1 : len(ex.tokens) + 1]  # (2, T): the answer-predicting rows
                    cause += float(sum(rows[:, a:e].sum() for a, e in ex.causes)) / 2
                    spur += float(sum(rows[:, a:e].sum() for a, e in ex.spurious)) / 2
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
        finally:
            model.train(was_training)
        return EvalResult(split=split, loss=nll / (2 * n), tokens=2 * n, metrics=metrics)

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        return {"vocab": list(self.vocab)}

    @classmethod
    def from_state(cls, model: LMConfig, data: STGDataConfig, state: dict[str, Any], *, seed: int = 0,
                   options: STGOptions | None = None) -> "SpuriousTokenGame":
        task = cls(model, data, seed=seed, options=options)
        if state.get("vocab", list(task.vocab)) != list(task.vocab):
            raise ValueError("the checkpoint's STG vocabulary differs from this attnlab's")
        return task

    def describe(self) -> str:
        d = self.data_cfg
        how = "plain (answer-only loss)" if self.options.objective == "plain" else \
            f"CAT alpha={self.options.cat.alpha}, decay {self.options.cat.decay}"
        return f"Spurious Token Game: {d.n_train:,} IID training examples, {d.n_test} per test split; {how}"
