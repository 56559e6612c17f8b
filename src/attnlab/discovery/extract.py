"""Read a causal graph with lags out of a trained forecaster's input gradients (spec ``time_series.md`` D.4).

Shape legend: n windows, N variables, P lags.

* :func:`lagged_scores`: ``s[i, j, tau - 1] = mean_n |d x̂_i / d x_{j, t - tau}|`` over held-out windows
  (``statistic="sq"``: the mean squared gradient, the "gradient energy" alternative). **Row = effect, column =
  cause.** The Jacobian ``(n, N, N, P)`` is taken with ``N`` backward passes over the whole batch of windows (one per
  output variable): windows do not interact in the forecaster, so each window's rows are its own Jacobian. It is
  the spec's "N backward passes" option; ``torch.func.jacrev`` would need every module (the RMSNorm's custom
  autograd function included) to support ``vmap``, and gains nothing at these sizes. (The spec's shared
  :func:`attnlab.methods.input_gradient_saliency` is not used: it reduces the gradient of a token model's
  cross-entropy over embedding dimensions, one number per token; here the inputs are real values and every output
  needs its own gradient, so the quantity is a Jacobian, not a saliency.)
* :func:`estimate_graph`: edge score ``S[i, j] = max_tau s``, lag ``argmax_tau s``, each row normalised by its largest
  off-diagonal entry (or the whole graph by its largest, ``Threshold(scale="global")``), binarised by a
  :class:`Threshold`.
* :func:`combine_seeds`: the graphs of several seeds as one, each edge with its mean normalised score, its most
  frequent lag and how many seeds found it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from attnlab._validation import check_float, check_int

__all__ = ["Threshold", "GraphEstimate", "lagged_scores", "normalise_rows", "normalise_global", "binarise",
           "estimate_graph", "combine_seeds"]

ThresholdMethod = Literal["fixed", "kmeans", "kmeans_global", "topk"]


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """How normalised scores become edges.

    Attributes:
        method: ``"fixed"`` (score >= ``delta``, default); ``"kmeans"``: as in the CausalFormer release
            (``interpret.py``, ``analyze``), each effect's row of scores (its own past included) in 3 k-means clusters,
            the causes in the top 2 kept, so every variable gets at least one cause; ``"kmeans_global"`` (attnlab's
            variant): one clustering of every off-diagonal score, the top 2 clusters kept; ``"topk"`` (the ``k``
            largest off-diagonal scores; with ``k`` = the true edge count it is an **oracle** setting and must be
            labelled so).
        delta: the fixed threshold on row-normalised scores (in (0, 1]).
        k: the number of edges of ``"topk"``.
        seed: seeds the k-means initialisation.
        scale: what the scores are divided by before the threshold: ``"row"`` (the spec's default: each row's
            largest off-diagonal score), ``"row_self"`` (each row's largest score, the variable's own past
            included) or ``"global"`` (the largest off-diagonal score of the whole graph). Row scaling makes the
            strongest candidate cause of **every** variable score 1, so a variable without a true cause always
            receives one at ``delta <= 1`` (measured in ``benchmarks/results/discovery``); ``"row_self"`` measures
            each cause against the variable's own past instead (every variable in G1-G4 depends on its own past);
            global scaling compares every pair on one scale (the variables are z-scored, so raw gradients are
            comparable).
    """

    method: ThresholdMethod = "fixed"
    delta: float = 0.5
    k: int | None = None
    seed: int = 0
    scale: Literal["row", "row_self", "global"] = "row"

    def __post_init__(self) -> None:
        if self.method not in ("fixed", "kmeans", "kmeans_global", "topk"):
            raise ValueError(f"method must be 'fixed', 'kmeans', 'kmeans_global' or 'topk', got {self.method!r}")
        check_float("delta", self.delta, low=0.0, high=1.0, low_inclusive=False, high_inclusive=True)
        if self.method == "topk":
            if self.k is None:
                raise ValueError("method='topk' needs k (the number of edges to keep)")
            check_int("k", self.k, 0)
        elif self.k is not None:
            raise ValueError(f"k={self.k} is only used by method='topk'")
        if self.scale not in ("row", "row_self", "global"):
            raise ValueError(f"scale must be 'row', 'row_self' or 'global', got {self.scale!r}")

    @property
    def label(self) -> str:
        scale = {"row": "row-scaled", "row_self": "scaled by the row's largest score, own past included",
                 "global": "globally scaled"}[self.scale]
        if self.method == "fixed":
            return f"fixed δ={self.delta:g}, {scale}"
        if self.method == "kmeans":
            return "k-means per row (3 clusters, top 2)"
        if self.method == "kmeans_global":
            return "k-means over the graph (3 clusters, top 2)"
        return f"top-{self.k} (oracle k), {scale}"


@dataclass(kw_only=True)
class GraphEstimate:
    """One extracted graph. Every ``(N, N)`` array is row = effect, column = cause.

    Attributes:
        columns: the variable names.
        lagged: ``(N, N, P)`` gradient scores, ``lagged[i, j, tau - 1]``.
        scores: ``(N, N)`` edge scores ``max_tau lagged``.
        lags: ``(N, N)`` int, ``argmax_tau lagged`` (1-based).
        normalised: ``(N, N)`` scores on the threshold's scale: divided by their row's largest off-diagonal score
            (``threshold.scale="row"``) or by the graph's (``"global"``).
        pred: ``(N, N)`` bool edges (diagonal: self-edges, by the same threshold).
        threshold: how ``pred`` was made.
        seeds: for a combination of seeds (:func:`combine_seeds`), ``(N, N)`` int, the seeds that found each edge.
        n_seeds: how many seeds were combined (1 for one model).

    For a combination of seeds, ``lagged``, ``scores`` and ``normalised`` are the means of the seeds' (so ``scores`` is
    not ``lagged.max(-1)``: a maximum and a mean do not commute), ``pred`` is the vote and ``lags`` the most frequent
    lag among the seeds that found the edge.
    """

    columns: list[str]
    lagged: np.ndarray
    scores: np.ndarray
    lags: np.ndarray
    normalised: np.ndarray
    pred: np.ndarray
    threshold: Threshold
    seeds: np.ndarray | None = None
    n_seeds: int = 1

    def edges(self, *, include_self: bool = False) -> list[dict[str, Any]]:
        """The predicted edges, strongest first: ``cause``, ``effect``, ``lag``, ``score`` (normalised), ``seeds``."""
        N = len(self.columns)
        out = []
        for i in range(N):
            for j in range(N):
                if self.pred[i, j] and (include_self or i != j):
                    out.append({"cause": self.columns[j], "effect": self.columns[i], "lag": int(self.lags[i, j]),
                                "score": float(self.normalised[i, j]),
                                "seeds": int(self.seeds[i, j]) if self.seeds is not None else 1})
        return sorted(out, key=lambda e: -e["score"])


def lagged_scores(model: nn.Module, windows: Tensor, *, statistic: Literal["abs", "sq"] = "abs",
                  batch_size: int = 512) -> np.ndarray:
    """``(N, N, P)`` gradient scores of ``model`` (``(B, N, P) -> (B, N)``) over ``windows (n, N, P)``.

    ``s[i, j, tau - 1]`` is the mean over windows of ``|d x̂_i / d x[:, j, P - tau]|`` (``statistic="sq"``: of its
    square). The model is evaluated in eval mode (restored afterwards); parameters' ``.grad`` are not touched.
    """
    if statistic not in ("abs", "sq"):
        raise ValueError(f"statistic must be 'abs' or 'sq', got {statistic!r}")
    if not isinstance(windows, Tensor) or windows.ndim != 3 or windows.shape[0] < 1:
        raise ValueError("windows must be a non-empty (n, N, P) tensor")
    check_int("batch_size", batch_size, 1)
    n, N, P = windows.shape
    param = next(model.parameters())
    total = torch.zeros(N, N, P, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for lo in range(0, n, batch_size):
                x = windows[lo : lo + batch_size].to(param.device, param.dtype).requires_grad_(True)  # (b, N, P)
                y = model(x)  # (b, N)
                if tuple(y.shape) != (x.shape[0], N):
                    raise ValueError(f"the model must map (B, N, P) to (B, N), got {tuple(y.shape)}")
                for i in range(N):
                    (g,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=i < N - 1)  # (b, N, P)
                    g = g.double().abs() if statistic == "abs" else g.double().square()
                    total[i] += g.sum(dim=0).cpu()  # (N, P), window position p = P - tau
    finally:
        model.train(was_training)
    return (total / n).flip(-1).numpy()  # (N, N, P): [..., tau - 1]


def normalise_global(scores: np.ndarray) -> np.ndarray:
    """``scores (N, N)`` divided by the largest off-diagonal entry of the whole matrix (all 0 stays 0)."""
    s = np.asarray(scores, dtype=np.float64)
    off = ~np.eye(s.shape[0], dtype=bool)
    top = s[off].max() if off.any() else 0.0
    return s / (top if top > 0 else 1.0)


def normalise_rows(scores: np.ndarray) -> np.ndarray:
    """``scores (N, N)`` divided row by row by the row's largest off-diagonal entry (a row whose off-diagonal scores
    are all 0 stays 0)."""
    s = np.asarray(scores, dtype=np.float64)
    off = s.copy()
    np.fill_diagonal(off, -np.inf)
    top = off.max(axis=1, keepdims=True) if s.shape[0] > 1 else np.zeros((s.shape[0], 1))
    top = np.where(top > 0, top, 1.0)
    return s / top


def binarise(normalised: np.ndarray, threshold: Threshold) -> np.ndarray:
    """``(N, N)`` bool edges from row-normalised scores. The diagonal is decided by the same rule (self-edges are
    scored separately by the metrics, which exclude them by default)."""
    s = np.asarray(normalised, dtype=np.float64)
    N = s.shape[0]
    off = ~np.eye(N, dtype=bool)
    if threshold.method == "fixed":
        return s >= threshold.delta
    if threshold.method == "topk":
        pred = np.zeros_like(s, dtype=bool)
        flat = np.where(off, s, -np.inf).ravel()
        k = min(threshold.k or 0, int(off.sum()))
        if k:
            pred.ravel()[np.argsort(-flat, kind="stable")[:k]] = True
        return pred | (np.eye(N, dtype=bool) & (s >= threshold.delta))
    if threshold.method == "kmeans_global":
        return s >= _top_clusters_cut(s[off], threshold.seed)
    pred = np.zeros_like(s, dtype=bool)
    for i in range(N):  # CausalFormer's rule: one clustering per effect, over its whole row (own past included)
        if s[i].any():
            pred[i] = s[i] >= _top_clusters_cut(s[i], threshold.seed)
    return pred


def _top_clusters_cut(vals: np.ndarray, seed: int) -> float:
    """The smallest value in the top 2 of 3 one-dimensional k-means clusters of ``vals`` (fewer than 3 distinct
    values: the largest value, unless all are equal, then ``inf``: nothing stands out)."""
    from scipy.cluster.vq import kmeans2

    if vals.size == 0 or vals.max() == vals.min():
        return np.inf
    if np.unique(vals).size < 3:
        return float(vals.max())
    centroids, labels = kmeans2(vals[:, None], 3, seed=seed, minit="++")
    lowest = int(np.argmin(centroids[:, 0]))
    kept = vals[labels != lowest]
    return float(kept.min()) if kept.size else np.inf


def estimate_graph(lagged: np.ndarray, columns: Sequence[str], threshold: Threshold = Threshold()) -> GraphEstimate:
    """Edge scores, lags, row normalisation and edges of ``lagged (N, N, P)`` scores."""
    lagged = np.asarray(lagged, dtype=np.float64)
    if lagged.ndim != 3 or lagged.shape[0] != lagged.shape[1] or lagged.shape[0] != len(columns):
        raise ValueError(f"lagged must be (N, N, P) with N = {len(columns)} columns, got {lagged.shape}")
    scores = lagged.max(axis=-1)  # (N, N)
    lags = lagged.argmax(axis=-1) + 1  # (N, N), 1-based
    if threshold.scale == "row":
        normalised = normalise_rows(scores)
    elif threshold.scale == "row_self":
        top = scores.max(axis=1, keepdims=True)
        normalised = scores / np.where(top > 0, top, 1.0)
    else:
        normalised = normalise_global(scores)
    return GraphEstimate(columns=list(columns), lagged=lagged, scores=scores, lags=lags, normalised=normalised,
                         pred=binarise(normalised, threshold), threshold=threshold)


def combine_seeds(graphs: Sequence[GraphEstimate], *, min_seeds: int | None = None) -> GraphEstimate:
    """One graph from several seeds' graphs: the mean raw and scaled scores and the mean lagged scores, the most
    frequent lag among the seeds that found an edge (ties: the smaller lag;
    none found it: the lag of the mean scores), ``seeds[i, j]`` = how many seeds found the edge, and the edge kept
    when at least ``min_seeds`` did (default: a strict majority)."""
    if not graphs:
        raise ValueError("graphs must hold at least one GraphEstimate")
    cols = graphs[0].columns
    if any(g.columns != cols for g in graphs):
        raise ValueError("every graph must have the same columns in the same order")
    n = len(graphs)
    need = min_seeds if min_seeds is not None else n // 2 + 1
    check_int("min_seeds", need, 1)
    if need > n:
        raise ValueError(f"min_seeds={need} is more than the {n} graphs given")
    preds = np.stack([g.pred for g in graphs])  # (n, N, N)
    seeds = preds.sum(axis=0)
    normalised = np.mean([g.normalised for g in graphs], axis=0)
    lagged = np.mean([g.lagged for g in graphs], axis=0)  # (N, N, P) raw, like scores
    N, P = normalised.shape[0], graphs[0].lagged.shape[-1]
    lags = lagged.argmax(axis=-1) + 1
    for i in range(N):
        for j in range(N):
            found = [int(g.lags[i, j]) for g in graphs if g.pred[i, j]]
            if found:
                counts = np.bincount(found, minlength=P + 1)
                lags[i, j] = int(np.argmax(counts))  # the first (smallest) of the most frequent
    return GraphEstimate(columns=list(cols), lagged=lagged, scores=np.mean([g.scores for g in graphs], axis=0),
                         lags=lags, normalised=normalised, pred=seeds >= need, threshold=graphs[0].threshold,
                         seeds=seeds, n_seeds=n)
