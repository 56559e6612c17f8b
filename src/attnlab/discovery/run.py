"""The discovery round (spec ``time_series.md`` D.5): train the forecaster over seeds, read the graph out, write it;
take the user's exclusions and run again from the previous round.

A round writes into its output directory ``out``::

    graph.json       the config, the exclusions in force, each seed's test MSE, the graph, what changed since the
                     previous round, and (when the true graph is known) the metrics
    edges.csv        cause,effect,lag,score,seeds (the predicted edges, strongest first; self-edges excluded)
    graph.png        the graph: edges labelled with their lags, thickness by score
    scores.png       the heat map of row-normalised scores (row = effect, column = cause)
    exclusions.csv   every exclusion in force (cause,effect): the previous rounds' and this one's
    seeds/seed<k>/   each seed's training run (checkpoint, metrics), as ``attnlab train`` writes it

:func:`discover` is the Python form of ``attnlab discover``; :func:`refine` is one correction round (``--exclude
FILE --resume-from DIR``): the exclusions of the previous round plus the new ones, each seed fine-tuned from the
previous round's weights (``mode="finetune"``, default) or trained afresh (``"retrain"``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from attnlab._validation import check_float, check_int
from attnlab.discovery.extract import GraphEstimate, Threshold, combine_seeds, estimate_graph, lagged_scores
from attnlab.discovery.priors import exclusions_csv
from attnlab.models.timeseries.causal import CausalForecasterConfig

__all__ = ["DiscoveryConfig", "DiscoveryResult", "KnownGraph", "discover", "refine", "load_result", "score_against",
           "baseline_mse", "RESULT_FILE"]

RESULT_FILE = "graph.json"
Mode = Literal["finetune", "retrain"]


@dataclass(kw_only=True)
class DiscoveryConfig:
    """One discovery round's settings.

    Attributes:
        model: the forecaster (tokens, masking construction, size).
        look_back: lags ``P`` (must cover the largest lag to be found).
        train_fraction, test_fraction: splits in time; the graph is read on the test windows.
        seeds: one forecaster per seed; the graph combines them (an edge is kept when a majority found it).
        steps, fine_tune_steps: optimizer steps of a fresh run and of a fine-tuning round.
        batch_size, lr, weight_decay: the optimisation (AdamW, warm-up then cosine).
        score_windows: held-out windows the gradients are averaged over (evenly spaced over the test split).
        statistic: ``"abs"`` mean |gradient| (default) or ``"sq"`` mean squared gradient.
        threshold: how normalised scores become edges.
        device, threads: where the forecasters train (``threads``: torch threads; ``None`` leaves torch's default).
        progress: a progress bar per training run (tqdm, on stderr).
    """

    model: CausalForecasterConfig = field(default_factory=CausalForecasterConfig)
    look_back: int = 5
    train_fraction: float = 0.7
    test_fraction: float = 0.2
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1500
    fine_tune_steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    score_windows: int = 1000
    statistic: Literal["abs", "sq"] = "abs"
    threshold: Threshold = field(default_factory=Threshold)
    device: str = "cpu"
    threads: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, CausalForecasterConfig):
            raise ValueError(f"model must be a CausalForecasterConfig, got {type(self.model).__name__}")
        check_int("look_back", self.look_back, 1)
        self.seeds = tuple(self.seeds)
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be one or more integers >= 0, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds!r}")
        for n in ("steps", "fine_tune_steps", "batch_size", "score_windows"):
            check_int(n, getattr(self, n), 1)
        check_float("lr", self.lr, low=0.0, low_inclusive=False, high=1.0)
        check_float("weight_decay", self.weight_decay, low=0.0, high=10.0)
        if self.statistic not in ("abs", "sq"):
            raise ValueError(f"statistic must be 'abs' or 'sq', got {self.statistic!r}")
        if not isinstance(self.threshold, Threshold):
            raise ValueError(f"threshold must be a Threshold, got {type(self.threshold).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiscoveryConfig":
        d = dict(d)
        d["model"] = CausalForecasterConfig(**d["model"])
        d["threshold"] = Threshold(**d["threshold"])
        d["seeds"] = tuple(d["seeds"])
        return cls(**d)


@dataclass(kw_only=True)
class DiscoveryResult:
    """What a round found. ``graph`` combines the seeds (``per_seed``); ``test_mse`` is each seed's forecaster's MSE
    on the test windows (normalised scale); ``changes`` compares with the previous round (``None`` for a first
    round); ``metrics`` scores the graph against a known truth (``None`` without one)."""

    graph: GraphEstimate
    per_seed: list[GraphEstimate]
    test_mse: list[float]
    exclude: list[list[str]]
    config: DiscoveryConfig
    wall_s: float
    out_dir: Path | None = None
    changes: dict[str, list[dict[str, Any]]] | None = None
    metrics: dict[str, Any] | None = None
    round: int = 0
    source: str = ""
    baselines: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        g = self.graph
        return {
            "round": self.round,
            "columns": g.columns,
            "config": self.config.to_dict(),
            "exclude": self.exclude,
            "test_mse": self.test_mse,
            "baseline_test_mse": self.baselines,
            "wall_s": self.wall_s,
            "threshold": g.threshold.label,
            "edges": g.edges(),
            "scores": g.normalised.tolist(),
            "raw_scores": g.scores.tolist(),
            "lags": g.lags.tolist(),
            "seeds_agreeing": g.seeds.tolist() if g.seeds is not None else None,
            "lagged_scores": g.lagged.tolist(),
            "per_seed_scores": [s.normalised.tolist() for s in self.per_seed],
            "changes": self.changes,
            "metrics": self.metrics,
            "layout": ("row = effect, column = cause; lagged_scores[effect][cause][lag - 1]; scores: on the "
                       "threshold's scale (mean over seeds); raw_scores: mean over seeds of max-over-lag mean "
                       "|gradient|"),
        }


def _train_seed(series: Any, source: str, cfg: DiscoveryConfig, seed: int, exclude: list[list[str]],
                init_from: str | None, run_dir: Path, log: Callable[[str], None]) -> tuple[GraphEstimate, float]:
    from attnlab.tasks.causal_discovery import DiscoveryDataConfig, DiscoveryForecasting, DiscoveryOptions
    from attnlab.train.config import OptimConfig, TrainConfig
    from attnlab.train.trainer import Trainer

    steps = cfg.fine_tune_steps if init_from else cfg.steps
    tc = TrainConfig(
        task="discovery", model=cfg.model,
        data=DiscoveryDataConfig(source=source, look_back=cfg.look_back, train_fraction=cfg.train_fraction,
                                 test_fraction=cfg.test_fraction),
        options=DiscoveryOptions(exclude=exclude, init_from=init_from),
        optim=OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=min(100, steps // 10)),
        steps=steps, batch_size=cfg.batch_size, eval_interval=steps, log_interval=max(1, steps // 10),
        seed=seed, device=cfg.device, tensorboard=False, progress=cfg.progress, threads=cfg.threads)
    task = DiscoveryForecasting(tc.model, tc.data, seed=seed, options=tc.options, series=series,
                                progress=cfg.progress)
    done = run_dir / "result.json"
    kept = False
    if done.is_file():  # a seed an interrupted round finished: kept as it is, not trained again
        from attnlab.train.loading import load_trained

        saved = json.loads(done.read_text())
        kept = saved.get("steps") == steps and saved.get("test") is not None
    if kept:
        model = load_trained(run_dir, device=cfg.device).model
        mse = float(saved["test"]["loss"])
    else:
        trainer = Trainer(tc, out_dir=run_dir, task=task, resume=True, log=None)
        result = trainer.fit()
        model = trainer.model
        mse = float(result.test.loss) if result.test is not None else float("nan")
    windows = task.heldout_windows("test", cfg.score_windows)
    lagged = lagged_scores(model, windows, statistic=cfg.statistic)
    log(f"  seed {seed}: test mse {mse:.4f} ({steps} steps{', fine-tuned' if init_from else ''}"
        f"{', finished earlier' if kept else ''})")
    return estimate_graph(lagged, task.columns, cfg.threshold), mse


def _changes(old: GraphEstimate, new: GraphEstimate) -> dict[str, list[dict[str, Any]]]:
    """Edges added, removed and whose lag changed between two rounds (self-edges excluded)."""
    old_e = {(e["cause"], e["effect"]): e for e in old.edges()}
    new_e = {(e["cause"], e["effect"]): e for e in new.edges()}
    return {"added": [new_e[k] for k in sorted(new_e.keys() - old_e.keys())],
            "removed": [old_e[k] for k in sorted(old_e.keys() - new_e.keys())],
            "lag_changed": [{**new_e[k], "old_lag": old_e[k]["lag"]} for k in sorted(new_e.keys() & old_e.keys())
                            if new_e[k]["lag"] != old_e[k]["lag"]]}


STARTED_FILE = "round-started.json"


def _prepare_out(out: Path, force: bool, started: dict[str, Any]) -> bool:
    """Make ``out`` ready for a round described by ``started``; ``True`` when an interrupted round with the same
    description is continued there (its finished seeds are kept, an unfinished one resumes from its checkpoint)."""
    marker = out / STARTED_FILE
    if out.is_dir() and marker.is_file() and not (out / RESULT_FILE).exists():
        if json.loads(marker.read_text()) == started:
            return True
        if not force:
            raise FileExistsError(f"out={str(out)!r} holds an interrupted discovery round with other settings; "
                                  "choose another directory or pass force=True (--force) to replace it")
        shutil.rmtree(out)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise FileExistsError(f"out={str(out)!r} already exists and is not empty; choose another directory or "
                                  "pass force=True (--force) to replace a previous discovery run there")
        if not (out / RESULT_FILE).is_file():
            raise FileExistsError(f"out={str(out)!r} is not a discovery run directory (no {RESULT_FILE}); it is not "
                                  "replaced, even with force")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    from attnlab._io import atomic_write_text

    atomic_write_text(marker, json.dumps(started, indent=1) + "\n")
    return False


def discover(series: Any, *, out: str | Path, config: DiscoveryConfig | None = None,
             exclude: Sequence[Sequence[str]] = (), truth: Any = None, force: bool = False,
             log: Callable[[str], None] | None = print, _previous: DiscoveryResult | None = None,
             _init: dict[int, str] | None = None) -> DiscoveryResult:
    """Run one discovery round on ``series`` and write it into ``out`` (see the module docstring).

    Args:
        series: a :class:`~attnlab.data.timeseries.TimeSeries`, a
            :class:`~attnlab.discovery.generators.SyntheticSystem` (its data; its truth is then used for the
            metrics unless ``truth`` is given) or the path of a CSV file.
        out: the round's directory; an existing non-empty one is refused unless ``force`` (and then only a previous
            discovery run is replaced).
        exclude: ``(cause, effect)`` name pairs the user rules out.
        truth: the true graph (a ``SyntheticSystem``) to score the result against, if known.
    """
    from attnlab.data.timeseries import TimeSeries, load_timeseries

    say = log or (lambda s: None)
    cfg = config if config is not None else DiscoveryConfig()
    out = Path(out)
    source = ""
    if isinstance(series, (str, Path)):
        source = str(Path(series).resolve())  # (later rounds read it from any working directory)
        series = load_timeseries(series, dates="optional")
    elif hasattr(series, "edges") and hasattr(series, "data"):  # a SyntheticSystem
        truth = truth if truth is not None else series
        series = TimeSeries(name=f"generated {series.kind}", dates=None, values=series.data,
                            columns=tuple(series.columns))
    if not isinstance(series, TimeSeries):
        raise ValueError(f"series must be a TimeSeries, a SyntheticSystem or a CSV path, got {type(series).__name__}")
    from attnlab.tasks.causal_discovery import check_exclusion_pairs, prepare_discovery_data

    # unknown names and self-links refused before anything is written
    pairs = [tuple(p) for p in check_exclusion_pairs(list(exclude), list(series.columns))]
    # too few rows, constant columns refused early; the baselines are scored on the same windows
    prepared = prepare_discovery_data(series, look_back=cfg.look_back, train_fraction=cfg.train_fraction,
                                      test_fraction=cfg.test_fraction)
    excl = [list(p) for p in pairs]
    settings = {k: v for k, v in cfg.to_dict().items() if k != "progress"}  # (a progress bar changes no result)
    started = {"config": settings, "exclude": excl, "source": source or "data.csv", "rows": len(series),
               "columns": list(series.columns), "init": {str(k): v for k, v in (_init or {}).items()}}
    continued = _prepare_out(out, force, started)
    if continued:
        say(f"continuing the interrupted round in {out}")
    if not source and not (out / "data.csv").is_file():  # generated data: kept beside the round for later rounds
        from attnlab._io import atomic_write_text

        body = "\n".join(",".join(repr(float(v)) for v in row) for row in series.values)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(series.columns)
        atomic_write_text(out / "data.csv", buf.getvalue() + body + "\n")
    source = source or str((out / "data.csv").resolve())
    t0 = time.perf_counter()
    say(f"discovery on {series.name}: {len(series.columns)} variables, {len(series)} rows, look_back "
        f"{cfg.look_back}, {len(excl)} exclusions, seeds {', '.join(map(str, cfg.seeds))}")
    per_seed, mses = [], []
    for seed in cfg.seeds:
        g, mse = _train_seed(series, source, cfg, seed, excl, (_init or {}).get(seed), out / "seeds" / f"seed{seed}",
                             say)
        per_seed.append(g)
        mses.append(mse)
    graph = combine_seeds(per_seed)
    result = DiscoveryResult(graph=graph, per_seed=per_seed, test_mse=mses, exclude=excl, config=cfg,
                             wall_s=time.perf_counter() - t0, out_dir=out, source=source,
                             round=_previous.round + 1 if _previous is not None else 0,
                             baselines=baseline_mse(prepared))
    if _previous is not None:
        result.changes = _changes(_previous.graph, graph)
    if truth is not None:
        result.metrics = score_against(graph, truth)
    _write(result, series, truth, source)
    b = result.baselines
    lin = "n/a (too few windows)" if b["linear"] is None else f"{b['linear']:.4g}"
    say(f"{len(graph.edges())} edges ({graph.threshold.label}, kept by a majority of {graph.n_seeds} seeds); "
        f"forecaster test mse {np.mean(mses):.4g} (a least-squares linear autoregression on the same lags: "
        f"{lin}; repeating the last value: {b['persistence']:.4g}); wrote {out}")
    if b["linear"] is not None and np.mean(mses) > 0.8 * b["linear"]:
        say("note: the forecaster does little better than a linear autoregression on the same lags, so its gradients "
            "can only show what a linear model sees; for a nonlinear system, train longer or wider (--steps, "
            "--d-model) until its test MSE falls clearly below the linear one")
    return result


def baseline_mse(d: Any) -> dict[str, float | None]:
    """The test MSE (normalised scale, the forecaster's windows) of two baselines a forecaster must beat before its
    gradients mean anything, for prepared data ``d`` (:func:`~attnlab.tasks.causal_discovery.prepare_discovery_data`):
    ``"linear"``, a least-squares linear autoregression on the same ``look_back`` lags
    (:func:`~attnlab.discovery.linear.fit_linear_var`, fitted on the training windows), and ``"persistence"``,
    each variable's last value."""
    import torch

    from attnlab.discovery.linear import fit_linear_var

    x, y = d.windows("test")
    out = {"persistence": float(((x[:, :, -1] - y) ** 2).mean())}
    xt, yt = d.windows("train")
    if xt.shape[0] > xt.shape[1] * xt.shape[2]:  # (enough windows to fit every coefficient)
        with torch.no_grad():
            pred = fit_linear_var(xt, yt)(torch.from_numpy(x)).numpy()
        out["linear"] = float(((pred - y) ** 2).mean())
    else:
        out["linear"] = None  # type: ignore[assignment]
    return out


def score_against(graph: GraphEstimate, truth: Any) -> dict[str, Any]:
    """The graph's metrics against a known system's truth (self-edges excluded), as a dict: AUROC and AUPRC rank the
    raw edge scores ``graph.scores`` (comparable across rows: every variable is z-scored), precision, recall, F1 and
    lag accuracy score the thresholded edges."""
    from attnlab.discovery.metrics import graph_metrics

    if list(truth.columns) != graph.columns:
        raise ValueError(f"the truth's columns {list(truth.columns)} are not the graph's {graph.columns}")
    m = graph_metrics(graph.scores, graph.pred, graph.lags, truth.adjacency(), truth.lag_matrix(),
                      lags_defined=truth.lags_defined)
    return m.to_dict()


def refine(previous: str | Path | DiscoveryResult, *, exclude: Sequence[Sequence[str]], out: str | Path,
           series: Any = None, mode: Mode = "finetune", truth: Any = None, force: bool = False,
           config: DiscoveryConfig | None = None, log: Callable[[str], None] | None = print) -> DiscoveryResult:
    """One correction round after ``previous`` (a round's directory or result): its exclusions plus ``exclude``,
    each seed fine-tuned from the previous weights (``mode="finetune"``) or trained afresh (``"retrain"``), and the
    changes against the previous graph. ``series`` defaults to the data the previous round saved (``data.csv``
    when it was given generated data or a path)."""
    if mode not in ("finetune", "retrain"):
        raise ValueError(f"mode must be 'finetune' or 'retrain', got {mode!r}")
    prev = load_result(previous) if not isinstance(previous, DiscoveryResult) else previous
    if prev.out_dir is None:
        raise ValueError("the previous round has no directory; its weights cannot be fine-tuned")
    if Path(out).resolve() == prev.out_dir.resolve():
        raise ValueError(f"out={str(out)!r} is the previous round's directory; write the new round elsewhere")
    cfg = config if config is not None else prev.config
    if mode == "finetune" and (not cfg.model.same_weights_as(prev.config.model)
                               or cfg.look_back != prev.config.look_back):
        raise ValueError("fine-tuning needs the previous round's architecture and look_back (the masking may "
                         "change); use mode='retrain' (--retrain) to change them")
    if series is None:
        saved = Path(prev.source) if prev.source else None
        if saved is None or not saved.is_file():
            raise ValueError(f"the series of {str(prev.out_dir)!r} ({prev.source!r}) cannot be found; pass it again "
                             "(--csv)")
        series = str(saved)
    cols = _columns(series)
    if cols != prev.graph.columns:
        raise ValueError(f"the series has the variables {', '.join(cols)}, but the previous round's graph is over "
                         f"{', '.join(prev.graph.columns)}; give the same series")
    if truth is None and (prev.out_dir / "truth.json").is_file():
        truth = KnownGraph.from_dict(json.loads((prev.out_dir / "truth.json").read_text()))
    pairs = {tuple(p) for p in prev.exclude} | {(str(c), str(e)) for c, e in exclude}
    init = None
    if mode == "finetune":
        init = {s: str(prev.out_dir / "seeds" / f"seed{s}") for s in cfg.seeds}
        missing = [s for s, p in init.items() if not Path(p).is_dir()]
        if missing:
            raise ValueError(f"the previous round has no run for seeds {missing}; use its seeds or mode='retrain'")
    return discover(series, out=out, config=cfg, exclude=sorted(pairs), truth=truth, force=force, log=log,
                    _previous=prev, _init=init)


@dataclass(frozen=True)
class KnownGraph:
    """A true graph read back from ``truth.json`` (what :meth:`SyntheticSystem.truth_dict` writes): enough to score a
    round (``columns``, ``adjacency()``, ``lag_matrix()``, ``lags_defined``)."""

    columns: tuple[str, ...]
    edges: tuple[tuple[int, int, int], ...]
    lags_defined: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KnownGraph":
        cols = tuple(d["columns"])
        idx = {c: k for k, c in enumerate(cols)}
        edges = tuple(sorted((idx[e["cause"]], idx[e["effect"]], int(e["lag"])) for e in d["edges"]))
        return cls(columns=cols, edges=edges, lags_defined=bool(d.get("lags_defined", True)))

    def adjacency(self, *, include_self: bool = False) -> np.ndarray:
        N = len(self.columns)
        a = np.zeros((N, N), dtype=bool)
        for c, e, _ in self.edges:
            a[e, c] = True
        if not include_self:
            np.fill_diagonal(a, False)
        return a

    def truth_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "lags_defined": self.lags_defined,
                "edges": [{"cause": self.columns[c], "effect": self.columns[e], "lag": lag}
                          for c, e, lag in self.edges]}

    def lag_matrix(self) -> np.ndarray:
        N = len(self.columns)
        m = np.zeros((N, N), dtype=np.int64)
        for c, e, lag in sorted(self.edges, key=lambda t: -t[2]):  # the smallest lag of a pair wins
            m[e, c] = lag
        return m


