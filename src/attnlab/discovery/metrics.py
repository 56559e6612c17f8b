"""Scores and metrics of a recovered temporal causal graph against the truth (spec ``time_series.md`` D.4, D.6, D.7).

Shape legend: N variables, P largest lag scored (lags ``tau = 1..P``).

**Convention: row = effect, column = cause.** ``scores[i, j]``, ``pred[i, j]`` and ``truth[i, j]`` concern the edge
``j -> i``. Self-edges (the diagonal) are excluded from every metric unless ``include_self=True``; every reported
metric carries that flag.

* Ranking metrics from continuous scores: :func:`auroc` (ties count one half) and :func:`auprc` (average
  precision, step-wise, the definition of ``sklearn.metrics.average_precision_score``). Both are written here with
  numpy/scipy because scikit-learn is not a core dependency of attnlab (only of the ``digits`` extra and dev).
* Thresholded metrics: :func:`precision_recall_f1` and :func:`lag_accuracy` (the fraction of correctly detected
  true edges whose estimated lag is the true one, spec D.6); :func:`graph_metrics` gathers them all.
* Layouts (spec D.7, D.9 oracle 8): attnlab's lag-resolved scores are ``(N, N, P)`` indexed
  ``[effect, cause, tau - 1]`` for ``tau = 1..P``; PCMCI's ``val_matrix`` / ``p_matrix`` are ``(N, N, P + 1)``
  indexed ``[cause, effect, tau]`` with ``tau = 0`` the contemporaneous slot (unused here: only lags ``>= 1`` are
  modelled). :func:`to_pcmci_layout` / :func:`from_pcmci_layout` convert, :func:`edge_scores` reduces over lags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "auroc",
    "auprc",
    "precision_recall_f1",
    "lag_accuracy",
    "GraphMetrics",
    "graph_metrics",
    "to_pcmci_layout",
    "from_pcmci_layout",
    "edge_scores",
]


# ------------------------------------------------------------------------------------------------- checks


def _is_real(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) and a.dtype != bool


def _check_square(name: str, a: object, *, kind: str, n: int | None = None) -> np.ndarray:
    """``a`` must be a numpy array of shape ``(N, N)`` (``N = n`` if given), ``N >= 1``, of ``kind``:
    ``"real"`` (float or int, finite), ``"bool"`` or ``"int"``."""
    want = "(N, N)" if n is None else f"(N={n}, N={n})"
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape {want}, got {type(a).__name__}")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1 or (n is not None and a.shape[0] != n):
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if kind == "bool" and a.dtype != bool:
        raise ValueError(f"{name} must be a bool array, got dtype {a.dtype}")
    if kind == "int" and (a.dtype == bool or not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    if kind == "real":
        if not _is_real(a):
            raise ValueError(f"{name} must be a real (float or int) array, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite, got NaN or inf")
    return a


def _check_include_self(include_self: object) -> bool:
    if not isinstance(include_self, bool):
        raise ValueError(f"include_self must be a bool, got {include_self!r}")
    return include_self


def _scored(n: int, include_self: bool) -> np.ndarray:
    """``(N, N)`` bool: the pairs that enter a metric (all, or all but the diagonal)."""
    keep = np.ones((n, n), dtype=bool)
    if not include_self:
        np.fill_diagonal(keep, False)
    return keep


def _ranked_inputs(scores: object, truth: object, include_self: object) -> tuple[np.ndarray, np.ndarray]:
    """The scored pairs' scores (float64) and labels, flattened; checks shapes and that both classes occur."""
    t = _check_square("truth", truth, kind="bool")
    s = _check_square("scores", scores, kind="real", n=t.shape[0])
    keep = _scored(t.shape[0], _check_include_self(include_self))
    y = t[keep]  # (M,) M scored pairs
    if not y.any():
        raise ValueError("truth has no positive (true edge) among the scored pairs: the ranking metric is undefined")
    if y.all():
        raise ValueError("truth has no negative (absent edge) among the scored pairs: the ranking metric is undefined")
    return s[keep].astype(np.float64), y


# ------------------------------------------------------------------------------------------------- ranking


