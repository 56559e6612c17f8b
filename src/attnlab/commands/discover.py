"""``attnlab discover``: a causal graph with lags from a CSV of time series (or generated data), and correction rounds
with the links a user excludes (:mod:`attnlab.discovery`)."""

from __future__ import annotations

import argparse

HELP = ("temporal causal discovery: train a transformer forecaster over seeds, read a causal graph with lags out of "
        "its input gradients (graph.json, edges.csv, graph.png, scores.png); --exclude FILE --resume-from DIR runs a "
        "correction round with the links you rule out")


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_mutually_exclusive_group()
    data.add_argument("--csv", metavar="FILE", help="the series: numeric columns in time order (an optional leading "
                                                    "'date' column is ignored); one variable per column")
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
    m = p.add_argument_group("the forecaster and the extraction")
    m.add_argument("--look-back", type=int, default=5, help="lags P the forecaster sees (default 5; must cover the "
                                                            "largest lag to be found)")
    m.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    m.add_argument("--steps", type=int, default=1500, help="optimizer steps of a fresh run (default 1500)")
    m.add_argument("--fine-tune-steps", type=int, default=500, help="steps of a fine-tuning round (default 500)")
    m.add_argument("--masking", choices=("streams", "propagate"), default="streams",
                   help="how exclusions hold across layers: streams (exact, N-fold batch; default) or propagate "
                        "(source-set propagation: one pass, conservative with depth)")
    m.add_argument("--tokens", choices=("variable", "lag"), default="variable", help="one token per variable "
                                                                                     "(default) or per (variable, lag)")
    m.add_argument("--layers", type=int, default=2, help="encoder layers (default 2)")
    m.add_argument("--d-model", type=int, default=32, help="model width (default 32)")
    m.add_argument("--threshold", choices=("fixed", "kmeans"), default="fixed",
                   help="edges: row-normalised score >= --delta (default) or k-means (3 clusters, top 2 kept)")
    m.add_argument("--delta", type=float, default=0.5, help="the fixed threshold (default 0.5)")
    m.add_argument("--scale", choices=("row", "global"), default="row",
                   help="scores are divided by each row's largest off-diagonal score (row, default; gives every "
                        "variable at least one candidate cause at score 1) or by the graph's largest (global)")
    m.add_argument("--statistic", choices=("abs", "sq"), default="abs", help="mean |gradient| (default) or mean "
                                                                              "squared gradient")
    m.add_argument("--score-windows", type=int, default=1000, help="held-out windows the gradients are averaged over")
    m.add_argument("--device", default="cpu")


def _config(args: argparse.Namespace) -> object:
    from attnlab.commands._config_args import csv_list
    from attnlab.discovery import DiscoveryConfig, Threshold
    from attnlab.models.timeseries.causal import CausalForecasterConfig

    try:
        seeds = tuple(int(s) for s in csv_list(args.seeds, "--seeds"))
    except ValueError as e:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
    n_heads = 4 if args.d_model % 4 == 0 else 1
    return DiscoveryConfig(
        model=CausalForecasterConfig(tokens=args.tokens, masking=args.masking, n_layers=args.layers,
                                     d_model=args.d_model, n_heads=n_heads),
        look_back=args.look_back, seeds=seeds, steps=args.steps, fine_tune_steps=args.fine_tune_steps,
        score_windows=args.score_windows, statistic=args.statistic, device=args.device,
        threshold=Threshold(method=args.threshold, delta=args.delta, scale=args.scale))


def run(args: argparse.Namespace) -> int:
    import dataclasses

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
    if args.look_back < 1:
        return fail(f"--look-back must be >= 1 (the lags the forecaster sees), got {args.look_back}")
    try:
        cfg = _config(args)
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
            new_cfg = dataclasses.replace(prev.config, steps=cfg.steps, fine_tune_steps=cfg.fine_tune_steps,
                                          device=cfg.device)
            result: DiscoveryResult = refine(prev, exclude=excluded, out=args.out, series=args.csv,
                                             mode="retrain" if args.retrain else "finetune", force=args.force,
                                             config=new_cfg)
        else:
            series = truth if truth is not None else args.csv
            excluded = []
            if args.exclude:
                from attnlab.data.timeseries import load_timeseries

                cols = truth.columns if truth is not None else load_timeseries(args.csv, dates="optional").columns
                excluded = read_exclusions(args.exclude, list(cols))
            result = discover(series, out=args.out, config=cfg, exclude=excluded, force=args.force)
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