def _columns(series: Any) -> list[str]:
    """The variable names of a series given as a path, a ``TimeSeries`` or a ``SyntheticSystem``."""
    if isinstance(series, (str, Path)):
        from attnlab.data.timeseries import load_timeseries

        return list(load_timeseries(series, dates="optional").columns)
    return list(series.columns)


def load_result(path: str | Path) -> DiscoveryResult:
    """The result of a round from its directory (graph, seeds, exclusions, config)."""
    p = Path(path)
    f = p / RESULT_FILE
    if not f.is_file():
        raise ValueError(f"{str(p)!r} is not a discovery run directory (no {RESULT_FILE})")
    d = json.loads(f.read_text())
    cfg = DiscoveryConfig.from_dict(d["config"])
    cols = d["columns"]
    per_seed = [estimate_graph(np.asarray(ls), cols, cfg.threshold) for ls in d["per_seed_lagged"]]
    graph = combine_seeds(per_seed)
    return DiscoveryResult(graph=graph, per_seed=per_seed, test_mse=d["test_mse"], exclude=d["exclude"], config=cfg,
                           baselines=d.get("baseline_test_mse", {}),
                           wall_s=d["wall_s"], out_dir=p, changes=d.get("changes"), metrics=d.get("metrics"),
                           round=d.get("round", 0), source=d.get("series", {}).get("source", ""))


