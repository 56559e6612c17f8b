"""Synthetic causal systems (spec time_series.md D.6, oracle D.9 9): stability, finiteness, coefficients == truth,
the data follow the recorded parameters, determinism, graph statistics, Lorenz-96 dynamics and parents, the
confounder's spurious link, argument errors, CSV round trip."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from attnlab.discovery.generators import (
    KINDS,
    SyntheticSystem,
    _simulate_linear,
    companion_spectral_radius,
    generate,
)

SMALL = {"n_vars": 5, "length": 300, "seed": 0}


def _coef_edges(coefs: np.ndarray) -> set[tuple[int, int, int]]:
    """(cause, effect, lag) of the non-zero entries of coefs (P, N, N)."""
    return {(int(j), int(i), int(t) + 1) for t, i, j in zip(*np.nonzero(coefs))}


# ------------------------------------------------------------------------------------------------- companion


def test_companion_radius_of_a_scalar_ar2_is_its_largest_root() -> None:
    # x_t = 0.5 x_{t-1} + 0.3 x_{t-2}: roots of z^2 - 0.5 z - 0.3.
    coefs = np.array([[[0.5]], [[0.3]]])
    expected = max(abs(r) for r in np.roots([1.0, -0.5, -0.3]))
    assert companion_spectral_radius(coefs) == pytest.approx(expected, abs=1e-12)
    assert companion_spectral_radius(np.array([[[0.2, 0.0], [0.0, -0.7]]])) == pytest.approx(0.7, abs=1e-12)


def test_companion_eigenvalues_solve_the_var_characteristic_equation() -> None:
    # The radius is the largest |lambda| with det(lambda^2 I - lambda A_1 - A_2) = 0 (block layout check).
    rng = np.random.default_rng(3)
    a1, a2 = rng.normal(0, 0.4, (2, 3, 3))
    rho = companion_spectral_radius(np.stack([a1, a2]))
    comp = np.block([[a1, a2], [np.eye(3), np.zeros((3, 3))]])
    lam = np.linalg.eigvals(comp)
    top = lam[np.argmax(np.abs(lam))]
    assert abs(np.linalg.det(top**2 * np.eye(3) - top * a1 - a2)) < 1e-10
    assert rho == pytest.approx(abs(top), abs=1e-12)
    # A transposed block (A_1^T) would in general give another radius: the function must follow A_tau[i, j].
    asym = np.array([[[0.0, 0.9], [0.0, 0.0]], [[0.0, 0.0], [0.5, 0.0]]])
    ref = np.block([[asym[0], asym[1]], [np.eye(2), np.zeros((2, 2))]])
    assert companion_spectral_radius(asym) == pytest.approx(np.max(np.abs(np.linalg.eigvals(ref))), abs=1e-12)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((1, 2, 3)), np.zeros((0, 2, 2)), [[[0.5]]],
                                 np.array([[[np.nan]]])])
def test_companion_rejects_bad_coefs(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^coefs"):
        companion_spectral_radius(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["var", "svar", "confounder"])
@pytest.mark.parametrize("n_vars,max_lag", [(2, 1), (5, 3), (10, 5), (20, 3)])
def test_discrete_kinds_are_scaled_to_radius_at_most_095(kind: str, n_vars: int, max_lag: int) -> None:
    for seed in range(3):
        s = generate(kind, n_vars=n_vars, length=20, seed=seed, max_lag=max_lag, burn_in=0)
        coefs = np.array(s.params["coefs"])
        assert coefs.shape == (max_lag, n_vars, n_vars)
        # G2 is checked on |A| (the dominating linear system); |A| >= A in radius, so A passes as well.
        rho = companion_spectral_radius(np.abs(coefs) if kind == "svar" else coefs)
        assert rho <= 0.95 + 1e-12
        assert 0.0 < s.params["scale"] <= 1.0


def test_scaling_is_active_for_dense_graphs() -> None:
    # At N = 20 the unscaled graph is unstable for most seeds: the scale must drop below 1 and land near 0.95.
    params = [generate("var", n_vars=20, length=1, seed=s, burn_in=0).params for s in range(4)]
    assert any(p["scale"] < 1.0 for p in params)
    for p in params:
        if p["scale"] < 1.0:
            assert 0.85 <= p["spectral_radius"] <= 0.95 + 1e-12


# ------------------------------------------------------------------------------------------------- finiteness


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_finite_float64_of_the_requested_shape(kind: str) -> None:
    for n_vars in (4, 7):
        s = generate(kind, n_vars=n_vars, length=400, seed=1)
        assert s.kind == kind
        assert s.data.shape == (400, n_vars) and s.data.dtype == np.float64
        assert np.all(np.isfinite(s.data))
        assert len(s.columns) == n_vars
        assert not s.data.flags.writeable


def test_large_forcing_lorenz96_overflow_raises_naming_kind_and_step() -> None:
    with pytest.raises(RuntimeError, match=r"lorenz96.*step \d+"):
        generate("lorenz96", n_vars=5, length=10, seed=0, forcing=1e8)


def test_linear_simulation_overflow_raises_at_the_first_bad_step() -> None:
    # x_t = 1e10 x_{t-1} + 1 exceeds float64 at t = 31 (1e10 ** 31 = 1e310).
    with pytest.raises(RuntimeError, match=r"kind='var'.*step 31$"):
        _simulate_linear("var", np.array([[[1e10]]]), np.ones((100, 1)))


# ------------------------------------------------------------------------------------------------- truth


@pytest.mark.parametrize("kind", ["var", "svar", "confounder"])
def test_nonzero_coefficients_are_exactly_the_truth_set(kind: str) -> None:
    for seed in range(4):
        s = generate(kind, n_vars=6, length=10, seed=seed, max_lag=4)
        coefs = np.array(s.params["coefs"])
        assert _coef_edges(coefs) == set(s.edges)
        assert list(s.edges) == sorted(s.edges)
        # One lag per ordered pair, every self-edge at lag 1.
        pairs = [(c, e) for c, e, _ in s.edges]
        assert len(pairs) == len(set(pairs))
        assert {(i, i, 1) for i in range(6)} <= set(s.edges)
        adj, lags = s.adjacency(include_self=True), s.lag_matrix()
        for c, e, lag in s.edges:
            assert adj[e, c] and lags[e, c] == lag
        assert adj.sum() == len(s.edges)
        assert not np.diag(s.adjacency()).any() and np.diag(adj).all()


def test_var_coefficient_ranges_before_scaling() -> None:
    for seed in range(5):
        s = generate("var", n_vars=6, length=1, seed=seed, max_lag=3, burn_in=0)
        coefs = np.array(s.params["coefs"]) / s.params["scale"]
        diag = coefs[0][np.eye(6, dtype=bool)]
        assert np.all((diag >= 0.2) & (diag <= 0.5))
        off = np.abs(coefs[:, ~np.eye(6, dtype=bool)])
        off = off[off > 0]
        assert np.all((off >= 0.3) & (off <= 0.8))
        assert np.all(coefs[1:][:, np.eye(6, dtype=bool)] == 0)  # self-edges only at lag 1


def _lagged(x: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets x_t (T - p, N) and regressors [x_{t-1} ... x_{t-p}] (T - p, N p)."""
    t = x.shape[0]
    past = np.concatenate([x[p - tau : t - tau] for tau in range(1, p + 1)], axis=1)
    return x[p:], past


