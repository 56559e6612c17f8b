"""``attnlab discover``: a causal graph with lags from a CSV of time series (or generated data), and correction rounds
with the links a user excludes (:mod:`attnlab.discovery`)."""

from __future__ import annotations

import argparse

HELP = ("temporal causal discovery: train a transformer forecaster over seeds, read a causal graph with lags out of "
        "its input gradients (graph.json, edges.csv, graph.png, scores.png); --exclude FILE --resume-from DIR runs a "
        "correction round with the links you rule out")


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_mutually_exclusive_group()
    data.add_argument("--csv", metavar="FILE", help="the series: one numeric column per variable, rows in time order "
                                                    "(an optional leading 'date' column must hold strictly "
                                                    "increasing ISO dates; it is not a variable)")
    data.add_argument("--generate", metavar="KIND", help="generate a system with a known graph instead: var (G1, "
                                                         "linear VAR), svar (G2), lorenz96 (G3), confounder (G4)")
    p.add_argument("--out", required=True, metavar="DIR", help="the round's directory (refused if it exists, unless "
                                                               "--force replaces a previous discovery run)")
    p.add_argument("--exclude", metavar="FILE", help="links to rule out: a CSV with 'cause' and 'effect' columns (rows "
                                                     "of edges.csv can be copied) or JSON")
    p.add_argument("--resume-from", metavar="DIR", help="the previous round: its exclusions are kept, and each seed is "
                                                        "fine-tuned from its weights (or retrained with --retrain)")
    p.add_argument("--retrain", action="store_true", help="with --resume-from: train afresh instead of fine-tuning")
    p.add_argument("--force", action="store_true", help="replace a previous discovery run in --out")
    g = p.add_argument_group("generated data (--generate)")
    g.add_argument("--n-vars", type=int, default=5, help="variables (default 5)")
    g.add_argument("--length", type=int, default=5000, help="time steps (default 5000)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the generated system (default 0)")
    g.add_argument("--max-lag", type=int, default=3, help="largest true lag of var/svar/confounder (default 3)")
    m = p.add_argument_group("the forecaster and the extraction (a correction round keeps the previous round's "
                             "values of the flags it is not given)")
    m.add_argument("--look-back", type=int, help="lags P the forecaster sees (default 5; must cover the largest lag "
                                                 "to be found)")
    m.add_argument("--seeds", help="comma-separated training seeds (default 0,1,2)")
    m.add_argument("--steps", type=int, help="optimizer steps of a fresh run (default 1500)")
    m.add_argument("--fine-tune-steps", type=int, help="steps of a fine-tuning round (default 500)")
    m.add_argument("--masking", choices=("streams", "propagate"),
                   help="how exclusions hold across layers: streams (exact, N-fold batch; default) or propagate "
                        "(source-set propagation: one pass, conservative with depth)")
    m.add_argument("--tokens", choices=("variable", "lag"), help="one token per variable (default) or per "
                                                                 "(variable, lag)")
    m.add_argument("--layers", type=int, help="encoder layers (default 2)")
    m.add_argument("--d-model", type=int, help="model width (default 32)")
    m.add_argument("--threshold", choices=("fixed", "kmeans", "kmeans_global"),
                   help="edges: scaled score >= --delta (fixed, default); kmeans: 3 clusters per effect's row, the top "
                        "2 kept (CausalFormer's rule); kmeans_global: one clustering of every score")
    m.add_argument("--delta", type=float, help="the fixed threshold (default 0.5)")
    m.add_argument("--scale", choices=("row", "row_self", "global"),
                   help="scores are divided by each row's largest off-diagonal score (row, default; gives every "
                        "variable at least one candidate cause at score 1), by the row's largest score with the "
                        "variable's own past included (row_self) or by the graph's largest (global)")
    m.add_argument("--statistic", choices=("abs", "sq"), help="mean |gradient| (default) or mean squared gradient")
    m.add_argument("--score-windows", type=int, help="held-out windows the gradients are averaged over (default 1000)")
    m.add_argument("--device", help="cpu (default), cuda, ...")
    m.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars while training (default: when stderr is a terminal)")


