"""Simulated users for the human-in-the-loop benchmark (spec ``time_series.md`` D.5): given a round's graph they
name links to exclude, as a person reading ``edges.csv`` would.

* :class:`OracleUser` knows the true graph and excludes the ``per_round`` strongest false positives (predicted
  edges that are not true), never a true edge.
* :class:`NoisyOracleUser` does the same, but each exclusion is, with probability ``error_rate``, a mistake: the
  strongest predicted **true** edge not yet excluded is excluded instead.

:func:`simulate_rounds` runs a first round and then ``rounds`` correction rounds (:func:`~attnlab.discovery.refine`)
driven by such a user, and returns the F1 (and all metrics) after each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attnlab._validation import check_float, check_int

__all__ = ["OracleUser", "NoisyOracleUser", "simulate_rounds"]


def _ranked_edges(result: Any, excluded: set[tuple[str, str]]) -> list[tuple[int, int]]:
    """Predicted off-diagonal edges ``(effect i, cause j)`` not yet excluded, strongest first."""
    g = result.graph
    cols = g.columns
    N = len(cols)
    cand = [(float(g.normalised[i, j]), i, j) for i in range(N) for j in range(N)
            if i != j and g.pred[i, j] and (cols[j], cols[i]) not in excluded]
    return [(i, j) for _, i, j in sorted(cand, key=lambda t: (-t[0], t[1], t[2]))]


@dataclass
class OracleUser:
    """Excludes the ``per_round`` strongest false-positive edges of each round (``truth (N, N)`` bool, row = effect)."""

    truth: np.ndarray
    per_round: int = 2
    name: str = "exact oracle"

    def __post_init__(self) -> None:
        self.truth = np.asarray(self.truth, dtype=bool)
        check_int("per_round", self.per_round, 1)

    def propose(self, result: Any) -> list[list[str]]:
        """The ``[cause, effect]`` links to exclude after ``result``."""
        cols = result.graph.columns
        done = {(c, e) for c, e in result.exclude}
        wrong = [(i, j) for i, j in _ranked_edges(result, done) if not self.truth[i, j]]
        return [[cols[j], cols[i]] for i, j in wrong[: self.per_round]]


@dataclass
class NoisyOracleUser(OracleUser):
    """An :class:`OracleUser` that errs: each of its exclusions is, with probability ``error_rate``, the strongest
    predicted true edge instead (seeded by ``seed``)."""

    error_rate: float = 0.2
    seed: int = 0
    name: str = "noisy oracle"
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("error_rate", self.error_rate, low=0.0, high=1.0, high_inclusive=True)
        self._rng = np.random.default_rng(self.seed)

    def propose(self, result: Any) -> list[list[str]]:
        cols = result.graph.columns
        done = {(c, e) for c, e in result.exclude}
        ranked = _ranked_edges(result, done)
        wrong = [e for e in ranked if not self.truth[e[0], e[1]]]
        right = [e for e in ranked if self.truth[e[0], e[1]]]
        out = []
        for _ in range(self.per_round):
            pool = right if (self._rng.random() < self.error_rate and right) else wrong
            if not pool:
                pool = wrong or right
            if not pool:
                break
            i, j = pool.pop(0)
            out.append([cols[j], cols[i]])
        return out


def simulate_rounds(system: Any, user: OracleUser, *, out: str | Path, rounds: int = 3, config: Any = None,
                    mode: str = "finetune", force: bool = False,
                    log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Round 0 on ``system`` (a :class:`~attnlab.discovery.generators.SyntheticSystem`), then ``rounds`` rounds in
    which ``user`` excludes links; each round goes to ``out/round<k>``. Returns one record per round: ``round``,
    ``exclude`` (in force), ``proposed`` (this round's new exclusions), ``metrics`` (against the truth),
    ``test_mse``."""
    from attnlab.discovery.run import discover, refine

    check_int("rounds", rounds, 0)
    out = Path(out)
    res = discover(system, out=out / "round0", config=config, force=force, log=log)
    records = [{"round": 0, "exclude": [], "proposed": [], "metrics": res.metrics, "test_mse": res.test_mse}]
    for k in range(1, rounds + 1):
        proposed = user.propose(res)
        res = refine(res, exclude=proposed, out=out / f"round{k}", mode=mode,  # type: ignore[arg-type]
                     truth=system, force=force, log=log)
        records.append({"round": k, "exclude": res.exclude, "proposed": proposed, "metrics": res.metrics,
                        "test_mse": res.test_mse})
    return records
