"""Two-image questions about handwritten digits: a small, real multimodal task (future_mask.md E4, made concrete).

Images: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 greyscale 8x8 images,
values 0-16, from the UCI "Optical Recognition of Handwritten Digits" data, CC BY 4.0; nothing is downloaded).
scikit-learn is an optional dependency (``pip install attnlab[digits]``), imported only here and only when the
images are loaded.

The images are split once, by a fixed permutation that does not depend on any run's seed, into train / val / test
(``train_fraction`` / ``val_fraction`` / the rest), so that no test image is ever seen in training. A *question*
is a triple ``(image a, image b, kind)`` over one split; the sequence a model reads is::

    <bos>  a_1 ... a_P  <and>  b_1 ... b_P  <kind>   -> answer

with ``P = (8 / patch_size)^2`` visual positions per image (row-major patches, pixels scaled to [0, 1]) and one
answer token after the question token. The kinds and their answers:

* ``same``: "are they the same digit?" -> ``yes`` / ``no``; training draws a same-digit pair half the time (plus
  the one random pair in ten that matches), so ``yes`` is about 55% of these answers (evaluation sets are drawn the
  same way);
* ``larger``: "which is larger?" -> ``first`` / ``second`` / ``equal``;
* ``sum``: "their sum" -> ``0`` ... ``18``.

Rows of a training batch are a function of ``(seed, step)`` only; evaluation questions are a fixed set per split,
drawn from ``eval_seed`` (the same for every run, so runs are compared on the same questions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

__all__ = ["QUESTION_KINDS", "DigitImages", "DigitQuestions", "Vocabulary", "load_digit_images", "vocabulary",
           "draw_questions", "answers", "layout"]

QuestionKind = Literal["same", "larger", "sum"]
QUESTION_KINDS: tuple[QuestionKind, ...] = ("same", "larger", "sum")
IMAGE_SIZE = 8


@dataclass(frozen=True)
class Vocabulary:
    """The text tokens: ``<bos>``, ``<and>``, ``<img>`` (placeholder id at visual positions; the model replaces its
    embedding with the patch embedding), one question token per kind, then every answer."""

    tokens: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        try:
            return self.tokens.index(token)
        except ValueError:
            raise ValueError(f"token {token!r} is not in the vocabulary ({', '.join(self.tokens)})") from None


def vocabulary() -> Vocabulary:
    """The fixed vocabulary of the task (29 tokens)."""
    answers_ = ["yes", "no", "first", "second", "equal"] + [str(k) for k in range(19)]
    return Vocabulary(tokens=("<bos>", "<and>", "<img>", *(f"<{k}?>" for k in QUESTION_KINDS), *answers_))


@dataclass(frozen=True)
class DigitImages:
    """Images ``(N, 8, 8)`` float32 in [0, 1] and labels ``(N,)`` int64 of one split."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_digit_images(*, train_fraction: float = 0.6, val_fraction: float = 0.2) -> dict[str, DigitImages]:
    """scikit-learn's digits, split by a fixed permutation into ``train`` / ``val`` / ``test``.

    Raises:
        ImportError: scikit-learn is not installed (names the extra to install).
    """
    if not (0 < train_fraction < 1 and 0 < val_fraction < 1 and train_fraction + val_fraction < 1):
        raise ValueError(f"train_fraction={train_fraction} and val_fraction={val_fraction} must be in (0, 1) with a "
                         "sum below 1 (the rest is the test split)")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the digits task needs scikit-learn: pip install 'attnlab[digits]'") from e
    d = load_digits()
    images = (np.asarray(d.images, dtype=np.float32) / 16.0).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    labels = np.asarray(d.target, dtype=np.int64)
    order = np.random.Generator(np.random.PCG64(20260105)).permutation(len(labels))  # fixed, seed-independent
    n_train = int(round(train_fraction * len(labels)))
    n_val = int(round(val_fraction * len(labels)))
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {k: DigitImages(images=images[v], labels=labels[v]) for k, v in parts.items()}


@dataclass(frozen=True)
class DigitQuestions:
    """Questions over one split: image indices ``a``, ``b`` and question kinds (indices into
    :data:`QUESTION_KINDS`), each ``(N,)`` int64."""

    a: np.ndarray
    b: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def take(self, rows: Sequence[int] | np.ndarray) -> "DigitQuestions":
        r = np.asarray(rows, dtype=np.int64)
        return DigitQuestions(a=self.a[r], b=self.b[r], kind=self.kind[r])


def draw_questions(labels: np.ndarray, n: int, rng: np.random.Generator,
                   kinds: Sequence[QuestionKind] = QUESTION_KINDS) -> DigitQuestions:
    """``n`` questions over images with ``labels``: kinds uniform over ``kinds``; for ``same`` the second image has
    the first's digit with probability 1/2 (another image of it where there is one), otherwise any image."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        raise ValueError(f"a split needs at least 2 images to draw questions, got {len(labels)}")
    kind_ids = np.asarray([QUESTION_KINDS.index(k) for k in kinds], dtype=np.int64)
    kind = kind_ids[rng.integers(0, len(kind_ids), size=n)]
    a = rng.integers(0, len(labels), size=n)
    b = rng.integers(0, len(labels), size=n)
    by_digit = {d: np.flatnonzero(labels == d) for d in np.unique(labels)}
    want_same = (kind == QUESTION_KINDS.index("same")) & (rng.random(n) < 0.5)
    for i in np.flatnonzero(want_same):
        pool = by_digit[int(labels[a[i]])]
        b[i] = pool[rng.integers(0, len(pool))]
    return DigitQuestions(a=a.astype(np.int64), b=b.astype(np.int64), kind=kind)


def answers(labels: np.ndarray, q: DigitQuestions, vocab: Vocabulary) -> np.ndarray:
    """The answer token id ``(N,)`` of every question."""
    la, lb = np.asarray(labels)[q.a], np.asarray(labels)[q.b]
    out = np.empty(len(q), dtype=np.int64)
    for i, (x, y, k) in enumerate(zip(la, lb, q.kind)):
        kind = QUESTION_KINDS[int(k)]
        if kind == "same":
            tok = "yes" if x == y else "no"
        elif kind == "larger":
            tok = "first" if x > y else "second" if y > x else "equal"
        else:
            tok = str(int(x + y))
        out[i] = vocab.id(tok)
    return out


def layout(patch_size: int) -> tuple[np.ndarray, int]:
    """``(is_visual (L,) bool, patches per image)`` of the sequence ``<bos> a <and> b <kind>`` (module docstring)."""
    if patch_size not in (1, 2, 4, 8):
        raise ValueError(f"patch_size must divide the image size 8 (1, 2, 4 or 8), got {patch_size!r}")
    p = (IMAGE_SIZE // patch_size) ** 2
    is_visual = np.zeros(3 + 2 * p, dtype=bool)
    is_visual[1 : 1 + p] = True
    is_visual[2 + p : 2 + 2 * p] = True
    return is_visual, p