def _write(result: DiscoveryResult, series: Any, truth: Any, source: str) -> None:
    from attnlab._io import atomic_write_text
    from attnlab.discovery.plots import plot_graph, plot_scores

    out = result.out_dir
    assert out is not None
    d = result.to_dict()
    d["per_seed_lagged"] = [s.lagged.tolist() for s in result.per_seed]
    d["series"] = {"name": series.name, "rows": len(series), "source": source}
    atomic_write_text(out / RESULT_FILE, json.dumps(d, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["cause", "effect", "lag", "score", "seeds"])
    w.writerows([e["cause"], e["effect"], e["lag"], f"{e['score']:.6g}", e["seeds"]] for e in result.graph.edges())
    atomic_write_text(out / "edges.csv", buf.getvalue())
    atomic_write_text(out / "exclusions.csv", exclusions_csv(result.exclude))
    if truth is not None and not (out / "truth.json").exists():
        atomic_write_text(out / "truth.json", json.dumps(truth.truth_dict(), indent=1) + "\n")
    title = (f"round {result.round}: {len(result.graph.edges())} edges, {len(result.exclude)} exclusions; "
             f"forecaster test MSE {np.mean(result.test_mse):.3g}")
    plot_graph(result.graph, out / "graph.png", title=title, excluded=result.exclude,
               truth=truth.adjacency() if truth is not None else None)
    plot_scores(result.graph, out / "scores.png", title=f"row-normalised gradient scores ({title})")