def test_var_data_follow_the_recorded_coefficients() -> None:
    # Least squares on a long series recovers A_tau[i, j] (row = effect, column = cause) to about 0.03; a
    # transposed or lag-shifted simulation would not.
    s = generate("var", n_vars=3, length=20_000, seed=4, max_lag=2, noise=0.5)
    coefs = np.array(s.params["coefs"])  # (P, N, N)
    y, past = _lagged(s.data, 2)
    beta, *_ = np.linalg.lstsq(past, y, rcond=None)  # (N P, N)
    est = beta.T.reshape(3, 2, 3).transpose(1, 0, 2)  # (P, N, N)
    assert np.max(np.abs(est - coefs)) < 0.03
    resid = y - past @ np.concatenate(list(coefs), axis=1).T
    assert np.std(resid) == pytest.approx(0.5, rel=0.03)


def test_svar_data_follow_the_recorded_functions() -> None:
    s = generate("svar", n_vars=5, length=5000, seed=2, max_lag=3, noise=2.0)
    coefs = np.array(s.params["coefs"])
    funcs = s.params["functions"]
    fmap = {"identity": lambda u: u, "tanh": np.tanh, "sin": np.sin}
    x = s.data
    pred = np.zeros((x.shape[0] - 3, 5))
    used = set()
    for c, e, lag in s.edges:
        f = fmap[funcs[e][c]]
        used.add(funcs[e][c])
        pred[:, e] += coefs[lag - 1, e, c] * f(x[3 - lag : x.shape[0] - lag, c])
    assert all(funcs[i][i] == "identity" for i in range(5))
    assert all(funcs[e][c] is None for e in range(5) for c in range(5) if not s.adjacency(include_self=True)[e, c])
    resid = x[3:] - pred
    # Per variable: the sample std of 5000 draws is within 1 % (one sd) of 2.0; 4 % is four sds.
    assert np.allclose(np.std(resid, axis=0), 2.0, rtol=0.04, atol=0.0)
    assert np.max(np.abs(resid.mean(axis=0))) < 0.12
    assert len(used) >= 2  # the nonlinearities are actually in use


