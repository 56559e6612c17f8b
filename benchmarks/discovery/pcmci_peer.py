# GPL-3.0 tigramite: optional benchmark-only peer; install with pip install tigramite
"""PCMCI (Runge et al., Science Advances 5, 2019; PyPI ``tigramite``, tested with 5.2.7.0) as the peer of attnlab's
transformer causal discovery (spec ``time_series.md`` D.7).

tigramite is GPL-3.0-or-later, so it stays an optional, benchmark-only dependency: this file is never imported
by ``src/attnlab`` and copies none of its code; it calls its public API. Install with ``pip install tigramite``.

Layouts: PCMCI's ``val_matrix`` / ``p_matrix`` are ``(N, N, tau_max + 1)`` indexed ``[cause, effect, tau]``;
attnlab's are row = effect, column = cause (converted with :func:`attnlab.discovery.metrics.from_pcmci_layout`).

Priors: tigramite 5.2.7 takes ``link_assumptions = {effect j: {(cause i, -tau): link_type, ...}, ...}``; every
variable must appear as a key, and **a lagged link that does not appear in the dict is forbidden** (assumed
absent). ``'-?>'`` means "may exist; if it does, it points forward in time". So an exclusion is expressed by
leaving the link out, and a run without exclusions passes ``None`` (all links ``1..tau_max`` allowed).
Forbidden links come back with ``val = 0`` and ``p = 1``.

Smoke run (small G1 and G4, ParCorr)::

    python benchmarks/discovery/pcmci_peer.py
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from attnlab.discovery.metrics import edge_scores, from_pcmci_layout

__all__ = ["run_pcmci", "TESTS"]

#: The conditional-independence tests offered (ParCorr for linear data; GPDC / CMIknn are nonlinear and slow, and
#: need tigramite's optional dependencies: ``dcor`` for GPDC, ``numba`` for CMIknn).
TESTS: tuple[str, ...] = ("parcorr", "gpdc", "cmiknn")


def _cond_ind_test(test: str) -> Any:
    if test == "parcorr":
        from tigramite.independence_tests.parcorr import ParCorr

        return ParCorr(significance="analytic")
    if test == "gpdc":
        try:
            from tigramite.independence_tests.gpdc import GPDC
        except ImportError as err:  # GPDC needs the extra package dcor (and scikit-learn)
            raise ImportError(f"test='gpdc' needs tigramite's optional dependencies: {err}") from err

        return GPDC(significance="analytic")
    try:
        from tigramite.independence_tests.cmiknn import CMIknn
    except ImportError as err:  # CMIknn needs the extra package numba
        raise ImportError(f"test='cmiknn' needs tigramite's optional dependencies: {err}") from err

    return CMIknn(significance="shuffle_test")


def link_assumptions(excluded: np.ndarray, tau_max: int) -> dict[int, dict[tuple[int, int], str]]:
    """tigramite's ``link_assumptions`` allowing every lagged link ``1..tau_max`` except the excluded ones.

    ``excluded`` is ``(N, N)`` bool in attnlab's layout: ``excluded[i, j]`` = "j does not cause i at any lag".
    Self links stay allowed (they matter for conditioning), so the diagonal must be ``False``.
    """
    n = excluded.shape[0]
    return {
        effect: {
            (cause, -tau): "-?>"
            for cause in range(n)
            if not excluded[effect, cause]
            for tau in range(1, tau_max + 1)
        }
        for effect in range(n)
    }


def run_pcmci(
    data: np.ndarray,
    *,
    tau_max: int,
    excluded: np.ndarray | None = None,
    test: str = "parcorr",
    pc_alpha: float = 0.2,
    alpha_level: float = 0.05,
    fdr: bool = False,
) -> dict[str, Any]:
    """Run PCMCI (``tau_min = 1``) on ``data (T, N)`` and return its results in both layouts.

    Args:
        data: ``(T, N)`` finite float array.
        tau_max: the largest lag tested (the forecaster's window P); ``>= 1``.
        excluded: ``(N, N)`` bool, attnlab layout, ``excluded[i, j]`` = "j does not cause i at any lag"; the
            diagonal must be ``False``. ``None``: nothing excluded.
        test: one of :data:`TESTS`.
        pc_alpha: PC1 condition-selection level (0.2 as in spec D.7; note tigramite 5.2.7's own default is 0.05).
        alpha_level: threshold on the MCI p-values for ``pred``.
        fdr: apply Benjamini-Hochberg (``fdr_method="fdr_bh"``) to the p-values.

    Returns:
        ``{"val", "p"}``: ``(N, N, tau_max + 1)`` in PCMCI's layout ``[cause, effect, tau]``; ``"scores"``:
        ``(N, N)`` attnlab layout, max over ``tau >= 1`` of ``|val|``; ``"lags"``: its argmax tau (``1..tau_max``);
        ``"pred"``: ``(N, N)`` bool, any ``p <= alpha_level`` over ``tau >= 1``; ``"wall_s"``: seconds of the
        PCMCI run.
    """
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 2:
        got = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"data must be a numpy array of shape (T >= 2, N >= 2), got {got}")
    if not np.all(np.isfinite(data)):
        raise ValueError("data must be finite, got NaN or inf")
    n = data.shape[1]
    if isinstance(tau_max, bool) or not isinstance(tau_max, int) or tau_max < 1:
        raise ValueError(f"tau_max must be an int >= 1, got {tau_max!r}")
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    for name, value in (("pc_alpha", pc_alpha), ("alpha_level", alpha_level)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be a float in (0, 1], got {value!r}")
    if not isinstance(fdr, bool):
        raise ValueError(f"fdr must be a bool, got {fdr!r}")
    assumptions = None
    if excluded is not None:
        if not isinstance(excluded, np.ndarray) or excluded.dtype != bool or excluded.shape != (n, n):
            got = (excluded.shape, excluded.dtype) if isinstance(excluded, np.ndarray) else type(excluded).__name__
            raise ValueError(f"excluded must be a bool array of shape (N={n}, N={n}), got {got}")
        if np.diag(excluded).any():
            raise ValueError("excluded must not exclude a variable's own past (its diagonal must be False)")
        assumptions = link_assumptions(excluded, tau_max)

    from tigramite import data_processing as pp
    from tigramite.pcmci import PCMCI

    start = time.perf_counter()
    pcmci = PCMCI(dataframe=pp.DataFrame(np.asarray(data, dtype=np.float64)), cond_ind_test=_cond_ind_test(test),
                  verbosity=0)
    res = pcmci.run_pcmci(link_assumptions=assumptions, tau_min=1, tau_max=tau_max, pc_alpha=pc_alpha,
                          alpha_level=alpha_level, fdr_method="fdr_bh" if fdr else "none")
    wall = time.perf_counter() - start
    val = np.asarray(res["val_matrix"], dtype=np.float64)  # (N, N, tau_max + 1) [cause, effect, tau]
    p = np.asarray(res["p_matrix"], dtype=np.float64)  # (N, N, tau_max + 1) [cause, effect, tau]
    scores, lags = edge_scores(np.abs(from_pcmci_layout(val)))  # (N, N) [effect, cause]
    pred = (from_pcmci_layout(p) <= alpha_level).any(axis=-1)  # (N, N) [effect, cause]
    return {"val": val, "p": p, "scores": scores, "lags": lags, "pred": pred, "wall_s": wall}


def _smoke() -> None:
    from attnlab.discovery.generators import generate
    from attnlab.discovery.metrics import graph_metrics

    def report(label: str, system: Any, out: dict[str, Any]) -> None:
        m = graph_metrics(out["scores"], out["pred"], out["lags"], system.adjacency(), system.lag_matrix(),
                          lags_defined=system.lags_defined)
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{label:<44} AUROC {fmt(m.auroc)}  AUPRC {fmt(m.auprc)}  P {m.precision:.3f}  R {m.recall:.3f}  "
              f"F1 {m.f1:.3f}  lag acc {fmt(m.lag_accuracy)}  true {m.n_true} pred {m.n_pred}  "
              f"{out['wall_s']:.2f} s")

    g1 = generate("var", n_vars=5, length=1000, seed=0, max_lag=3)
    report("G1 var N=5 T=1000 seed 0, ParCorr, tau_max 3", g1, run_pcmci(g1.data, tau_max=3))

    g4 = generate("confounder", n_vars=5, length=1000, seed=0, max_lag=3)
    plain = run_pcmci(g4.data, tau_max=3)
    report("G4 confounder N=5 T=1000, no exclusion", g4, plain)
    excl = np.zeros((5, 5), dtype=bool)
    excl[1, 0] = True  # x does not cause y
    prior = run_pcmci(g4.data, tau_max=3, excluded=excl)
    report("G4 confounder N=5 T=1000, x -/-> y excluded", g4, prior)
    print(f"G4 x -> y: pred {bool(plain['pred'][1, 0])} score {plain['scores'][1, 0]:.3f} lag {plain['lags'][1, 0]}"
          f" | excluded: pred {bool(prior['pred'][1, 0])} score {prior['scores'][1, 0]:.3f}"
          f" (val {prior['val'][0, 1, 1:]}, p {prior['p'][0, 1, 1:]})")


if __name__ == "__main__":
    _smoke()
