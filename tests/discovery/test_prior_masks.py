"""Prior-knowledge masks and the causal-discovery forecaster: spec time_series.md D.9 oracles 1, 2, 3 and 5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.masks.priors import check_exclusions, propagated_masks, stream_masks, table_mask
from attnlab.models.timeseries.causal import CausalForecaster, CausalForecasterConfig


def _excl(N: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """(N, N) bool from (cause j, effect i) pairs."""
    m = torch.zeros(N, N, dtype=torch.bool)
    for j, i in pairs:
        m[i, j] = True
    return m


def _jacobian(model: CausalForecaster, x: torch.Tensor) -> torch.Tensor:
    """(B, N_out, N_in, P) of model(x) w.r.t. x, by one backward pass per output."""
    x = x.clone().requires_grad_(True)
    y = model(x)
    rows = [torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0] for i in range(y.shape[1])]
    return torch.stack(rows, dim=1)


def _model(N: int, P: int, excl: torch.Tensor | None, *, tokens: str, masking: str, n_layers: int,
           dtype: torch.dtype, seed: int = 0) -> CausalForecaster:
    torch.manual_seed(seed)
    cfg = CausalForecasterConfig(tokens=tokens, masking=masking, n_layers=n_layers, d_model=16, n_heads=2)
    m = cfg.build(n_vars=N, look_back=P, exclude=excl).to(dtype)
    # make the attention matter: large random weights so that every allowed path carries a visible gradient
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


# ------------------------------------------------------------------------------------------- oracle 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tokens", ["variable", "lag"])
@pytest.mark.parametrize("masking", ["propagate", "streams"])
@pytest.mark.parametrize("n_layers", [1, 3, 6])
def test_excluded_gradients_are_exactly_zero_at_any_depth(dtype, tokens, masking, n_layers):
    N, P = 6, 3
    excl = _excl(N, [(1, 0), (0, 2), (4, 2), (5, 3), (2, 5), (3, 1)])
    m = _model(N, P, excl, tokens=tokens, masking=masking, n_layers=n_layers, dtype=dtype)
    J = _jacobian(m, torch.randn(5, N, P, dtype=dtype))  # (B, N, N, P)
    excluded = J[:, excl]  # (B, n_excluded, P)
    assert excluded.abs().max().item() == 0.0  # exact, not small
    # the check can fail: allowed links do carry gradient (the own past always does)
    own = J[:, torch.arange(N), torch.arange(N)]  # (B, N, P)
    assert (own.abs().amax(dim=(0, 2)) > 0).all()


@pytest.mark.parametrize("masking", ["propagate", "streams"])
def test_no_exclusion_means_the_unmasked_model(masking):
    N, P = 4, 3
    x = torch.randn(2, N, P, dtype=torch.float64)
    a = _model(N, P, None, tokens="variable", masking=masking, n_layers=2, dtype=torch.float64)
    b = _model(N, P, torch.zeros(N, N, dtype=torch.bool), tokens="variable", masking="propagate", n_layers=2,
               dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert a._masks is None and b._masks is None


def test_streams_are_not_conservative_but_propagation_is():
    """Construction (b) keeps every non-excluded path; (a) may also block a true parent's token once it has absorbed
    an excluded source (spec D.3): here 2 -> 0 is allowed, but token 2 reads token 1 (excluded for 0) in layer 1."""
    N, P = 3, 2
    excl = _excl(N, [(1, 0)])  # 1 does not cause 0
    allowed, sources = propagated_masks(excl, 2)
    assert allowed[0, 0, 2] and not allowed[1, 0, 2]  # layer 2: query 0 may no longer read token 2
    m = _model(N, P, excl, tokens="variable", masking="streams", n_layers=2, dtype=torch.float64)
    J = _jacobian(m, torch.randn(4, N, P, dtype=torch.float64))
    assert J[:, 0, 2].abs().max() > 0  # the stream of variable 0 still sees variable 2


# ------------------------------------------------------------------------------------------- oracle 2


@settings(max_examples=40, deadline=None)
@given(N=st.integers(2, 7), n_layers=st.integers(1, 5), data=st.data())
def test_propagation_closure(N, n_layers, data):
    bits = data.draw(st.lists(st.booleans(), min_size=N * N, max_size=N * N))
    excl = torch.tensor(bits).view(N, N) & ~torch.eye(N, dtype=torch.bool)
    allowed, sources = propagated_masks(excl, n_layers)
    final = sources[-1]  # (K, N)
    assert not (final & excl).any()  # S[i] ∩ Excl[i] = ∅
    assert allowed.diagonal(dim1=1, dim2=2).all()  # every token sees itself
    # sources are exactly the variables with a path into the token: enumerate paths k_0 -> k_1 -> ... -> k_L = q
    # explicitly (k_{l+1} reads k_l at layer l, or stays itself), backwards from each token
    for q in range(N):
        frontier = {q}
        for layer in reversed(range(n_layers)):
            frontier = {k for t in frontier for k in range(N) if k == t or bool(allowed[layer, t, k])}
        assert {v for v in range(N) if final[q, v]} == frontier


@pytest.mark.parametrize("tokens", ["variable", "lag"])
def test_every_variable_with_a_gradient_lies_in_the_source_set(tokens):
    N, P = 5, 2
    excl = _excl(N, [(1, 0), (2, 1), (3, 2), (0, 4)])
    m = _model(N, P, excl, tokens=tokens, masking="propagate", n_layers=3, dtype=torch.float64)
    J = _jacobian(m, torch.randn(4, N, P, dtype=torch.float64))  # (B, N, N, P)
    depends = J.abs().amax(dim=(0, 3)) > 0  # (N, N): output i depends on input j
    src = m.sources[-1]  # (K, N)
    src_var = src.view(N, -1, N).any(dim=1) if tokens == "lag" else src  # (N, N)
    assert not (depends & ~src_var).any()
    assert not (depends & excl).any()


# ------------------------------------------------------------------------------------------- oracle 3


@pytest.mark.parametrize("masking,excl", [("streams", None), ("streams", [(1, 0), (2, 1)]),
                                          ("propagate", [(1, 0), (2, 1)])])
@pytest.mark.parametrize("tokens", ["variable", "lag"])
def test_no_future_leakage(masking, excl, tokens):
    """Windows cut from one series: the forecast of time t has zero gradient w.r.t. every value at time >= t (also
    through the streams' reshuffled batch)."""
    N, P, R = 3, 4, 12
    m = _model(N, P, _excl(N, excl) if excl else None, tokens=tokens, masking=masking, n_layers=2,
               dtype=torch.float64)
    series = torch.randn(R, N, dtype=torch.float64, requires_grad=True)
    ts = torch.arange(P, R)  # forecast times
    x = torch.stack([series[t - P : t].T for t in ts])  # (B, N, P)
    y = m(x)  # (B, N)
    for b, t in enumerate(ts.tolist()):
        (g,) = torch.autograd.grad(y[b].sum(), series, retain_graph=True)  # (R, N)
        assert g[t:].abs().max().item() == 0.0
        assert g[t - P : t].abs().max().item() > 0.0


def test_windows_and_splits_of_the_task_data():
    """A series whose value is its row number: every window's inputs are the P rows before its target, the splits
    follow each other in time, and the statistics come from the training rows only."""
    from attnlab.data.timeseries import TimeSeries
    from attnlab.tasks.causal_discovery import prepare_discovery_data

    R, P = 50, 3
    values = np.stack([np.arange(R, dtype=float), 2 * np.arange(R, dtype=float)], axis=1)
    d = prepare_discovery_data(TimeSeries(name="rows", dates=None, values=values, columns=("a", "b")), look_back=P,
                               train_fraction=0.7, test_fraction=0.2)
    np.testing.assert_allclose(d.mean, values[:35].mean(axis=0))
    targets = {}
    for split in ("train", "val", "test"):
        x, y = d.windows(split)
        row = np.rint(y[:, 0] * d.std[0] + d.mean[0]).astype(int)  # the target's row number
        xr = np.rint(x[:, 0] * d.std[0] + d.mean[0]).astype(int)  # (B, P) input rows of variable a
        np.testing.assert_array_equal(xr, row[:, None] + np.arange(-P, 0)[None, :])
        targets[split] = row
    assert targets["train"].tolist() == list(range(P, 35))
    assert targets["val"].tolist() == list(range(35, 40)) and targets["test"].tolist() == list(range(40, 50))


# ------------------------------------------------------------------------------------------- oracle 5


@pytest.mark.parametrize("masking", ["propagate", "streams"])
@pytest.mark.parametrize("tokens", ["variable", "lag"])
def test_permutation_equivariance(masking, tokens):
    N, P = 5, 3
    excl = _excl(N, [(1, 0), (3, 2), (0, 4)])
    m = _model(N, P, excl, tokens=tokens, masking=masking, n_layers=2, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    mp = CausalForecaster(m.config, n_vars=N, look_back=P, exclude=excl[perm][:, perm]).to(torch.float64).eval()
    state = m.state_dict()
    state["var_emb"] = state["var_emb"][perm]
    mp.load_state_dict(state)
    x = torch.randn(4, N, P, dtype=torch.float64)
    torch.testing.assert_close(mp(x[:, perm]), m(x)[:, perm], rtol=1e-12, atol=1e-12)
    J, Jp = _jacobian(m, x), _jacobian(mp, x[:, perm])
    torch.testing.assert_close(Jp, J[:, perm][:, :, perm], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------- masks' API


def test_stream_mask_rows_and_table_mask():
    excl = _excl(3, [(1, 0)])
    s = stream_masks(excl)  # (3, 3, 3)
    assert s[0, 0].tolist() == [True, False, True] and s[0, 2].tolist() == [True, False, True]
    assert s[0, 1].tolist() == [True, True, True]  # the excluded token still reads others and itself
    assert s[1].all() and s[2].all()
    m = table_mask(s)
    b = torch.arange(6).view(6, 1, 1, 1)
    q = torch.arange(3).view(1, 1, 3, 1)
    kv = torch.arange(3).view(1, 1, 1, 3)
    dense = m(b, torch.zeros(1), q, kv)  # (6, 1, 3, 3)
    assert torch.equal(dense[3, 0], s[0]) and torch.equal(dense[4, 0], s[1])
    assert m.per_batch and m.max_len == 3


def test_bad_exclusions_are_refused():
    with pytest.raises(ValueError, match="own past"):
        check_exclusions(torch.eye(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="square"):
        check_exclusions(torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_vars=4"):
        check_exclusions(torch.zeros(3, 3, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="n_layers"):
        propagated_masks(torch.zeros(2, 2, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match=r"x must be windows \(B, N=3, P=2\)"):
        CausalForecasterConfig().build(n_vars=3, look_back=2)(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="masking"):
        CausalForecasterConfig(masking="sometimes")  # type: ignore[arg-type]