def test_var_mean_in_degree_is_about_two() -> None:
    degrees = [generate("var", n_vars=10, length=1, seed=s, burn_in=0).adjacency().sum(axis=1).mean()
               for s in range(20)]
    assert 1.6 <= float(np.mean(degrees)) <= 2.4
    lags = {lag for s in range(5) for c, e, lag in generate("var", n_vars=10, length=1, seed=s, max_lag=4,
                                                             burn_in=0).edges if c != e}
    assert lags == {1, 2, 3, 4}


def test_var_two_variables_always_have_both_cross_edges() -> None:
    # p = 2 / (N - 1) is clipped to 1 at N = 2.
    for seed in range(3):
        assert generate("var", n_vars=2, length=1, seed=seed, burn_in=0).adjacency().sum() == 2


@pytest.mark.parametrize("n_vars", [4, 5, 7])
def test_lorenz96_parents_are_i_minus_2_i_minus_1_i_plus_1_and_self(n_vars: int) -> None:
    s = generate("lorenz96", n_vars=n_vars, length=5, seed=0)
    adj = s.adjacency(include_self=True)
    for i in range(n_vars):
        assert set(np.nonzero(adj[i])[0]) == {(i - 2) % n_vars, (i - 1) % n_vars, i, (i + 1) % n_vars}
    assert all(lag == 1 for _, _, lag in s.edges)
    assert s.lags_defined is False
    assert len(s.edges) == 4 * n_vars


def test_lorenz96_samples_follow_the_ode_with_observation_noise_01() -> None:
    # Sampling every dt: the central difference of the observations matches the Lorenz-96 right-hand side up to
    # the observation noise (0.1 * sqrt(2) / (2 dt) ~ 7.07 RMS); the mirrored system (i+2, i+1, i-1) does not.
    s = generate("lorenz96", n_vars=6, length=2000, seed=1, sample_every=0.01, forcing=10.0)
    x = s.data
    fd = (x[2:] - x[:-2]) / 0.02
    xm = x[1:-1]
    rhs = (np.roll(xm, -1, axis=1) - np.roll(xm, 2, axis=1)) * np.roll(xm, 1, axis=1) - xm + 10.0
    mirrored = (np.roll(xm, 1, axis=1) - np.roll(xm, -2, axis=1)) * np.roll(xm, -1, axis=1) - xm + 10.0
    assert np.corrcoef(fd.ravel(), rhs.ravel())[0, 1] > 0.9
    assert np.corrcoef(fd.ravel(), mirrored.ravel())[0, 1] < 0.6
    assert 6.0 < np.sqrt(np.mean((fd - rhs) ** 2)) < 8.5


def test_lorenz96_sample_every_thins_the_same_trajectory() -> None:
    a = generate("lorenz96", n_vars=5, length=50, seed=3, sample_every=0.01)
    b = generate("lorenz96", n_vars=5, length=10, seed=3, sample_every=0.05)
    # Same initial state; observation noise differs in size of the draw, so compare up to it (std 0.1 each).
    assert np.max(np.abs(a.data[4::5] - b.data)) < 1.0
    assert b.params["sample_every"] == 0.05 and b.params["observation_noise"] == 0.1


# ------------------------------------------------------------------------------------------------- confounder


