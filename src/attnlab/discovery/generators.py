"""Seeded synthetic systems with known temporal causal graphs (spec ``time_series.md`` D.6), numpy only.

Shape legend: T time steps kept, N observed variables, P ``max_lag`` (largest lag of a coefficient array).

Convention (as everywhere in :mod:`attnlab.discovery`): **row = effect, column = cause**. A coefficient array
``coefs`` has shape ``(P, N, N)`` and ``coefs[tau - 1, i, j]`` is the effect of ``x_j(t - tau)`` on ``x_i(t)``. The
ground truth is a set of ``(cause, effect, lag)`` triples, self-edges included.

Four generators, selected by ``kind`` (:data:`KINDS`):

* ``"var"`` (G1, linear VAR). ``x_t = sum_tau A_tau x_{t-tau} + eps_t``, ``eps ~ N(0, noise^2 I)``. Each variable
  has a self-edge at lag 1 with coefficient ``U[0.2, 0.5]``; each ordered pair ``j != i`` is an edge with
  probability ``min(1, 2 / (N - 1))`` (mean in-degree about 2), at one lag drawn uniformly from ``1..max_lag``,
  magnitude ``U[0.3, 0.8]`` with a random sign. All ``A_tau`` are then multiplied by one common factor (several
  times if needed) until the companion matrix's spectral radius is ``<= 0.95``; the factor is recorded in
  ``params["scale"]``, and it also shrinks the self coefficients (so these may end below 0.2 after scaling).
* ``"svar"`` (G2, nonlinear SVAR). The same graph sampler; ``x_{i,t} = sum_j a_ij f_ij(x_{j,t-tau_ij}) + eps``
  with ``f_ij`` drawn per cross edge from ``identity, tanh, sin``; self-edges are linear. Stability: the
  coefficients are scaled until the companion spectral radius of ``|A|`` (element-wise absolute values) is
  ``<= 0.95``. Because ``|f(u)| <= |u|`` for the three functions, ``|x_t| <= sum_tau |A_tau| |x_{t-tau}| +
  |eps_t|`` element-wise, so the linear system with ``|A|`` dominates the nonlinear one and the series stays
  bounded in distribution; a non-finite value still raises (see below).
* ``"lorenz96"`` (G3). ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`` (indices mod N), RK4 at
  ``dt = 0.01`` from ``F + N(0, 0.01^2)`` per variable, the first 10 time units dropped, one sample every
  ``sample_every`` time units (a multiple of ``dt``), ``N(0, 0.1^2)`` observation noise added. Parents of ``i``:
  ``{i-2, i-1, i+1}`` and ``i`` itself, all recorded at lag 1; lags are not well defined for continuous dynamics
  (``lags_defined=False``: report no lag accuracy). ``noise``, ``max_lag`` and ``burn_in`` are not used.
* ``"confounder"`` (G4). A latent AR(1) driver ``z_t = 0.8 z_{t-1} + eta_t`` (``eta ~ N(0, noise^2)``, not in
  ``data``) feeds ``x`` (column 0, named ``"x"``) at lag 1 and ``y`` (column 1, named ``"y"``) at lag 3, each with
  coefficient 1.0, so ``x(t-2)`` and ``y(t)`` share ``z(t-3)``: a spurious ``x -> y`` at lag 2 appears in the data,
  but the true graph has neither ``x -> y`` nor ``y -> x``. ``x`` and ``y`` have self-edges at lag 1 with
  coefficients ``U[0.2, 0.5]``. The remaining ``N - 2`` columns (``"x2"`` ... ``"x{N-1}"``) are an independent G1
  VAR among themselves (the same sampler and scaling; a single one is an AR(1) with only its self-edge), so that
  ``N > 2`` gives AUROC something to rank.

Simulation of the three discrete kinds starts from zeros, runs ``burn_in + length`` steps and keeps the last
``length``. Everything is drawn from ``np.random.default_rng(seed)`` in a fixed order, so the same arguments give
bitwise identical data. A non-finite value during a simulation raises ``RuntimeError`` naming the kind and the
first bad step (0-based, burn-in included).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnlab._validation import check_float, check_int

__all__ = ["KINDS", "SyntheticSystem", "generate", "companion_spectral_radius"]

#: The generator kinds: G1 linear VAR, G2 nonlinear SVAR, G3 Lorenz-96, G4 latent confounder (spec D.6).
KINDS: tuple[str, ...] = ("var", "svar", "lorenz96", "confounder")

#: Target of the stability scaling of G1/G2 (spec D.6).
MAX_SPECTRAL_RADIUS = 0.95
# The nonlinearities of G2, in the order of their codes in params["functions"].
_SVAR_FUNCTIONS: tuple[str, ...] = ("identity", "tanh", "sin")
# Lorenz-96 settings fixed by the spec (D.6).
_L96_DT = 0.01
_L96_TRANSIENT_TIME = 10.0
_L96_OBSERVATION_NOISE = 0.1
_L96_INITIAL_PERTURBATION = 0.01
# G4 settings.
_G4_LATENT_AR = 0.8
_G4_LAG_X = 1
_G4_LAG_Y = 3
_G4_COUPLING = 1.0


@dataclass(frozen=True, eq=False)
class SyntheticSystem:
    """One generated series with its ground truth. ``eq=False``: instances compare by identity (arrays inside).

    Attributes:
        kind: one of :data:`KINDS`.
        data: ``(T, N)`` float64, observed variables only, burn-in dropped; read-only.
        columns: ``"x0"`` ... ``"x{N-1}"``; for ``"confounder"`` the first two are ``"x"`` and ``"y"`` and the
            others keep their index (``"x2"`` ...).
        edges: the true ``(cause, effect, lag)`` triples, self-edges included, sorted.
        params: everything needed to reproduce and to check the series (JSON-serialisable): the arguments that
            the kind uses and, for the discrete kinds, ``coefs`` as a nested list of shape ``(P, N, N)``.
        lags_defined: ``False`` for ``"lorenz96"`` (continuous dynamics, spec D.6).
    """

    kind: str
    data: np.ndarray
    columns: tuple[str, ...]
    edges: tuple[tuple[int, int, int], ...]
    params: dict[str, Any]
    lags_defined: bool

    @property
    def n_vars(self) -> int:
        """N, the number of observed variables."""
        return int(self.data.shape[1])

    def adjacency(self, *, include_self: bool = False) -> np.ndarray:
        """``(N, N)`` bool, ``[i, j]`` true iff ``j`` causes ``i`` at some lag (row = effect, column = cause).

        The diagonal (self-edges) is ``False`` unless ``include_self``.
        """
        n = self.n_vars
        adj = np.zeros((n, n), dtype=bool)  # (N, N) [effect, cause]
        for cause, effect, _ in self.edges:
            adj[effect, cause] = True
        if not include_self:
            np.fill_diagonal(adj, False)
        return adj

    def lag_matrix(self) -> np.ndarray:
        """``(N, N)`` int64: ``[i, j]`` is the true lag of the edge ``j -> i``, 0 where there is no edge.

        The diagonal holds the self-edges' lags (1 for every generator here). For a pair with several true lags
        (none of the generators here produce one) the smallest lag is given.
        """
        n = self.n_vars
        lags = np.zeros((n, n), dtype=np.int64)  # (N, N) [effect, cause]
        for cause, effect, lag in self.edges:
            if lags[effect, cause] == 0 or lag < lags[effect, cause]:
                lags[effect, cause] = lag
        return lags

    def to_csv(self, path: str | Path) -> Path:
        """Write a header of the column names, then one row per time step (no date column); returns the path.

        Values are written with ``repr``, which round-trips every float64 exactly. The file must not exist.

        Raises:
            FileExistsError: naming ``path`` if it already exists (it is never overwritten).
        """
        p = Path(path)
        try:
            f = p.open("x", newline="", encoding="utf-8")
        except FileExistsError:
            raise FileExistsError(f"to_csv: path {str(p)!r} already exists; refusing to overwrite it") from None
        with f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            for row in self.data:
                writer.writerow([repr(float(v)) for v in row])
        return p

    def truth_dict(self) -> dict[str, Any]:
        """The ground truth as a JSON-serialisable dict: kind, columns, edges (by name), lags_defined, params."""
        return {
            "kind": self.kind,
            "columns": list(self.columns),
            "edges": [
                {"cause": self.columns[c], "effect": self.columns[e], "lag": int(lag)} for c, e, lag in self.edges
            ],
            "lags_defined": self.lags_defined,
            "params": self.params,
        }


# ------------------------------------------------------------------------------------------------- stability


def companion_spectral_radius(coefs: np.ndarray) -> float:
    """Spectral radius of the VAR companion matrix of ``coefs`` ``(P, N, N)``, ``A_tau[i, j]`` = effect of
    ``x_j(t - tau)`` on ``x_i(t)``.

    The companion matrix is ``(N P, N P)``: first block row ``[A_1 ... A_P]``, identity blocks below the block
    diagonal. The VAR is stable iff the radius is ``< 1``.

    Raises:
        ValueError: if ``coefs`` is not a finite real array of shape ``(P, N, N)`` with ``P, N >= 1``.
    """
    if not isinstance(coefs, np.ndarray):
        raise ValueError(f"coefs must be a numpy array of shape (P, N, N), got {type(coefs).__name__}")
    if coefs.ndim != 3 or coefs.shape[1] != coefs.shape[2] or coefs.shape[0] < 1 or coefs.shape[1] < 1:
        raise ValueError(f"coefs must have shape (P, N, N) with P, N >= 1, got {coefs.shape}")
    if not (np.issubdtype(coefs.dtype, np.floating) or np.issubdtype(coefs.dtype, np.integer)):
        raise ValueError(f"coefs must be a real (float or int) array, got dtype {coefs.dtype}")
    if not np.all(np.isfinite(coefs)):
        raise ValueError("coefs must be finite, got NaN or inf")
    p, n, _ = coefs.shape
    companion = np.zeros((n * p, n * p), dtype=np.float64)  # (N P, N P)
    companion[:n, :] = np.concatenate(list(coefs.astype(np.float64)), axis=1)  # [A_1 ... A_P]
    if p > 1:
        companion[n:, : n * (p - 1)] = np.eye(n * (p - 1))
    return float(np.max(np.abs(np.linalg.eigvals(companion))))


def _scale_to_stable(coefs: np.ndarray, *, absolute: bool) -> tuple[np.ndarray, float]:
    """Multiply ``coefs`` by one common factor until the companion radius (of ``|coefs|`` if ``absolute``) is
    ``<= MAX_SPECTRAL_RADIUS``; returns the scaled array and the total factor (1.0 when already stable)."""
    scale = 1.0
    out = coefs
    for _ in range(200):
        rho = companion_spectral_radius(np.abs(out) if absolute else out)
        if rho <= MAX_SPECTRAL_RADIUS:
            return out, scale
        # Exact for P = 1 (the radius is then linear in the factor); for P > 1 the loop repeats as needed.
        step = min(MAX_SPECTRAL_RADIUS / rho, 0.99)
        scale *= step
        out = coefs * scale
    raise RuntimeError(f"stability scaling did not reach spectral radius <= {MAX_SPECTRAL_RADIUS} in 200 steps")


# ------------------------------------------------------------------------------------------------- samplers


def _sample_graph(rng: np.random.Generator, n: int, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The G1/G2 graph: returns ``coefs (P, n, n)`` (unscaled) and ``edge (n, n)`` bool of the cross edges."""
    coefs = np.zeros((max_lag, n, n), dtype=np.float64)  # (P, N, N)
    self_coef = rng.uniform(0.2, 0.5, size=n)  # (N,)
    coefs[0, np.arange(n), np.arange(n)] = self_coef
    edge = np.zeros((n, n), dtype=bool)
    if n >= 2:
        prob = min(1.0, 2.0 / (n - 1))
        draw = rng.random((n, n))  # (N, N)
        lags = rng.integers(1, max_lag + 1, size=(n, n))  # (N, N) in 1..P
        magnitude = rng.uniform(0.3, 0.8, size=(n, n))  # (N, N)
        sign = rng.choice(np.array([-1.0, 1.0]), size=(n, n))  # (N, N)
        edge = draw < prob
        np.fill_diagonal(edge, False)
        for i, j in zip(*np.nonzero(edge)):
            coefs[lags[i, j] - 1, i, j] = magnitude[i, j] * sign[i, j]
    return coefs, edge


