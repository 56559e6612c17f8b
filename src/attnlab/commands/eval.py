"""``attnlab eval``: loss, perplexity (and bits per character) of a checkpoint on whole data splits."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint: validation/test loss, perplexity and bits per character over whole splits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (newest checkpoint)")
    p.add_argument("--data", help="corpus or text file to evaluate on (default: the one it was trained on)")
    p.add_argument("--splits", default="val,test", help="comma-separated splits (missing ones are skipped)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per evaluation batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from attnlab.data import load_corpus
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.cliargs import fail
    from attnlab.train.loading import load_trained
    from attnlab.train.trainer import evaluate

    if args.batch_size is not None and args.batch_size < 1:
        return fail(f"--batch-size must be a positive number of windows, got {args.batch_size}")
    try:
        t = load_trained(args.checkpoint, device=args.device)
        d = t.config.data
        corpus = load_corpus(args.data or d.source, tokenizer=t.tokenizer if t.tokenizer is not None else d.tokenizer,
                             cache_dir=d.cache_dir, val_fraction=d.val_fraction, progress=False)
    except (CheckpointError, ValueError) as e:
        return fail(str(e))
    device = next(t.model.parameters()).device
    out = {"checkpoint": str(t.path), "step": t.state["step"], "corpus": corpus.name}
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        if split not in ("train", "val", "test"):
            return fail(f"unknown split {split!r}; choose from train, val, test")
        toks = getattr(corpus, split)
        if toks is None:
            continue
        r = evaluate(t.model, toks, split=split, block_size=t.config.model.block_size, batch_size=args.batch_size,
                     device=device, char_level=corpus.tokenizer.name == "char")
        out[split] = r.to_dict()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['checkpoint']} (step {out['step']}) on {out['corpus']}:")
        for split in ("train", "val", "test"):
            if split in out:
                r = out[split]
                extra = f", {r['bits_per_char']:.4f} bits/char" if r["bits_per_char"] is not None else ""
                print(f"  {split:5s} loss {r['loss']:.4f}  ppl {r['ppl']:.2f}{extra}  ({r['tokens']:,} tokens)")
    return 0
