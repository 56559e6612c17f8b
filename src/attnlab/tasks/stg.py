"""The Spurious Token Game as a task (``--task stg``; spec ``causal_training.md`` A.7, A.9, B.8), with CAT's
re-attention term, plain KD and LeaF as objectives (:mod:`attnlab.tasks.prompt_answer`).

Data: :mod:`attnlab.data.stg` (generated, seeded): ``data.n_train`` training examples (IID by default;
``data.train_split = "ood"`` trains on independent values, the decorrelated data of spec B.8's teacher), and
``data.n_test`` examples of each evaluation split: IID (held out, same rules), OOD (independent values) and
flipped (the spurious correlation reversed). Tokens: the fixed word-level vocabulary of
:func:`attnlab.data.stg.stg_vocabulary` plus a pad token; each sequence is the prompt then the two answer words.

The adjacency for CAT follows spec A.4 with the answer as the effect and the three causal ``Name : value`` groups
as its causes. LeaF scores the statistics (the prompt after the fixed request sentence, before ``Answer:``); the
planted spurious tokens are the three spurious ``Name : value`` groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from attnlab._validation import check_int
from attnlab.data.stg import REQUEST, STGExample, stg_split, stg_vocabulary
from attnlab.tasks.prompt_answer import (
    DEFAULT_VARIANTS,
    VARIANTS,
    PromptAnswerOptions,
    PromptAnswerTask,
    answer_adjacency,
)

__all__ = ["STGDataConfig", "STGOptions", "SpuriousTokenGame", "stg_adjacency", "VARIANTS", "DEFAULT_VARIANTS"]

#: the options of the STG task (``options.objective``, ``options.cat``, ``options.teacher``, ...)
STGOptions = PromptAnswerOptions


@dataclass(kw_only=True)
class STGDataConfig:
    """Attributes:
        n_train: training examples (the release: 1,600).
        n_test: examples of each evaluation split (the release: 400).
        seed: the generator's seed (the release: 42); the evaluation splits use ``seed + 1``.
        train_split: the rules of the training examples: ``"iid"`` (the spurious correlation, as released) or
            ``"ood"`` (all values independent: the decorrelated data a LeaF teacher learns from, spec B.8).
    """

    n_train: int = 1600
    n_test: int = 400
    seed: int = 42
    train_split: Literal["iid", "ood"] = "iid"

    def __post_init__(self) -> None:
        check_int("n_train", self.n_train, 1)
        check_int("n_test", self.n_test, 1)
        check_int("seed", self.seed, 0)
        if self.train_split not in ("iid", "ood"):
            raise ValueError(f"train_split must be 'iid' or 'ood', got {self.train_split!r}")


def stg_adjacency(examples: list[STGExample], T: int) -> Tensor:
    """The causal adjacency ``(B, T, T)`` bool of spec A.4 (:func:`attnlab.tasks.prompt_answer.answer_adjacency`)."""
    return answer_adjacency(examples, T)


class SpuriousTokenGame(PromptAnswerTask):
    """The STG task (see the module docstring and :class:`~attnlab.tasks.prompt_answer.PromptAnswerTask`)."""

    name = "stg"
    data_config = STGDataConfig
    #: 11 request words, 8 x 3 for the statistics, 7 commas, ``Answer:``, 2 answer words
    min_context = 45

    @classmethod
    def vocabulary(cls) -> tuple[str, ...]:
        return stg_vocabulary()

    def generate_examples(self) -> dict[str, list[Any]]:
        d = self.data_cfg
        return {"train": stg_split(d.train_split, d.n_train, d.seed),
                **{s: stg_split(s, d.n_test, d.seed + 1) for s in ("iid", "ood", "flipped")}}  # type: ignore[arg-type]

    def scored_span(self, ex: STGExample) -> tuple[int, int]:
        """The statistics: after the request sentence, before ``Answer:``."""
        return len(REQUEST.split()), len(ex.tokens) - 1

    def describe(self) -> str:
        d = self.data_cfg
        return (f"Spurious Token Game: {d.n_train:,} {d.train_split.upper()} training examples, {d.n_test} per test "
                f"split; {self.describe_objective()}")
