"""Arithmetic with distractors as a task (``--task arith-distractors``; spec ``causal_training.md`` B.8), with the
objectives of :mod:`attnlab.tasks.prompt_answer` (plain, CAT, KD, LeaF).

Data: :mod:`attnlab.data.arith` (generated, seeded): ``data.n_train`` training problems whose rules are
``data.train_split`` (``"iid"``: every problem has two distractors and the year's last digit equals the answer's
units digit with probability ``data.correlation``, the student's distractor-heavy data; ``"ood"``: the digit is
independent; ``"clean+ood"``: half without distractors, half independent, the teacher's data of spec B.8), and
``data.n_test`` problems of each evaluation split: IID, OOD (independent digit) and flipped (the digit never the
units digit). The answer is two digit tokens (tens, units).

The causes are the question's two numbers with their verbs; LeaF scores the whole problem before ``Answer:``; the
planted spurious tokens are the two distractor sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from attnlab._validation import check_float, check_int
from attnlab.data.arith import ArithExample, arith_split, arith_vocabulary
from attnlab.tasks.prompt_answer import PromptAnswerOptions, PromptAnswerTask

__all__ = ["ArithDataConfig", "ArithOptions", "ArithmeticDistractors"]

#: the options of the task (``options.objective``, ``options.teacher.checkpoint``, ``options.leaf``, ...)
ArithOptions = PromptAnswerOptions
TRAIN_SPLITS = ("iid", "ood", "clean+ood")


@dataclass(kw_only=True)
class ArithDataConfig:
    """Attributes:
        n_train: training problems.
        n_test: problems of each evaluation split.
        seed: the generator's seed; the evaluation splits use ``seed + 1``.
        correlation: in ``"iid"`` problems, the probability that the year's last digit is the answer's units digit
            (in ``[0, 1]``).
        train_split: ``"iid"`` (the student's data), ``"ood"`` or ``"clean+ood"`` (the teacher's data).
    """

    n_train: int = 4000
    n_test: int = 400
    seed: int = 7
    correlation: float = 0.9
    train_split: Literal["iid", "ood", "clean+ood"] = "iid"

    def __post_init__(self) -> None:
        check_int("n_train", self.n_train, 2)
        check_int("n_test", self.n_test, 1)
        check_int("seed", self.seed, 0)
        check_float("correlation", self.correlation, low=0.0, high=1.0, high_inclusive=True)
        if self.train_split not in TRAIN_SPLITS:
            raise ValueError(f"train_split must be one of {list(TRAIN_SPLITS)}, got {self.train_split!r}")


class ArithmeticDistractors(PromptAnswerTask):
    """The arithmetic-with-distractors task (module docstring)."""

    name = "arith-distractors"
    data_config = ArithDataConfig
    #: the longest problem: 4 sentences (5 + 5 + 9 + 6 tokens), the question (9) and the answer (2)
    min_context = 36

    @classmethod
    def vocabulary(cls) -> tuple[str, ...]:
        return arith_vocabulary()

    def generate_examples(self) -> dict[str, list[Any]]:
        d = self.data_cfg
        c = d.correlation
        if d.train_split == "clean+ood":
            half = d.n_train // 2
            train = arith_split("clean", half, d.seed) + arith_split("ood", d.n_train - half, d.seed)
        else:
            train = arith_split(d.train_split, d.n_train, d.seed, correlation=c)  # type: ignore[arg-type]
        return {"train": train, **{s: arith_split(s, d.n_test, d.seed + 1, correlation=c)  # type: ignore[arg-type]
                                   for s in ("iid", "ood", "flipped")}}

    def scored_span(self, ex: ArithExample) -> tuple[int, int]:
        """The whole problem before ``Answer:``."""
        return 0, len(ex.tokens) - 1

    def describe(self) -> str:
        d = self.data_cfg
        return (f"Arithmetic with distractors: {d.n_train:,} {d.train_split} training problems (correlation "
                f"{d.correlation}), {d.n_test} per test split; {self.describe_objective()}")
