"""``attnlab eval``: a checkpoint's metrics over whole data splits (loss, perplexity, bits/char, BLEU, chrF...)."""

from __future__ import annotations

import argparse

HELP = ("evaluate a checkpoint over whole splits: loss and perplexity (bits per character for character data; "
        "BLEU and chrF for translation, with the hypotheses written to a file; MSE and MAE for forecasting, per "
        "horizon step to a CSV file)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (newest checkpoint)")
    p.add_argument("--data", help="corpus to evaluate on: a bundled name (tinyshakespeare, wikitext2, multi30k) or a "
                                  "path (default: the bundled corpus it was trained on; a path stored in the "
                                  "checkpoint is not followed unless --stored-data is given)")
    p.add_argument("--stored-data", action="store_true",
                   help="evaluate on the data path stored in the checkpoint (printed); checkpoints are data, so a "
                        "stored path is read only when asked")
    p.add_argument("--splits", default="val,test", help="comma-separated splits (missing ones are skipped)")
    p.add_argument("--batch-size", type=int, default=8, help="rows (windows, sentences) per evaluation batch")
    p.add_argument("--out", help="translation: directory for the hypotheses files; forecasting: for the per-step "
                                 "horizon-mse-<split>.csv (default: the run directory)")
    p.add_argument("--skip-layers", metavar="LAYERS",
                   help="Hybrid-SKIP: evaluate with these layers removed, without retraining: 'variant' (every "
                        "non-standard layer of a hybrid), 'odd' (the Standard-SKIP control on a standard model), "
                        "'even', or layer numbers from 1 ('1,3'); the checkpoint is not changed")
    p.add_argument("--skip-part", choices=("block", "mixer"), default="block",
                   help="with --skip-layers: remove whole blocks (default) or only their attention/variant mixers")
    p.add_argument("--harness", metavar="TASKS",
                   help="instead of the splits: run lm-evaluation-harness tasks (comma-separated) on this language "
                        "model (attnlab[eval]; the tasks' data must be reachable or local)")
    p.add_argument("--harness-include", metavar="DIR", help="with --harness: a directory of extra task YAML files")
    p.add_argument("--harness-limit", type=float, default=None,
                   help="with --harness: at most this many documents per task (or a fraction below 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json

    from attnlab.commands._config_args import fail
    from attnlab.tasks import EvalContext, EvalResult
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.loading import load_trained

    if args.batch_size is not None and args.batch_size < 1:
        return fail(f"--batch-size must be a positive number of rows, got {args.batch_size}")
    if args.harness is not None:
        return _harness(args)
    if args.harness_include is not None or args.harness_limit is not None:
        return fail("--harness-include and --harness-limit go with --harness TASKS")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for split in splits:
        if split not in ("train", "val", "test"):
            return fail(f"unknown split {split!r} in --splits; choose from train, val, test")
    if args.data and args.stored_data:
        return fail("--data and --stored-data both choose the data; give one")
    try:
        t = load_trained(args.checkpoint, device=args.device, data=args.data, stored_data=args.stored_data)
        task = t.task
        if t.data_source is None and t.stored_source is not None:  # a stored path: never followed silently
            return fail(f"checkpoint {str(t.path)!r} was trained on {t.stored_source!r}, a path stored in the "
                        f"checkpoint, which eval does not follow on its own; pass --data PATH (or a bundled corpus "
                        f"name) to choose the data, or --stored-data to evaluate on {t.stored_source!r}")
        if args.stored_data and not args.json:
            print(f"data: {t.data_source} (the path stored in the checkpoint, --stored-data)")
        if hasattr(task, "set_output_dir"):  # hypotheses go to the run directory of the checkpoint, or --out
            task.set_output_dir(args.out or t.path.parent)
        available = ("train",) + task.splits
    except (CheckpointError, ValueError) as e:
        return fail(str(e))
    layers: list[int] = []
    if args.skip_layers is not None:
        if not hasattr(t.model, "skipping"):
            return fail(f"--skip-layers applies to decoder-only language models; {str(t.path)!r} is a "
                        f"{t.config.task!r} model")
        from attnlab.models.lm.skip import resolve_skip_layers

        try:
            layers = resolve_skip_layers(args.skip_layers, t.model.mechanisms, name="--skip-layers")
        except ValueError as e:
            return fail(str(e))
        if not args.json:
            print(f"SKIP: layers {', '.join(map(str, layers))} removed ({args.skip_part}); mechanisms "
                  f"{', '.join(t.model.mechanisms)}")
    device = next(t.model.parameters()).device
    ctx = EvalContext(device=device, batch_size=args.batch_size, progress=not args.json)
    out = {"checkpoint": str(t.path), "step": t.state["step"], "task": t.config.task, "data": t.data_source}
    results: dict[str, EvalResult] = {}
    if args.skip_layers is not None:
        out["skip"] = {"layers": layers, "part": args.skip_part}
    for split in splits:
        if split not in available:
            continue
        try:
            with t.model.skipping(layers, part=args.skip_part) if layers else contextlib.nullcontext():
                r = task.evaluate(t.model, split, ctx)
        except ValueError as e:
            return fail(str(e))
        except OSError as e:  # e.g. the hypotheses file cannot be written
            return fail(f"{e.filename or 'eval'}: {e.strerror or e}")
        out[split] = r.to_dict()
        results[split] = r
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['checkpoint']} (step {out['step']}, task {out['task']}):")
        for split in ("train", "val", "test"):
            if split in results and type(results[split]).summary is not EvalResult.summary:
                print(f"  {results[split].summary()}")  # a task's own line (forecasting: MSE and MAE, no perplexity)
            elif split in out:
                r = out[split]
                extra = f", {r['bits_per_char']:.4f} bits/char" if r["bits_per_char"] is not None else ""
                extra += "".join(f", {k} {v:.2f}" for k, v in r["metrics"].items())
                print(f"  {split:5s} loss {r['loss']:.4f}  ppl {r['ppl']:.2f}{extra}  ({r['tokens']:,} tokens)")
        for f in getattr(task, "written_files", []):
            print(f"  wrote {f}")
    return 0


def _harness(args: argparse.Namespace) -> int:
    """``attnlab eval --harness TASKS``: lm-evaluation-harness on the checkpoint (a thin wrapper)."""
    import json

    from attnlab.commands._config_args import fail

    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    if not tasks:
        return fail("--harness needs at least one task name")
    if args.harness_limit is not None and not args.harness_limit > 0:
        return fail(f"--harness-limit must be positive, got {args.harness_limit}")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        import attnlab.integrations.lm_eval  # noqa: F401  (registers "attnlab")
    except ImportError as e:
        return fail(f"--harness needs lm-evaluation-harness: pip install 'attnlab[eval]' ({e})")
    device = "cpu" if args.device == "auto" else args.device
    try:
        manager = TaskManager(include_path=args.harness_include) if args.harness_include else TaskManager()
        res = lm_eval.simple_evaluate(model="attnlab", model_args={"checkpoint": args.checkpoint, "device": device},
                                      tasks=tasks, batch_size=args.batch_size, limit=args.harness_limit,
                                      task_manager=manager, log_samples=False)
    except (ValueError, KeyError) as e:
        return fail(f"--harness: {e}")
    results = res["results"] if res else {}
    if args.json:
        print(json.dumps(results, indent=1, default=str))
    else:
        for task, metrics in results.items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"{task}: {shown}")
    return 0