def _config(args: argparse.Namespace, base: object | None = None) -> object:
    """The round's config: ``base`` (the previous round's, or the defaults) with the flags that were given."""
    import dataclasses

    from attnlab.commands._config_args import csv_list
    from attnlab.discovery import DiscoveryConfig

    cfg = base if base is not None else DiscoveryConfig()
    top: dict[str, object] = {}
    if args.seeds is not None:
        try:
            top["seeds"] = tuple(int(s) for s in csv_list(args.seeds, "--seeds"))
        except ValueError as e:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
    for flag, key in (("look_back", "look_back"), ("steps", "steps"), ("fine_tune_steps", "fine_tune_steps"),
                      ("score_windows", "score_windows"), ("statistic", "statistic"), ("device", "device")):
        if getattr(args, flag) is not None:
            top[key] = getattr(args, flag)
    model = {k: getattr(args, f) for f, k in (("tokens", "tokens"), ("masking", "masking"), ("layers", "n_layers"),
                                               ("d_model", "d_model")) if getattr(args, f) is not None}
    if "d_model" in model:
        model["n_heads"] = 4 if int(model["d_model"]) % 4 == 0 else 1  # type: ignore[call-overload]
    th = {k: getattr(args, f) for f, k in (("threshold", "method"), ("delta", "delta"), ("scale", "scale"))
          if getattr(args, f) is not None}
    import sys

    top["progress"] = sys.stderr.isatty() if args.progress is None else args.progress
    if model:
        top["model"] = dataclasses.replace(cfg.model, **model)  # type: ignore[attr-defined]
    if th:
        top["threshold"] = dataclasses.replace(cfg.threshold, **th)  # type: ignore[attr-defined]
    return dataclasses.replace(cfg, **top)  # type: ignore[type-var]


def run(args: argparse.Namespace) -> int:
    from attnlab.commands._config_args import fail
    from attnlab.discovery import discover, generate, load_result, read_exclusions, refine
    from attnlab.discovery.run import DiscoveryResult

    if args.retrain and not args.resume_from:
        return fail("--retrain needs --resume-from (the round to start again from)")
    if args.resume_from and args.generate:
        return fail("--generate starts a first round; a correction round reads the previous round's data "
                    "(give --resume-from DIR, and --csv only to name the series again)")
    if not args.resume_from and not args.csv and not args.generate:
        return fail("name the data: --csv FILE or --generate KIND (or --resume-from DIR for a correction round)")
    if args.look_back is not None and args.look_back < 1:
        return fail(f"--look-back must be >= 1 (the lags the forecaster sees), got {args.look_back}")
    try:
        truth = None
        if args.generate:
            truth = generate(args.generate, n_vars=args.n_vars, length=args.length, seed=args.data_seed,
                             max_lag=args.max_lag)
        if args.resume_from:
            prev = load_result(args.resume_from)
            columns = prev.graph.columns
            excluded = read_exclusions(args.exclude, columns) if args.exclude else []
            if args.csv is None and not args.exclude:
                print("note: no --exclude given: the round runs again with the previous exclusions only")
            result: DiscoveryResult = refine(prev, exclude=excluded, out=args.out, series=args.csv,
                                             mode="retrain" if args.retrain else "finetune", force=args.force,
                                             config=_config(args, prev.config))
        else:
            series = truth if truth is not None else args.csv
            excluded = []
            if args.exclude:
                from attnlab.data.timeseries import load_timeseries

                cols = truth.columns if truth is not None else load_timeseries(args.csv, dates="optional").columns
                excluded = read_exclusions(args.exclude, list(cols))
            result = discover(series, out=args.out, config=_config(args), exclude=excluded, force=args.force)
    except (ValueError, FileExistsError) as e:
        return fail(str(e))
    _report(result)
    return 0


def _report(result: object) -> None:
    r = result  # a DiscoveryResult
    edges = r.graph.edges()  # type: ignore[attr-defined]
    print(f"{'cause':>10} -> {'effect':<10} {'lag':>3} {'score':>6} {'seeds':>5}")
    for e in edges:
        print(f"{e['cause']:>10} -> {e['effect']:<10} {e['lag']:>3} {e['score']:>6.3f} "
              f"{e['seeds']:>2}/{r.graph.n_seeds}")  # type: ignore[attr-defined]
    ch = r.changes  # type: ignore[attr-defined]
    if ch is not None:
        print(f"since the previous round: {len(ch['added'])} added, {len(ch['removed'])} removed, "
              f"{len(ch['lag_changed'])} with another lag"
              + "".join(f"\n  - {e['cause']} -> {e['effect']} (lag {e['lag']})" for e in ch["removed"])
              + "".join(f"\n  + {e['cause']} -> {e['effect']} (lag {e['lag']})" for e in ch["added"]))
    m = r.metrics  # type: ignore[attr-defined]
    if m is not None:
        lag = "n/a" if m["lag_accuracy"] is None else f"{m['lag_accuracy']:.3f}"
        auroc = "n/a" if m["auroc"] is None else f"{m['auroc']:.3f}"
        print(f"against the true graph (self-edges excluded): AUROC {auroc}, F1 {m['f1']:.3f} (precision "
              f"{m['precision']:.3f}, recall {m['recall']:.3f}), lag accuracy {lag}")
    out = r.out_dir  # type: ignore[attr-defined]
    print(f"wrote {out}/graph.json, edges.csv, graph.png, scores.png; to correct it, list the links to rule out "
          f"in a file (cause,effect) and run: attnlab discover --exclude FILE --resume-from {out} --out DIR")
