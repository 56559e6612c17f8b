"""Temporal causal discovery with a transformer forecaster: prior-knowledge masks, gradient graphs with lags, and a
human in the loop (spec ``time_series.md`` Part D; a reconstruction of Huang, Yao and Divakaran, "Transforming
Causality", arXiv 2508.15928, whose method section is not public).

The pieces, in the order a round uses them:

* the forecaster and its task: :class:`~attnlab.models.timeseries.causal.CausalForecaster` (variable or
  (variable, lag) tokens, a per-token head) trained by the ``discovery`` task
  (:class:`~attnlab.tasks.causal_discovery.DiscoveryForecasting`);
* prior knowledge: exclusion files (:func:`read_exclusions`) and the two exact mask constructions of
  :mod:`attnlab.masks.priors` (``masking="propagate"`` / ``"streams"``);
* extraction: :func:`lagged_scores` (input gradients over held-out windows), :func:`estimate_graph` (scores, lags,
  thresholds), :func:`combine_seeds` (stability across seeds);
* the loop: :func:`discover` and :func:`refine` (one round each, written to a directory), simulated users
  (:class:`OracleUser`, :class:`NoisyOracleUser`) and :func:`simulate_rounds`;
* evaluation: the seeded generators of :mod:`attnlab.discovery.generators` (:func:`generate`: G1 linear VAR, G2
  nonlinear SVAR, G3 Lorenz-96, G4 latent confounder) and the metrics of :mod:`attnlab.discovery.metrics`.

Convention everywhere: **row = effect, column = cause**; lag-resolved scores are ``[effect, cause, lag - 1]``.
"""

from attnlab.discovery.extract import (
    GraphEstimate,
    Threshold,
    binarise,
    combine_seeds,
    estimate_graph,
    lagged_scores,
    normalise_global,
    normalise_rows,
)
from attnlab.discovery.generators import KINDS, SyntheticSystem, generate
from attnlab.discovery.metrics import GraphMetrics, graph_metrics
from attnlab.discovery.priors import exclusions_csv, read_exclusions
from attnlab.discovery.run import (
    DiscoveryConfig,
    DiscoveryResult,
    KnownGraph,
    discover,
    load_result,
    refine,
    score_against,
)
from attnlab.discovery.users import NoisyOracleUser, OracleUser, simulate_rounds

__all__ = [
    "GraphEstimate", "Threshold", "binarise", "combine_seeds", "estimate_graph", "lagged_scores", "normalise_rows",
    "normalise_global",
    "KINDS", "SyntheticSystem", "generate", "GraphMetrics", "graph_metrics", "read_exclusions", "exclusions_csv",
    "DiscoveryConfig", "DiscoveryResult", "KnownGraph", "discover", "load_result", "refine", "score_against",
    "NoisyOracleUser", "OracleUser", "simulate_rounds",
]
