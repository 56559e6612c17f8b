"""Gradient extraction, thresholds and seed combination: spec time_series.md D.9 oracles 4, 6 and 8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.data.timeseries import TimeSeries
from attnlab.discovery import (
    Threshold,
    binarise,
    combine_seeds,
    estimate_graph,
    generate,
    graph_metrics,
    lagged_scores,
    normalise_rows,
)
from attnlab.discovery.linear import LinearVAR, fit_linear_var
from attnlab.discovery.metrics import from_pcmci_layout, to_pcmci_layout
from attnlab.models.timeseries.causal import CausalForecasterConfig
from attnlab.tasks.causal_discovery import prepare_discovery_data


def test_linear_sanity_g1():
    """Oracle 6: a least-squares linear forecaster on G1 (N = 5, T = 20,000, sigma = 1) has s = |A_hat| exactly, and
    its graph has AUROC 1 and lag accuracy 100 %."""
    sysm = generate("var", n_vars=5, length=20_000, seed=0, max_lag=3, noise=1.0)
    series = TimeSeries(name="g1", dates=None, values=sysm.data, columns=sysm.columns)
    data = prepare_discovery_data(series, look_back=3, train_fraction=0.7, test_fraction=0.2)
    model = fit_linear_var(*data.windows("train"))
    x, _ = data.windows("test")
    lagged = lagged_scores(model, torch.from_numpy(x))
    np.testing.assert_allclose(lagged, model.lagged_coefficients(), rtol=1e-13, atol=0)
    g = estimate_graph(lagged, list(sysm.columns))
    m = graph_metrics(g.scores, g.pred, g.lags, sysm.adjacency(), sysm.lag_matrix())
    assert m.auroc == 1.0
    assert m.lag_accuracy == 1.0
    # a perfect ranking: the oracle top-k threshold (k = the true edge count) finds every edge and nothing else
    k = int(sysm.adjacency().sum())
    top = binarise(g.scores, Threshold(method="topk", k=k))  # (over the raw scores, which AUROC ranks)
    mt = graph_metrics(g.scores, top, g.lags, sysm.adjacency(), sysm.lag_matrix())
    assert (mt.precision, mt.recall) == (1.0, 1.0)


def _planted(N: int, P: int, j: int, i: int, tau: int) -> LinearVAR:
    w = torch.zeros(N, N, P, dtype=torch.float64)
    w[torch.arange(N), torch.arange(N), P - 1] = 0.3  # self-edges at lag 1
    w[i, j, P - tau] = 0.8
    return LinearVAR(w, torch.zeros(N, dtype=torch.float64))


@pytest.mark.parametrize("j,i,tau", [(0, 1, 1), (2, 0, 3), (3, 2, 4)])
def test_planted_edge_and_layouts(j, i, tau):
    """Oracle 8: a single planted edge j -> i at lag tau is found at S[i, j] with tau_hat = tau, sits at [j, i, tau]
    in PCMCI's layout, and the layouts convert back and forth exactly."""
    N, P = 4, 4
    model = _planted(N, P, j, i, tau)
    lagged = lagged_scores(model, torch.randn(16, N, P, dtype=torch.float64))
    g = estimate_graph(lagged, [f"v{k}" for k in range(N)])
    off = g.scores.copy()
    np.fill_diagonal(off, 0)
    assert np.unravel_index(off.argmax(), off.shape) == (i, j)
    assert g.lags[i, j] == tau
    assert g.edges() == [{"cause": f"v{j}", "effect": f"v{i}", "lag": tau, "score": 1.0, "seeds": 1}]
    pc = to_pcmci_layout(lagged)
    assert pc[j, i, tau] == pytest.approx(0.8) and pc[:, :, 0].sum() == 0
    np.testing.assert_array_equal(from_pcmci_layout(pc), lagged)


def test_lag_range_of_a_trained_model():
    """Oracle 4: tau_hat lies in 1..P for every pair, and the lagged scores have one slot per lag."""
    torch.manual_seed(0)
    N, P = 4, 3
    m = CausalForecasterConfig(n_layers=2, d_model=16, n_heads=2).build(n_vars=N, look_back=P)
    lagged = lagged_scores(m, torch.randn(8, N, P))
    assert lagged.shape == (N, N, P) and (lagged >= 0).all()
    g = estimate_graph(lagged, list("abcd"))
    assert g.lags.min() >= 1 and g.lags.max() <= P


def test_lagged_scores_statistics_and_batching():
    torch.manual_seed(1)
    m = CausalForecasterConfig(n_layers=1, d_model=8, n_heads=2).build(n_vars=3, look_back=2).double()
    x = torch.randn(10, 3, 2, dtype=torch.float64)
    a = lagged_scores(m, x, batch_size=3)
    b = lagged_scores(m, x, batch_size=10)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    sq = lagged_scores(m, x, statistic="sq")
    # by hand for one entry: the mean squared gradient of output 2 w.r.t. x[:, 0, P - 1] (lag 1)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xr)[:, 2].sum(), xr)
    assert sq[2, 0, 0] == pytest.approx(float(g[:, 0, 1].square().mean()), rel=1e-12)
    assert m.training is True  # mode restored
    with pytest.raises(ValueError, match="statistic"):
        lagged_scores(m, x, statistic="max")  # type: ignore[arg-type]


