"""The Spurious Token Game (STG) of CAT (Han et al., arXiv 2509.01535), re-implemented from the rules of spec
``causal_training.md`` A.7 and A.9 (own code, seeded, no download).

A prompt asks for a person's cancer risk from eight ``Name: value`` statistics in shuffled order, then ``Answer:``;
the answer is ``High Risk``, ``Middle Risk`` or ``Low Risk``:

* causal: Smoking, Weight, Exercise, uniform integers 1..10;
* spurious (IID): Yellow fingers = int(1.5 Smoking), Clothing size = int(1.0 Weight), Hormones = int(0.5 Exercise);
* unrelated: Certain gene, Room size, uniform 1..10;
* label: v = 1.2 Smoking + 0.7 Weight - Exercise in float64, in that order; ``High Risk`` if v > 7.2, ``Middle Risk``
  only if v == 2.7 exactly (the released code's quirk, kept), else ``Low Risk``.

Splits (:func:`stg_split`): ``"iid"`` (the rules above), ``"ood"`` (all eight values independent uniform 1..10) and
``"flipped"`` (spec A.9, a reconstruction: the spurious correlation reversed, Yellow fingers = int(1.5 (11 -
Smoking)), Clothing size = 11 - Weight, Hormones = int(0.5 (11 - Exercise)); labels unchanged).

Tokens (spec A.9): a word-level sequence in which each name is **one** token (``Yellow_fingers``), each value one
token (``0`` .. ``15``), ``,`` and ``:`` their own tokens, then ``Answer:`` and the two answer words. Each example
also gives the positions of its cause spans (the three causal ``Name : value`` groups), for CAT's annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["STG_NAMES", "CAUSAL", "SPURIOUS", "UNRELATED", "LABELS", "STGExample", "stg_label", "stg_example",
           "stg_split", "stg_vocabulary", "REQUEST"]

CAUSAL = ("Smoking", "Weight", "Exercise")
SPURIOUS = ("Yellow_fingers", "Clothing_size", "Hormones")
UNRELATED = ("Certain_gene", "Room_size")
STG_NAMES = CAUSAL + SPURIOUS + UNRELATED
LABELS = ("High Risk", "Middle Risk", "Low Risk")
#: the one-sentence request that opens every prompt (own wording)
REQUEST = "Predict the cancer risk of this person from their statistics :"
Split = Literal["iid", "ood", "flipped"]


def stg_label(smoking: int, weight: int, exercise: int) -> str:
    """The label rule of spec A.7, evaluated in float64 in the released order (``Middle Risk`` only at v == 2.7)."""
    v = 1.2 * float(smoking) + 0.7 * float(weight) - float(exercise)
    if v > 7.2:
        return "High Risk"
    if 2.7 <= v <= 2.7:
        return "Middle Risk"
    return "Low Risk"


@dataclass(frozen=True)
class STGExample:
    """One example: ``values`` by name, the prompt ``tokens`` (ending with ``Answer:``), the ``answer`` tokens (two
    words), ``causes`` and ``spurious``: the ``[start, end)`` token spans of the three causal and the three spurious
    ``Name : value`` groups."""

    values: dict[str, int]
    tokens: tuple[str, ...]
    answer: tuple[str, ...]
    causes: tuple[tuple[int, int], ...]
    spurious: tuple[tuple[int, int], ...] = ()

    @property
    def label(self) -> str:
        return " ".join(self.answer)


def _values(rng: np.random.Generator, split: Split) -> dict[str, int]:
    draw = {n: int(rng.integers(1, 11)) for n in STG_NAMES}  # every value uniform 1..10 first (the OOD rule)
    s, w, e = draw["Smoking"], draw["Weight"], draw["Exercise"]
    if split == "iid":
        draw.update(Yellow_fingers=int(1.5 * s), Clothing_size=int(1.0 * w), Hormones=int(0.5 * e))
    elif split == "flipped":
        draw.update(Yellow_fingers=int(1.5 * (11 - s)), Clothing_size=11 - w, Hormones=int(0.5 * (11 - e)))
    elif split != "ood":
        raise ValueError(f"split must be 'iid', 'ood' or 'flipped', got {split!r}")
    return draw


def stg_example(rng: np.random.Generator, split: Split = "iid") -> STGExample:
    """One example drawn from ``rng`` under the rules of ``split`` (module docstring)."""
    values = _values(rng, split)
    order = [STG_NAMES[i] for i in rng.permutation(len(STG_NAMES))]
    tokens = REQUEST.split()
    causes, spurious = [], []
    for k, name in enumerate(order):
        if k:
            tokens.append(",")
        start = len(tokens)
        tokens += [name, ":", str(values[name])]
        if name in CAUSAL:
            causes.append((start, len(tokens)))
        elif name in SPURIOUS:
            spurious.append((start, len(tokens)))
    tokens.append("Answer:")
    answer = tuple(stg_label(values["Smoking"], values["Weight"], values["Exercise"]).split())
    return STGExample(values=values, tokens=tuple(tokens), answer=answer, causes=tuple(causes),
                      spurious=tuple(spurious))


def stg_split(split: Split, n: int, seed: int) -> list[STGExample]:
    """``n`` examples of ``split`` drawn from ``seed`` (the same list for the same arguments)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, ("iid", "ood", "flipped").index(split)
                                                                      if split in ("iid", "ood", "flipped") else 0])))
    return [stg_example(rng, split) for _ in range(n)]


def stg_vocabulary() -> tuple[str, ...]:
    """Every token an STG sequence can hold: the request's words, the names, ``0`` .. ``15``, punctuation,
    ``Answer:`` and the answer words."""
    words = list(dict.fromkeys(REQUEST.split()))
    answers = list(dict.fromkeys(w for label in LABELS for w in label.split()))
    return tuple(dict.fromkeys([*words, *STG_NAMES, *(str(v) for v in range(16)), ",", ":", "Answer:", *answers]))
