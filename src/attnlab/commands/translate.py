"""``attnlab translate``: translate sentences with a translation checkpoint (arguments, or stdin one per line)."""

from __future__ import annotations

import argparse

HELP = "translate sentences with a translation checkpoint (beam search; sentences as arguments or on stdin)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sentences", nargs="*", help="sentences to translate (default: read stdin, one per line)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (newest checkpoint)")
    p.add_argument("--search", choices=["beam", "greedy"], help="default: the run's")
    p.add_argument("--beam-size", type=int, help="default: the run's")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    import sys
    from dataclasses import replace

    from attnlab.commands._config_args import fail, load_checkpoint

    if args.batch_size < 1:
        return fail(f"--batch-size must be a positive number of sentences, got {args.batch_size}")
    t = load_checkpoint(args.checkpoint, device=args.device, task="translation")
    if isinstance(t, int):
        return t
    try:
        over = {k: v for k, v in (("search", args.search), ("beam_size", args.beam_size)) if v is not None}
        if over:
            t.task.options = replace(t.task.options, **over)
    except ValueError as e:
        return fail(f"--beam-size: {e}")
    sentences = list(args.sentences) or [line.rstrip("\n") for line in sys.stdin]
    empty = [i + 1 for i, s in enumerate(sentences) if not s.strip()]
    if not sentences or empty:
        return fail("give at least one sentence" if not sentences else
                    f"sentence {empty[0]} is empty; give one non-empty sentence per line")
    try:
        for line in t.task.translate(t.model, sentences, batch_size=args.batch_size):
            print(line)
    except ValueError as e:
        return fail(str(e))
    return 0