def test_confounder_truth_has_no_x_y_link_but_the_data_show_one_at_lag_2() -> None:
    s = generate("confounder", n_vars=5, length=5000, seed=0)
    assert s.columns == ("x", "y", "x2", "x3", "x4")
    assert s.data.shape == (5000, 5)  # the latent z is not observed
    pairs = {(c, e) for c, e, _ in s.edges}
    assert (0, 1) not in pairs and (1, 0) not in pairs
    assert {(0, 0, 1), (1, 1, 1)} <= set(s.edges)
    # x and y are not linked with the extra VAR either.
    assert all((c < 2) == (e < 2) for c, e, _ in s.edges)
    x, y = s.data[:, 0], s.data[:, 1]
    corr = {lag: np.corrcoef(x[: -lag], y[lag:])[0, 1] for lag in (1, 2, 3, 4)}
    assert corr[2] > 0.3  # the spurious x(t - 2) -> y(t)
    assert corr[2] == max(corr.values())
    assert abs(np.corrcoef(s.data[:-2, 2], y[2:])[0, 1]) < 0.1  # an unrelated observed variable
    assert s.params["latent"]["spurious"] == {"cause": "x", "effect": "y", "lag": 2}


def test_confounder_with_two_variables() -> None:
    s = generate("confounder", n_vars=2, length=50, seed=0)
    assert s.columns == ("x", "y")
    assert s.edges == ((0, 0, 1), (1, 1, 1))


# ------------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_is_bitwise_identical_and_another_seed_differs(kind: str) -> None:
    a = generate(kind, **SMALL)
    b = generate(kind, **SMALL)
    c = generate(kind, **(SMALL | {"seed": 1}))
    assert a.data.tobytes() == b.data.tobytes()
    assert a.edges == b.edges and a.params == b.params
    assert not np.array_equal(a.data, c.data)
    assert json.loads(json.dumps(a.params)) == a.params  # JSON-serialisable


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"kind": "varx"}, "kind"),
        ({"kind": 3}, "kind"),
        ({"n_vars": 1}, "n_vars"),
        ({"n_vars": True}, "n_vars"),
        ({"n_vars": 5.0}, "n_vars"),
        ({"kind": "lorenz96", "n_vars": 3}, "n_vars"),
        ({"length": 0}, "length"),
        ({"seed": -1}, "seed"),
        ({"max_lag": 0}, "max_lag"),
        ({"noise": 0.0}, "noise"),
        ({"noise": -1.0}, "noise"),
        ({"noise": math.nan}, "noise"),
        ({"noise": math.inf}, "noise"),
        ({"forcing": math.nan}, "forcing"),
        ({"forcing": -1.0}, "forcing"),
        ({"sample_every": 0.0}, "sample_every"),
        ({"sample_every": 0.015}, "sample_every"),
        ({"burn_in": -1}, "burn_in"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs: dict, name: str) -> None:
    args = {"kind": "var", "n_vars": 4, "length": 10, "seed": 0} | kwargs
    kind = args.pop("kind")
    with pytest.raises(ValueError, match=rf"^{name} must") as info:
        generate(kind, **args)
    if name == "kind":
        assert all(repr(k) in str(info.value) for k in KINDS)


# ------------------------------------------------------------------------------------------------- outputs


def test_to_csv_round_trips_exactly_and_refuses_to_overwrite(tmp_path: Path) -> None:
    s = generate("svar", n_vars=4, length=200, seed=5)
    path = tmp_path / "g2.csv"
    assert s.to_csv(path) == path
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == s.columns
    values = np.array([[float(v) for v in row] for row in rows[1:]])
    assert values.shape == s.data.shape and np.array_equal(values, s.data)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=str(path).replace("\\", "\\\\")):
        s.to_csv(str(path))
    assert path.read_bytes() == before


def test_truth_dict_is_json_and_names_the_edges() -> None:
    s = generate("confounder", n_vars=3, length=20, seed=0)
    d = json.loads(json.dumps(s.truth_dict()))
    assert d["kind"] == "confounder" and d["columns"] == ["x", "y", "x2"] and d["lags_defined"] is True
    assert {"cause": "x", "effect": "x", "lag": 1} in d["edges"]
    assert len(d["edges"]) == len(s.edges)
    assert d["params"]["seed"] == 0
    assert generate("lorenz96", n_vars=4, length=2, seed=0).truth_dict()["lags_defined"] is False


def test_lag_matrix_takes_the_smallest_of_several_lags() -> None:
    s = SyntheticSystem(kind="var", data=np.zeros((3, 2)), columns=("x0", "x1"),
                        edges=((0, 0, 1), (0, 1, 2), (0, 1, 3)), params={}, lags_defined=True)
    assert s.lag_matrix().tolist() == [[1, 0], [2, 0]]
    assert s.adjacency().tolist() == [[False, False], [True, False]]
