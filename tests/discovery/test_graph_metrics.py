"""Graph metrics and layouts of attnlab.discovery.metrics (spec time_series.md D.6, D.7; oracles D.9 8 and 10).

(Named test_graph_metrics.py: tests/ has no __init__.py files, so a second test_metrics.py would collide with
tests/tasks/translation/test_metrics.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlab.discovery.metrics import (
    GraphMetrics,
    auprc,
    auroc,
    edge_scores,
    from_pcmci_layout,
    graph_metrics,
    lag_accuracy,
    precision_recall_f1,
    to_pcmci_layout,
)

OFF = ~np.eye(6, dtype=bool)


def _truth(seed: int = 0, n: int = 6, p: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.random((n, n)) < p
    t[0, 1], t[1, 0] = True, False  # at least one positive and one negative off the diagonal
    return t


# ------------------------------------------------------------------------------------------------- oracle 10


def test_auroc_is_one_for_perfect_zero_for_reverse_half_for_constant() -> None:
    t = _truth()
    perfect = t.astype(np.float64) + 0.01 * np.arange(36).reshape(6, 6)  # order inside each class is irrelevant
    assert auroc(perfect, t) == 1.0
    assert auroc(-perfect, t) == 0.0
    assert auroc(np.full((6, 6), 3.0), t) == 0.5
    assert auroc(t.astype(np.int64), t) == 1.0  # integer scores are accepted


def test_auprc_is_one_for_perfect_and_the_positive_rate_for_constant() -> None:
    t = _truth()
    assert auprc(t.astype(np.float64), t) == 1.0
    assert auprc(np.zeros((6, 6)), t) == pytest.approx(t[OFF].mean(), abs=1e-15)
    assert auprc(-t.astype(np.float64), t) < 1.0


def test_auprc_by_hand_with_a_tie() -> None:
    # include_self: the four cells in row-major order, scores 0.9 (pos), 0.9 (neg), 0.7 (pos), 0.1 (neg).
    t = np.array([[True, False], [True, False]])
    s = np.array([[0.9, 0.9], [0.7, 0.1]])
    # Thresholds 0.9: P = 1/2, R = 1/2; 0.7: P = 2/3, R = 1; 0.1: R unchanged. AP = 0.25 + 1/3.
    assert auprc(s, t, include_self=True) == pytest.approx(0.25 + 1.0 / 3.0, abs=1e-15)
    # Without the tie: 1.0 * 0.5 + 2/3 * 0.5.
    s2 = np.array([[0.9, 0.8], [0.7, 0.1]])
    assert auprc(s2, t, include_self=True) == pytest.approx(0.5 + 1.0 / 3.0, abs=1e-15)
    # AUROC: pairs (pos, neg) = (0.9, 0.9) half, (0.9, 0.1) 1, (0.7, 0.9) 0, (0.7, 0.1) 1 -> 2.5 / 4.
    assert auroc(s, t, include_self=True) == 0.625


@pytest.mark.parametrize("include_self", [False, True])
def test_auroc_and_auprc_match_sklearn_on_tied_random_scores(include_self: bool) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(11)
    keep = np.ones((8, 8), dtype=bool) if include_self else ~np.eye(8, dtype=bool)
    for trial in range(25):
        t = rng.random((8, 8)) < rng.uniform(0.1, 0.6)
        t[0, 1], t[1, 0] = True, False
        s = np.round(rng.normal(size=(8, 8)) + 0.7 * t, 1 if trial % 2 else 0)  # many ties
        assert auroc(s, t, include_self=include_self) == pytest.approx(
            sk.roc_auc_score(t[keep], s[keep]), abs=1e-12)
        assert auprc(s, t, include_self=include_self) == pytest.approx(
            sk.average_precision_score(t[keep], s[keep]), abs=1e-12)


def test_ranking_metrics_exclude_the_diagonal_by_default() -> None:
    t = np.zeros((4, 4), dtype=bool)
    t[1, 0] = t[2, 3] = True
    np.fill_diagonal(t, False)
    s = t.astype(np.float64)
    np.fill_diagonal(s, 10.0)  # large scores on absent self-edges
    assert auroc(s, t) == 1.0 and auprc(s, t) == 1.0
    assert auroc(s, t, include_self=True) < 1.0 and auprc(s, t, include_self=True) < 1.0
    # A true self-edge only counts with include_self.
    t2 = t.copy()
    t2[0, 0] = True
    s2 = s.copy()
    s2[0, 0] = -1.0
    assert auroc(s2, t2) == 1.0
    assert auroc(s2, t2, include_self=True) < 1.0


def test_ranking_metrics_refuse_a_one_class_truth() -> None:
    t = np.eye(4, dtype=bool)  # only self-edges: no positive off the diagonal
    for fn in (auroc, auprc):
        with pytest.raises(ValueError, match="no positive"):
            fn(np.zeros((4, 4)), t)
        with pytest.raises(ValueError, match="no negative"):
            fn(np.zeros((4, 4)), ~np.eye(4, dtype=bool))
        with pytest.raises(ValueError, match="no negative"):
            fn(np.zeros((4, 4)), np.ones((4, 4), dtype=bool), include_self=True)


def test_f1_of_the_truth_against_itself_is_one() -> None:
    t = _truth(3)
    assert precision_recall_f1(t, t) == (1.0, 1.0, 1.0)
    assert precision_recall_f1(t, t, include_self=True) == (1.0, 1.0, 1.0)


def test_precision_recall_f1_counts() -> None:
    t = np.zeros((4, 4), dtype=bool)
    t[1, 0] = t[2, 0] = t[3, 2] = True
    p = np.zeros((4, 4), dtype=bool)
    p[1, 0] = p[2, 0] = p[0, 3] = True  # 2 of 3 true, 1 false
    assert precision_recall_f1(p, t) == pytest.approx((2 / 3, 2 / 3, 2 / 3), abs=1e-15)
    p2 = p.copy()
    p2[0, 3] = False
    prec, rec, f1 = precision_recall_f1(p2, t)
    assert (prec, rec) == (1.0, pytest.approx(2 / 3)) and f1 == pytest.approx(0.8)


def test_empty_prediction_and_empty_truth_are_zero() -> None:
    t = _truth()
    assert precision_recall_f1(np.zeros((6, 6), dtype=bool), t) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(t, np.zeros((6, 6), dtype=bool)) == (0.0, 0.0, 0.0)


def test_precision_recall_f1_diagonal_only_with_include_self() -> None:
    eye = np.eye(3, dtype=bool)
    assert precision_recall_f1(eye, eye) == (0.0, 0.0, 0.0)  # nothing scored off the diagonal
    assert precision_recall_f1(eye, eye, include_self=True) == (1.0, 1.0, 1.0)


def test_lag_accuracy_is_none_when_no_true_edge_is_detected() -> None:
    t = np.zeros((3, 3), dtype=bool)
    t[1, 0] = True
    lags = np.ones((3, 3), dtype=np.int64)
    assert lag_accuracy(np.zeros((3, 3), dtype=bool), lags, t, lags) is None
    p = np.zeros((3, 3), dtype=bool)
    p[0, 1] = True  # a false positive only
    assert lag_accuracy(p, lags, t, lags) is None
    assert lag_accuracy(np.eye(3, dtype=bool), lags, np.eye(3, dtype=bool), lags) is None  # diagonal excluded
    assert lag_accuracy(np.eye(3, dtype=bool), lags, np.eye(3, dtype=bool), lags, include_self=True) == 1.0


def test_lag_accuracy_counts_only_detected_true_edges() -> None:
    t = np.zeros((4, 4), dtype=bool)
    t[1, 0] = t[2, 0] = t[3, 1] = t[0, 3] = True
    true_lags = np.zeros((4, 4), dtype=np.int64)
    true_lags[t] = [3, 1, 2, 2]  # row-major: [0, 3], [1, 0], [2, 0], [3, 1]
    p = t.copy()
    p[0, 3] = False  # undetected: its lag must not matter
    p[2, 3] = True  # false positive: its lag must not matter
    lh = true_lags.copy()
    lh[0, 3] = 5
    lh[2, 3] = 4
    lh[3, 1] = 1  # one wrong lag among the three detected true edges
    assert lag_accuracy(p, lh, t, true_lags) == pytest.approx(2 / 3, abs=1e-15)


def test_graph_metrics_gathers_and_reports_na() -> None:
    t = np.zeros((3, 3), dtype=bool)
    t[1, 0] = True
    lags = np.ones((3, 3), dtype=np.int64)
    m = graph_metrics(t.astype(float), t, lags, t, lags)
    assert isinstance(m, GraphMetrics)
    assert (m.auroc, m.auprc, m.precision, m.recall, m.f1, m.lag_accuracy) == (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert (m.n_true, m.n_pred, m.include_self) == (1, 1, False)
    d = m.to_dict()
    assert json.loads(json.dumps(d)) == d and set(d) == {
        "auroc", "auprc", "precision", "recall", "f1", "lag_accuracy", "n_true", "n_pred", "include_self"}
    # No lags for Lorenz-96; no ranking metric when the truth is one class.
    assert graph_metrics(t.astype(float), t, lags, t, lags, lags_defined=False).lag_accuracy is None
    empty = np.zeros((3, 3), dtype=bool)
    m0 = graph_metrics(np.zeros((3, 3)), t, lags, empty, lags)
    assert m0.auroc is None and m0.auprc is None and m0.n_true == 0 and m0.precision == 0.0
    full = ~np.eye(3, dtype=bool)
    assert graph_metrics(np.zeros((3, 3)), t, lags, full, lags).auroc is None
    # Diagonal counted only with include_self.
    eye = np.eye(3, dtype=bool)
    assert graph_metrics(np.zeros((3, 3)), eye, lags, t, lags).n_pred == 0
    assert graph_metrics(np.zeros((3, 3)), eye, lags, t, lags, include_self=True).n_pred == 3


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: auroc(np.zeros((3, 4)), np.zeros((3, 4), bool)), "truth"),
        (lambda: auroc(np.zeros((3, 3)), np.zeros((3, 3), np.int64)), "truth"),
        (lambda: auroc(np.zeros((4, 4)), np.eye(3, dtype=bool)), "scores"),
        (lambda: auroc(np.full((3, 3), np.nan), np.eye(3, dtype=bool)), "scores"),
        (lambda: auroc(np.zeros((3, 3), bool), np.eye(3, dtype=bool)), "scores"),
        (lambda: auroc([[0.0]], np.eye(1, dtype=bool)), "scores"),
        (lambda: auroc(np.zeros((3, 3)), np.eye(3, dtype=bool), include_self=1), "include_self"),
        (lambda: precision_recall_f1(np.zeros((2, 2), bool), np.eye(3, dtype=bool)), "pred"),
        (lambda: precision_recall_f1(np.zeros((3, 3)), np.eye(3, dtype=bool)), "pred"),
        (lambda: lag_accuracy(np.eye(3, dtype=bool), np.ones((3, 3)), np.eye(3, dtype=bool),
                              np.ones((3, 3), np.int64)), "lags_hat"),
        (lambda: lag_accuracy(np.eye(3, dtype=bool), np.ones((3, 3), np.int64), np.eye(3, dtype=bool),
                              np.ones((2, 2), np.int64)), "true_lags"),
        (lambda: graph_metrics(np.zeros((3, 3)), np.eye(3, dtype=bool), np.ones((3, 3), np.int64),
                               np.eye(3, dtype=bool), np.ones((3, 3), np.int64), lags_defined=None), "lags_defined"),
        (lambda: to_pcmci_layout(np.zeros((3, 3))), "lagged"),
        (lambda: to_pcmci_layout(np.zeros((3, 2, 2))), "lagged"),
        (lambda: from_pcmci_layout(np.zeros((3, 3, 1))), "matrix"),
        (lambda: edge_scores(np.full((2, 2, 2), np.nan)), "lagged"),
        (lambda: edge_scores(np.zeros((2, 2, 2), bool)), "lagged"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must"):
        call()


# ------------------------------------------------------------------------------------------------- oracle 8


def test_layout_round_trips_are_the_identity() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5, 4))  # attnlab (N, N, P)
    assert np.array_equal(from_pcmci_layout(to_pcmci_layout(a)), a)
    m = rng.normal(size=(5, 5, 5))  # PCMCI (N, N, P + 1)
    m[:, :, 0] = 0.0  # the unused contemporaneous slot, equal to the fill
    assert np.array_equal(to_pcmci_layout(from_pcmci_layout(m)), m)
    m[:, :, 0] = 1.0
    assert np.array_equal(to_pcmci_layout(from_pcmci_layout(m), fill=1.0), m)
    b = rng.random((3, 3, 2)) < 0.5
    assert np.array_equal(from_pcmci_layout(to_pcmci_layout(b, fill=False)), b)


@pytest.mark.parametrize("i,j,tau", [(2, 0, 1), (0, 3, 3), (1, 2, 2)])
def test_a_planted_edge_sits_at_effect_cause_in_attnlab_and_cause_effect_tau_in_pcmci(i: int, j: int,
                                                                                      tau: int) -> None:
    n, p = 4, 3
    lagged = np.zeros((n, n, p))
    lagged[i, j, tau - 1] = 0.7  # j -> i at lag tau
    pc = to_pcmci_layout(lagged)
    assert pc.shape == (n, n, p + 1)
    assert pc[j, i, tau] == 0.7 and np.count_nonzero(pc) == 1
    s, lags = edge_scores(lagged)
    assert s[i, j] == 0.7 and lags[i, j] == tau and np.count_nonzero(s) == 1
    # And from PCMCI's side.
    pc2 = np.zeros((n, n, p + 1))
    pc2[j, i, tau] = 0.4
    back = from_pcmci_layout(pc2)
    assert back[i, j, tau - 1] == 0.4 and np.count_nonzero(back) == 1


def test_edge_scores_max_and_argmax_lag_with_ties_to_the_smallest_lag() -> None:
    lagged = np.array([[[0.1, 0.5, 0.2], [0.3, 0.3, 0.0]], [[0.0, 0.0, 0.9], [-1.0, -2.0, -0.5]]])
    s, lags = edge_scores(lagged)
    assert s.tolist() == [[0.5, 0.3], [0.9, -0.5]]
    assert lags.tolist() == [[2, 1], [3, 3]] and lags.dtype == np.int64


def test_metrics_on_a_generated_system() -> None:
    from attnlab.discovery.generators import generate

    g = generate("var", n_vars=6, length=1, seed=2, burn_in=0)
    truth, true_lags = g.adjacency(), g.lag_matrix()
    # The true coefficients as lag-resolved scores: a perfect ranking with the true lags.
    lagged = np.abs(np.array(g.params["coefs"])).transpose(1, 2, 0)  # (N, N, P) [effect, cause, tau - 1]
    s, lags = edge_scores(lagged)
    m = graph_metrics(s, s > 0, lags, truth, true_lags)
    assert (m.auroc, m.auprc, m.f1, m.lag_accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert m.n_true == int(truth.sum()) == len([e for e in g.edges if e[0] != e[1]])