def test_row_normalisation_and_thresholds():
    s = np.array([[5.0, 2.0, 1.0], [0.5, 9.0, 0.25], [0.0, 0.0, 3.0]])
    n = normalise_rows(s)
    np.testing.assert_allclose(n[0], [2.5, 1.0, 0.5])
    np.testing.assert_allclose(n[1], [1.0, 18.0, 0.5])
    np.testing.assert_allclose(n[2], [0.0, 0.0, 3.0])  # no off-diagonal score: the row is left as it is
    fixed = binarise(n, Threshold(delta=0.6))
    assert fixed[0, 1] and not fixed[0, 2] and fixed[1, 0] and not fixed[1, 2]
    top = binarise(n, Threshold(method="topk", k=2))
    off = top & ~np.eye(3, dtype=bool)
    assert off.sum() == 2 and off[0, 1] and off[1, 0]
    # k-means: three groups of off-diagonal scores (strong ~1, medium ~0.6, noise ~0.05); the top two are kept
    km_in = np.array([[1, 1.0, .62, .05, .04], [.98, 1, .6, .06, .05], [.03, .58, 1, 1.0, .04],
                      [.05, .04, .61, 1, .97], [.99, .02, .05, .6, 1]], dtype=float)
    km = binarise(km_in, Threshold(method="kmeans_global"))
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_array_equal(km[off], km_in[off] > 0.3)
    # CausalFormer's rule clusters each row on its own: a row of weak scores still gets its strongest causes
    rows = np.array([[1.0, 0.9, 0.5, 0.1, 0.12], [0.02, 0.03, 0.01, 0.025, 0.011], [0.3, 0.31, 1.0, 0.0, 0.01],
                     [0.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
    km_row = binarise(rows, Threshold(method="kmeans"))
    assert km_row[0].tolist() == [True, True, True, False, False]
    assert km_row[1].tolist() == [True, True, False, True, False]  # {0.01, 0.011} is the lowest cluster
    assert km_row[2].tolist() == [True, True, True, False, False]
    assert not km_row[3].any() and not km_row[4].any()  # nothing stands out in an all-zero or a flat row
    glob = estimate_graph(np.stack([s, s * 0], axis=-1), ["a", "b", "c"], Threshold(scale="global", delta=0.2))
    np.testing.assert_allclose(glob.normalised, s / 2.0)  # the largest off-diagonal score overall is 2
    assert glob.pred[0, 1] and not glob.pred[1, 2] and not glob.pred[2, 0]
    own = estimate_graph(np.stack([s, s * 0], axis=-1), ["a", "b", "c"], Threshold(scale="row_self"))
    np.testing.assert_allclose(own.normalised, s / np.array([[5.0], [9.0], [3.0]]))  # the row's largest, own included
    assert own.pred[0, 0] and not own.pred[0, 1] and own.pred[1, 1] and not own.pred[1, 0]
    with pytest.raises(ValueError, match="scale"):
        Threshold(scale="column")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs k"):
        Threshold(method="topk")
    with pytest.raises(ValueError, match="delta"):
        Threshold(delta=0.0)
    assert "oracle" in Threshold(method="topk", k=3).label


def test_combine_seeds_votes_and_lags():
    cols = ["a", "b", "c"]

    def g(pairs: dict[tuple[int, int], int]) -> object:
        lagged = np.full((3, 3, 3), 0.01)
        for (i, j), lag in pairs.items():
            lagged[i, j, lag - 1] = 1.0
        return estimate_graph(lagged, cols)

    # (every row has one strong parent in every seed: row normalisation makes a row's largest off-diagonal score 1)
    gs = [g({(0, 1): 2, (1, 2): 3, (2, 0): 1}), g({(0, 1): 2, (1, 0): 3, (2, 0): 1}),
          g({(0, 1): 3, (1, 0): 2, (2, 1): 1})]
    c = combine_seeds(gs)
    assert c.n_seeds == 3
    assert c.seeds[0, 1] == 3 and c.seeds[1, 0] == 2 and c.seeds[1, 2] == 1 and c.seeds[2, 0] == 2
    assert c.pred[0, 1] and c.pred[1, 0] and c.pred[2, 0] and not c.pred[1, 2] and not c.pred[2, 1]
    assert c.lags[0, 1] == 2  # the most frequent lag among the seeds that found it
    assert c.lags[1, 0] == 2  # a tie (3 and 2, once each): the smaller lag
    assert {(e["cause"], e["effect"], e["seeds"]) for e in c.edges()} == {("b", "a", 3), ("a", "b", 2),
                                                                         ("a", "c", 2)}
    assert combine_seeds(gs, min_seeds=1).pred[1, 2]
    with pytest.raises(ValueError, match="min_seeds=4"):
        combine_seeds(gs, min_seeds=4)
