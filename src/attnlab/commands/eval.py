"""``attnlab eval``: a checkpoint's metrics over whole data splits (loss, perplexity, bits/char, BLEU, chrF...)."""

from __future__ import annotations

import argparse

HELP = ("evaluate a checkpoint over whole splits: loss and perplexity (bits per character for character data; "
        "BLEU and chrF for translation, with the hypotheses written to a file)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (newest checkpoint)")
    p.add_argument("--data", help="language models: corpus or text file to evaluate on (default: the one it was "
                                  "trained on)")
    p.add_argument("--splits", default="val,test", help="comma-separated splits (missing ones are skipped)")
    p.add_argument("--batch-size", type=int, default=8, help="rows (windows, sentences) per evaluation batch")
    p.add_argument("--out", help="translation: directory for the hypotheses files (default: the run directory)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace

    from attnlab.commands._config_args import fail
    from attnlab.tasks import EvalContext
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.loading import load_trained

    if args.batch_size is not None and args.batch_size < 1:
        return fail(f"--batch-size must be a positive number of rows, got {args.batch_size}")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for split in splits:
        if split not in ("train", "val", "test"):
            return fail(f"unknown split {split!r} in --splits; choose from train, val, test")
    try:
        t = load_trained(args.checkpoint, device=args.device)
        task = t.task
        if args.data:
            if t.config.task != "lm":
                return fail(f"--data applies to language models; this checkpoint is a {t.config.task!r} model")
            task.data_cfg = replace(task.data_cfg, source=args.data)
        if hasattr(task, "set_output_dir"):
            task.set_output_dir(args.out or t.path.parent)
        available = ("train",) + task.splits
    except (CheckpointError, ValueError) as e:
        return fail(str(e))
    device = next(t.model.parameters()).device
    ctx = EvalContext(device=device, batch_size=args.batch_size, progress=not args.json)
    out = {"checkpoint": str(t.path), "step": t.state["step"], "task": t.config.task}
    for split in splits:
        if split not in available:
            continue
        try:
            r = task.evaluate(t.model, split, ctx)
        except ValueError as e:
            return fail(str(e))
        out[split] = r.to_dict()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['checkpoint']} (step {out['step']}, task {out['task']}):")
        for split in ("train", "val", "test"):
            if split in out:
                r = out[split]
                extra = f", {r['bits_per_char']:.4f} bits/char" if r["bits_per_char"] is not None else ""
                extra += "".join(f", {k} {v:.2f}" for k, v in r["metrics"].items())
                print(f"  {split:5s} loss {r['loss']:.4f}  ppl {r['ppl']:.2f}{extra}  ({r['tokens']:,} tokens)")
        for f in getattr(task, "written_files", []):
            print(f"  wrote {f}")
    return 0