def auroc(scores: np.ndarray, truth: np.ndarray, *, include_self: bool = False) -> float:
    """Area under the ROC curve of ``scores (N, N)`` against ``truth (N, N)`` bool over the scored pairs.

    The Mann-Whitney form: the probability that a random true edge scores above a random absent one, ties
    counting one half (mid-ranks from ``scipy.stats.rankdata``). 1 for a perfect score, 0 for its reverse, 0.5
    for a constant.

    Raises:
        ValueError: on bad shapes/dtypes, or if the scored pairs of ``truth`` have no positive or no negative
            (the message says which).
    """
    s, y = _ranked_inputs(scores, truth, include_self)
    ranks = rankdata(s)  # (M,) average ranks, 1-based
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def auprc(scores: np.ndarray, truth: np.ndarray, *, include_self: bool = False) -> float:
    """Average precision of ``scores (N, N)`` against ``truth (N, N)`` bool over the scored pairs.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score values taken as thresholds in decreasing order
    (``R_0 = 0``): step-wise, no interpolation, the definition of ``sklearn.metrics.average_precision_score``.
    Tied scores enter together at one threshold (so a constant score gives the positive rate). 1 for a perfect
    score. With no negative among the scored pairs the value would be 1 trivially; it is refused like
    :func:`auroc` so that the two are defined on the same inputs.

    Raises:
        ValueError: on bad shapes/dtypes, or if the scored pairs of ``truth`` have no positive or no negative.
    """
    s, y = _ranked_inputs(scores, truth, include_self)
    order = np.argsort(-s, kind="stable")  # (M,) descending
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores: the thresholds.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]  # (K,)
    tp = np.cumsum(y_sorted)[last].astype(np.float64)  # (K,) true positives at each threshold
    predicted = (last + 1).astype(np.float64)  # (K,) pairs at or above each threshold
    precision = tp / predicted
    recall = tp / tp[-1]
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


# ------------------------------------------------------------------------------------------------- thresholded