def _edges_from_coefs(coefs: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """Sorted ``(cause, effect, lag)`` triples of the non-zero entries of ``coefs (P, N, N)``."""
    return tuple(sorted((int(j), int(i), int(t) + 1) for t, i, j in zip(*np.nonzero(coefs))))


def _check_finite(kind: str, x: np.ndarray) -> None:
    """Raise ``RuntimeError`` naming ``kind`` and the first step of ``x (steps, ...)`` with a non-finite value."""
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)  # (steps,)
    if bad.any():
        step = int(np.argmax(bad))
        raise RuntimeError(f"generate(kind={kind!r}): non-finite value (overflow) at simulation step {step}")


def _simulate_linear(kind: str, coefs: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """``x_t = sum_tau coefs[tau-1] x_{t-tau} + eps_t`` from a zero history; ``eps (steps, n)`` -> ``(steps, n)``."""
    p, n, _ = coefs.shape
    steps = eps.shape[0]
    stacked = np.concatenate(list(coefs), axis=1)  # (N, N P): [A_1 ... A_P]
    hist = np.zeros((steps + p, n), dtype=np.float64)  # rows 0..P-1: zero history
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            past = hist[t + p - 1 :: -1][:p]  # (P, N): x_{t-1}, ..., x_{t-P}
            hist[t + p] = stacked @ past.reshape(-1) + eps[t]  # (N,)
    x = hist[p:]
    _check_finite(kind, x)
    return x


def _simulate_svar(kind: str, coefs: np.ndarray, func: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """G2: ``x_{i,t} = sum_j coefs[tau_ij-1, i, j] f_ij(x_{j,t-tau_ij}) + eps_{i,t}``; ``func (N, N)`` holds the
    code of ``f_ij`` in :data:`_SVAR_FUNCTIONS` (self-edges: 0, identity)."""
    p, n, _ = coefs.shape
    steps = eps.shape[0]
    # One (N, N) block per (lag, function): coefs where the edge uses that function, zero elsewhere.
    blocks = [coefs[t] * (func == k) for t in range(p) for k in range(len(_SVAR_FUNCTIONS))]
    stacked = np.concatenate(blocks, axis=1)  # (N, N P 3)
    hist = np.zeros((steps + p, n), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            past = hist[t + p - 1 :: -1][:p]  # (P, N): x_{t-1}, ..., x_{t-P}
            feats = np.stack([past, np.tanh(past), np.sin(past)], axis=1)  # (P, 3, N)
            hist[t + p] = stacked @ feats.reshape(-1) + eps[t]  # (N,)
    x = hist[p:]
    _check_finite(kind, x)
    return x


def _lorenz96_rhs(x: np.ndarray, forcing: float, idx: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`` for ``x (N,)``; ``idx`` = indices of i+1, i-2, i-1."""
    plus1, minus2, minus1 = idx
    return (x[plus1] - x[minus2]) * x[minus1] - x + forcing


def _simulate_lorenz96(n: int, length: int, forcing: float, every: int, rng: np.random.Generator) -> np.ndarray:
    """RK4 at ``dt``; drop the transient; keep ``length`` samples, one every ``every`` steps; add obs. noise."""
    x = forcing + _L96_INITIAL_PERTURBATION * rng.standard_normal(n)  # (N,)
    transient = int(round(_L96_TRANSIENT_TIME / _L96_DT))
    total = transient + length * every
    out = np.empty((length, n), dtype=np.float64)
    h = _L96_DT
    i = np.arange(n)
    idx = ((i + 1) % n, (i - 2) % n, (i - 1) % n)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(total):
            k1 = _lorenz96_rhs(x, forcing, idx)
            k2 = _lorenz96_rhs(x + 0.5 * h * k1, forcing, idx)
            k3 = _lorenz96_rhs(x + 0.5 * h * k2, forcing, idx)
            k4 = _lorenz96_rhs(x + h * k3, forcing, idx)
            x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            if not np.all(np.isfinite(x)):
                raise RuntimeError(f"generate(kind='lorenz96'): non-finite value (overflow) at RK4 step {step}")
            done = step + 1 - transient  # integration steps after the transient
            if done > 0 and done % every == 0:
                out[done // every - 1] = x
    return out + _L96_OBSERVATION_NOISE * rng.standard_normal((length, n))


# ------------------------------------------------------------------------------------------------- public


def generate(
    kind: str,
    *,
    n_vars: int,
    length: int,
    seed: int,
    max_lag: int = 3,
    noise: float = 1.0,
    forcing: float = 10.0,
    sample_every: float = 0.05,
    burn_in: int = 500,
) -> SyntheticSystem:
    """Generate one seeded synthetic system of spec D.6 (see the module docstring for each ``kind``).

    Args:
        kind: one of :data:`KINDS`.
        n_vars: N, the observed variables; ``>= 2`` (``>= 4`` for ``"lorenz96"``, so that ``i-2, i-1, i+1`` are
            distinct).
        length: T, the time steps (samples for ``"lorenz96"``) kept; ``>= 1``.
        seed: ``>= 0``; the same arguments give bitwise identical data.
        max_lag: the largest lag of a G1/G2 cross edge (and of G4's extra VAR); ``>= 1``. Not used by lorenz96.
        noise: innovation standard deviation (G1, G2, G4, also of G4's latent driver); finite ``> 0``. Not used by
            lorenz96, whose observation noise is fixed at 0.1 by the spec.
        forcing: Lorenz-96 ``F``; finite ``>= 0``. Only used by lorenz96.
        sample_every: Lorenz-96 sampling interval in time units, a positive multiple of ``dt = 0.01``. Only used
            by lorenz96.
        burn_in: discrete steps simulated and dropped before the ``length`` kept; ``>= 0``. Not used by lorenz96
            (which drops its first 10 time units).

    Raises:
        ValueError: naming the offending argument (an unknown ``kind`` lists the valid ones).
        RuntimeError: if the simulation produces a non-finite value (names the kind and the step).
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    n = check_int("n_vars", n_vars, 4 if kind == "lorenz96" else 2)
    length = check_int("length", length, 1)
    seed = check_int("seed", seed, 0)
    max_lag = check_int("max_lag", max_lag, 1)
    noise = float(check_float("noise", noise, low=0.0, low_inclusive=False, high=math.inf))
    forcing = float(check_float("forcing", forcing, low=0.0, high=math.inf))
    sample_every = float(check_float("sample_every", sample_every, low=0.0, low_inclusive=False, high=math.inf))
    every = int(round(sample_every / _L96_DT))
    if every < 1 or abs(every * _L96_DT - sample_every) > 1e-9:
        raise ValueError(f"sample_every must be a positive multiple of dt={_L96_DT}, got {sample_every!r}")
    burn_in = check_int("burn_in", burn_in, 0)

    rng = np.random.default_rng(seed)
    columns = tuple(f"x{k}" for k in range(n))
    base: dict[str, Any] = {"kind": kind, "seed": seed, "n_vars": n, "length": length}

    if kind == "lorenz96":
        data = _simulate_lorenz96(n, length, forcing, every, rng)
        edges = tuple(sorted((int((i + d) % n), i, 1) for i in range(n) for d in (-2, -1, 0, 1)))
        params = base | {
            "forcing": forcing,
            "dt": _L96_DT,
            "sample_every": sample_every,
            "transient_time": _L96_TRANSIENT_TIME,
            "observation_noise": _L96_OBSERVATION_NOISE,
            "initial_perturbation": _L96_INITIAL_PERTURBATION,
        }
        return _make(kind, data, columns, edges, params, lags_defined=False)

    params = base | {"max_lag": max_lag, "noise": noise, "burn_in": burn_in}
    steps = burn_in + length

    if kind in ("var", "svar"):
        raw, _ = _sample_graph(rng, n, max_lag)
        if kind == "var":
            coefs, scale = _scale_to_stable(raw, absolute=False)
            eps = noise * rng.standard_normal((steps, n))  # (steps, N)
            x = _simulate_linear(kind, coefs, eps)
            params |= {"scale": scale, "spectral_radius": companion_spectral_radius(coefs)}
        else:
            func = rng.integers(0, len(_SVAR_FUNCTIONS), size=(n, n))  # (N, N) codes
            np.fill_diagonal(func, 0)  # self-edges are linear
            coefs, scale = _scale_to_stable(raw, absolute=True)
            func = np.where((coefs != 0).any(axis=0), func, -1)  # -1: no edge
            eps = noise * rng.standard_normal((steps, n))
            x = _simulate_svar(kind, coefs, func, eps)
            params |= {
                "scale": scale,
                "spectral_radius_abs": companion_spectral_radius(np.abs(coefs)),
                "functions": [[_SVAR_FUNCTIONS[c] if c >= 0 else None for c in row] for row in func.tolist()],
            }
        params["coefs"] = coefs.tolist()
        return _make(kind, x[burn_in:], columns, _edges_from_coefs(coefs), params, lags_defined=True)

    # kind == "confounder": simulate the observed variables and the latent z (index n) as one linear VAR.
    columns = ("x", "y") + columns[2:]
    self_xy = rng.uniform(0.2, 0.5, size=2)  # (2,)
    m = n - 2
    if m > 0:
        sub_raw, _ = _sample_graph(rng, m, max_lag)
        sub, sub_scale = _scale_to_stable(sub_raw, absolute=False)
    else:
        sub, sub_scale = np.zeros((max_lag, 0, 0)), 1.0
    coefs = np.zeros((max_lag, n, n), dtype=np.float64)  # (P, N, N) observed part
    coefs[0, 0, 0], coefs[0, 1, 1] = self_xy
    coefs[:, 2:, 2:] = sub
    p_aug = max(max_lag, _G4_LAG_Y)
    aug = np.zeros((p_aug, n + 1, n + 1), dtype=np.float64)  # (P', N + 1, N + 1): z is the last variable
    aug[:max_lag, :n, :n] = coefs
    aug[0, n, n] = _G4_LATENT_AR
    aug[_G4_LAG_X - 1, 0, n] = _G4_COUPLING
    aug[_G4_LAG_Y - 1, 1, n] = _G4_COUPLING
    eps = noise * rng.standard_normal((steps, n + 1))  # (steps, N + 1)
    x = _simulate_linear(kind, aug, eps)
    params |= {
        "scale": sub_scale,
        "spectral_radius": companion_spectral_radius(aug),
        "coefs": coefs.tolist(),
        "latent": {
            "ar": _G4_LATENT_AR,
            "noise": noise,
            "to_x": {"lag": _G4_LAG_X, "coef": _G4_COUPLING},
            "to_y": {"lag": _G4_LAG_Y, "coef": _G4_COUPLING},
            "spurious": {"cause": "x", "effect": "y", "lag": _G4_LAG_Y - _G4_LAG_X},
        },
    }
    return _make(kind, x[burn_in:, :n], columns, _edges_from_coefs(coefs), params, lags_defined=True)


def _make(
    kind: str,
    data: np.ndarray,
    columns: tuple[str, ...],
    edges: tuple[tuple[int, int, int], ...],
    params: dict[str, Any],
    *,
    lags_defined: bool,
) -> SyntheticSystem:
    """Freeze ``data`` (a read-only contiguous float64 copy) into a :class:`SyntheticSystem`."""
    arr = np.array(data, dtype=np.float64, order="C")  # (T, N), own copy
    arr.flags.writeable = False
    return SyntheticSystem(kind=kind, data=arr, columns=columns, edges=edges, params=params, lags_defined=lags_defined)
