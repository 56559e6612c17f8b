"""``attnlab generate``: sample text from a checkpoint with the mechanisms' decoding caches."""

from __future__ import annotations

import argparse

HELP = "generate text from a checkpoint (cached decoding: KV, sliding KV, UQ-KV or recurrent state)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (newest checkpoint)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens whose "
                                                             "probabilities first sum to this, in (0, 1] (default 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    import math

    from attnlab.commands._config_args import fail, load_checkpoint
    from attnlab.layers import registry
    from attnlab.models.lm import generate

    if not math.isfinite(args.top_p) or not 0.0 < args.top_p <= 1.0:
        return fail(f"--top-p must be a number in (0, 1], got {args.top_p}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        return fail(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    t = load_checkpoint(args.checkpoint, device=args.device, task="lm")
    if isinstance(t, int):
        return t
    try:
        tokenizer = t.tokenizer
    except ValueError:  # the task would build it from data a stored path names: a checkpoint is not followed
        tokenizer = None
    if tokenizer is None:
        return fail(f"checkpoint {t.path} holds no tokenizer (task_state.tokenizer in state.json)")
    try:
        ids = tokenizer.encode(args.prompt)
    except ValueError as e:
        return fail(f"cannot encode the prompt: {e}")
    if not ids:
        return fail("the prompt encodes to no tokens; give a non-empty --prompt")
    use_cache = not args.no_cache
    no_cache = [m for m in t.model.mechanisms if registry.get(m).cache is None] if hasattr(t.model, "mechanisms") else []
    if use_cache and no_cache:
        print(f"note: {', '.join(sorted(set(no_cache)))} has no decoding cache; recomputing the context per token")
        use_cache = False
    try:
        for i in range(args.num_samples):
            seed = None if args.seed is None else args.seed + i
            out = generate(t.model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p,
                           seed=seed, use_cache=use_cache)
            if args.num_samples > 1:
                print(f"--- sample {i + 1}")
            print(tokenizer.decode(out.tolist()))
    except ValueError as e:
        return fail(str(e))
    return 0