def precision_recall_f1(
    pred: np.ndarray, truth: np.ndarray, *, include_self: bool = False
) -> tuple[float, float, float]:
    """Precision, recall and F1 of the predicted edges ``pred (N, N)`` bool against ``truth (N, N)`` bool.

    Zero divisions are defined as 0.0 (scikit-learn's ``zero_division=0``): an empty prediction has precision
    0.0, an empty truth gives recall 0.0, and F1 is 0.0 when precision + recall is 0.

    Raises:
        ValueError: on bad shapes/dtypes.
    """
    t = _check_square("truth", truth, kind="bool")
    p = _check_square("pred", pred, kind="bool", n=t.shape[0])
    keep = _scored(t.shape[0], _check_include_self(include_self))
    tp = int((p & t & keep).sum())
    n_pred = int((p & keep).sum())
    n_true = int((t & keep).sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def lag_accuracy(
    pred: np.ndarray,
    lags_hat: np.ndarray,
    truth: np.ndarray,
    true_lags: np.ndarray,
    *,
    include_self: bool = False,
) -> float | None:
    """Fraction of correctly detected true edges (``pred & truth``) whose ``lags_hat`` equals ``true_lags``.

    All four are ``(N, N)`` in the row = effect layout; ``pred``/``truth`` bool, ``lags_hat``/``true_lags``
    integer (only their values on detected true edges are read). Returns ``None`` (n/a, spec D.9 oracle 10) when
    no true edge is detected.

    Raises:
        ValueError: on bad shapes/dtypes.
    """
    t = _check_square("truth", truth, kind="bool")
    n = t.shape[0]
    p = _check_square("pred", pred, kind="bool", n=n)
    lh = _check_square("lags_hat", lags_hat, kind="int", n=n)
    lt = _check_square("true_lags", true_lags, kind="int", n=n)
    hit = p & t & _scored(n, _check_include_self(include_self))  # (N, N) detected true edges
    if not hit.any():
        return None
    return float(np.mean(lh[hit] == lt[hit]))


@dataclass(frozen=True)
class GraphMetrics:
    """All metrics of one recovered graph (see :func:`graph_metrics`); ``None`` means n/a."""

    auroc: float | None
    auprc: float | None
    precision: float
    recall: float
    f1: float
    lag_accuracy: float | None
    n_true: int
    n_pred: int
    include_self: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields (``None`` stays ``None``)."""
        return dataclasses.asdict(self)


def graph_metrics(
    scores: np.ndarray,
    pred: np.ndarray,
    lags_hat: np.ndarray,
    truth: np.ndarray,
    true_lags: np.ndarray,
    *,
    include_self: bool = False,
    lags_defined: bool = True,
) -> GraphMetrics:
    """Every metric at once: AUROC/AUPRC from ``scores``, precision/recall/F1 and lag accuracy from ``pred``.

    ``auroc`` and ``auprc`` are ``None`` (not an error) when the scored pairs of ``truth`` are all positive or all
    negative; ``lag_accuracy`` is ``None`` when ``lags_defined`` is ``False`` (Lorenz-96, spec D.6) or when no true
    edge is detected. ``n_true`` and ``n_pred`` count the scored pairs only.

    Raises:
        ValueError: on bad shapes/dtypes (naming the argument).
    """
    include_self = _check_include_self(include_self)
    if not isinstance(lags_defined, bool):
        raise ValueError(f"lags_defined must be a bool, got {lags_defined!r}")
    t = _check_square("truth", truth, kind="bool")
    n = t.shape[0]
    _check_square("scores", scores, kind="real", n=n)
    p = _check_square("pred", pred, kind="bool", n=n)
    _check_square("lags_hat", lags_hat, kind="int", n=n)
    _check_square("true_lags", true_lags, kind="int", n=n)
    keep = _scored(n, include_self)
    y = t[keep]
    ranked = bool(y.any() and not y.all())
    precision, recall, f1 = precision_recall_f1(p, t, include_self=include_self)
    lag_acc = lag_accuracy(p, lags_hat, t, true_lags, include_self=include_self) if lags_defined else None
    return GraphMetrics(
        auroc=auroc(scores, t, include_self=include_self) if ranked else None,
        auprc=auprc(scores, t, include_self=include_self) if ranked else None,
        precision=precision,
        recall=recall,
        f1=f1,
        lag_accuracy=lag_acc,
        n_true=int(y.sum()),
        n_pred=int(p[keep].sum()),
        include_self=include_self,
    )


# ------------------------------------------------------------------------------------------------- layouts


def _check_cube(name: str, a: object, *, min_last: int, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape {what}, got {type(a).__name__}")
    if a.ndim != 3 or a.shape[0] != a.shape[1] or a.shape[0] < 1 or a.shape[2] < min_last:
        raise ValueError(f"{name} must have shape {what}, got {a.shape}")
    if not (_is_real(a) or a.dtype == bool):
        raise ValueError(f"{name} must be a real or bool array, got dtype {a.dtype}")
    return a


def to_pcmci_layout(lagged: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
    """attnlab's ``(N, N, P)`` ``[effect, cause, tau - 1]`` -> PCMCI's ``(N, N, P + 1)`` ``[cause, effect, tau]``.

    The ``tau = 0`` slot is set to ``fill`` (cast to ``lagged``'s dtype, which the result keeps).
    ``from_pcmci_layout(to_pcmci_layout(a))`` is ``a``.

    Raises:
        ValueError: if ``lagged`` is not a real or bool array of shape ``(N, N, P)``, ``N, P >= 1``.
    """
    a = _check_cube("lagged", lagged, min_last=1, what="(N, N, P) with N, P >= 1")
    n, _, p = a.shape
    out = np.full((n, n, p + 1), fill, dtype=a.dtype)  # (N, N, P + 1) [cause, effect, tau]
    out[:, :, 1:] = a.transpose(1, 0, 2)
    return out


def from_pcmci_layout(matrix: np.ndarray) -> np.ndarray:
    """PCMCI's ``(N, N, P + 1)`` ``[cause, effect, tau]`` -> attnlab's ``(N, N, P)`` ``[effect, cause, tau - 1]``.

    The contemporaneous ``tau = 0`` slot is dropped. Returns a new contiguous array of ``matrix``'s dtype.

    Raises:
        ValueError: if ``matrix`` is not a real or bool array of shape ``(N, N, P + 1)``, ``N, P >= 1``.
    """
    m = _check_cube("matrix", matrix, min_last=2, what="(N, N, P + 1) with N, P >= 1")
    return np.ascontiguousarray(m[:, :, 1:].transpose(1, 0, 2))  # (N, N, P) [effect, cause, tau - 1]


def edge_scores(lagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce lag-resolved scores ``(N, N, P)`` ``[effect, cause, tau - 1]`` over the lags (spec D.4).

    Returns ``S (N, N)`` = the maximum over ``tau`` and ``lags (N, N)`` int64 = its argmax + 1, in ``1..P``; on a
    tie the smallest lag wins. No normalisation and no absolute value is applied (pass ``|val|`` for signed
    statistics).

    Raises:
        ValueError: if ``lagged`` is not a finite real array of shape ``(N, N, P)``, ``N, P >= 1``.
    """
    a = _check_cube("lagged", lagged, min_last=1, what="(N, N, P) with N, P >= 1")
    if a.dtype == bool:
        raise ValueError(f"lagged must be a real (float or int) array, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError("lagged must be finite, got NaN or inf")
    return a.max(axis=-1), (a.argmax(axis=-1) + 1).astype(np.int64)
