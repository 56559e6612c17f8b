"""Arithmetic word problems with distractors: LeaF's secondary synthetic task (spec ``causal_training.md`` B.8,
a reconstruction; own code, seeded, no download).

A problem is word-level text with one-digit numbers as single tokens::

    Ann has 7 coins . The shop opened in 1 9 8 4 . Ann finds 6 more . The shop sells 3 pens .
    How many coins does Ann have now ? Answer: 1 3

* the question: a name has ``a`` items (1..9), then gains (``buys``/``finds`` ``b`` ``more``) or loses
  (``gives away``/``loses`` ``b``, with ``b <= a``) ``b`` items (1..9); the answer ``a ± b`` is written as two digit
  tokens (tens, units), 0..18;
* the distractors: a founding year ``The shop opened in 1 9 d1 d2 .`` and an unrelated count ``The shop sells c
  <other items> .``, each inserted before, between or after the two question sentences;
* the planted spurious correlation: the year's last digit ``d2``. In ``"iid"`` it equals the answer's units digit
  with probability ``correlation`` (else uniform); in ``"ood"`` it is uniform and independent; in ``"flipped"`` it
  is never the units digit (uniform over the nine others). ``"clean"`` problems have no distractors.

Each example gives the spans of its causes (the two number tokens with their verbs: ``has a``, ``<verb> b``) and of
its distractors (the two inserted sentences: the planted spurious tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["ArithExample", "arith_example", "arith_split", "arith_vocabulary", "ArithSplit", "NAMES", "ITEMS"]

NAMES = ("Ann", "Bo", "Cy", "Di", "Ed", "Flo")
ITEMS = ("apples", "coins", "pens", "books", "cards", "shells")
GAIN = (("buys",), ("finds",))
LOSS = (("gives", "away"), ("loses",))
ArithSplit = Literal["iid", "ood", "flipped", "clean"]
SPLITS = ("iid", "ood", "flipped", "clean")


@dataclass(frozen=True)
class ArithExample:
    """One problem: ``tokens`` (ending with ``Answer:``), ``answer`` (tens and units digits), the ``causes`` and
    ``spurious`` (distractor) ``[start, end)`` token spans, and the numbers."""

    tokens: tuple[str, ...]
    answer: tuple[str, ...]
    causes: tuple[tuple[int, int], ...]
    spurious: tuple[tuple[int, int], ...]
    a: int
    b: int
    year_digit: int | None

    @property
    def label(self) -> str:
        return " ".join(self.answer)


def _year_digit(rng: np.random.Generator, units: int, split: ArithSplit, correlation: float) -> int:
    if split == "iid" and rng.random() < correlation:
        return units
    if split == "flipped":
        return int((units + rng.integers(1, 10)) % 10)
    return int(rng.integers(0, 10))


def arith_example(rng: np.random.Generator, split: ArithSplit = "iid", *, correlation: float = 0.9) -> ArithExample:
    """One problem drawn from ``rng`` under the rules of ``split`` (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    name = NAMES[int(rng.integers(0, len(NAMES)))]
    item, other_item = (ITEMS[i] for i in rng.choice(len(ITEMS), 2, replace=False))
    gain = bool(rng.integers(0, 2))
    a = int(rng.integers(1, 10))
    b = int(rng.integers(1, 10)) if gain else int(rng.integers(1, a + 1))
    verb = GAIN[rng.integers(0, 2)] if gain else LOSS[rng.integers(0, 2)]
    value = a + b if gain else a - b
    first = [name, "has", str(a), item, "."]
    second = [name, *verb, str(b), *(["more"] if gain else []), "."]
    sentences: list[tuple[str, list[str]]] = [("q1", first), ("q2", second)]
    year_digit = None
    if split != "clean":
        year_digit = _year_digit(rng, value % 10, split, correlation)
        distractors = [["The", "shop", "opened", "in", "1", "9", str(int(rng.integers(0, 10))), str(year_digit), "."],
                       ["The", "shop", "sells", str(int(rng.integers(1, 10))), other_item, "."]]
        for d in distractors:  # each at a random slot among the sentences so far (before, between or after)
            sentences.insert(int(rng.integers(0, len(sentences) + 1)), ("d", d))
    tokens: list[str] = []
    causes, spurious = [], []
    for kind, words in sentences:
        start = len(tokens)
        tokens += words
        if kind == "d":
            spurious.append((start, len(tokens)))
        elif kind == "q1":  # "has a"
            causes.append((start + 1, start + 3))
        else:  # "<verb> b"
            causes.append((start + 1, start + 2 + len(verb)))
    tokens += ["How", "many", item, "does", name, "have", "now", "?", "Answer:"]
    answer = (str(value // 10), str(value % 10))
    return ArithExample(tuple(tokens), answer, tuple(causes), tuple(spurious), a, b if gain else -b, year_digit)


def arith_split(split: ArithSplit, n: int, seed: int, *, correlation: float = 0.9) -> list[ArithExample]:
    """``n`` problems of ``split`` drawn from ``seed`` (the same list for the same arguments)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xA217, SPLITS.index(split)])))
    return [arith_example(rng, split, correlation=correlation) for _ in range(n)]


def arith_vocabulary() -> tuple[str, ...]:
    """Every token a problem can hold."""
    words = ["has", ".", "more", "The", "shop", "opened", "in", "How", "many", "does", "have", "now", "?", "Answer:",
             "sells"]
    verbs = [w for v in GAIN + LOSS for w in v]
    return tuple(dict.fromkeys([*NAMES, *ITEMS, *words, *verbs, *(str(d) for d in range(10))]))
