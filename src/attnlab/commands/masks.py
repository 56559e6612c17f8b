"""``attnlab masks --length T --out DIR``: render every mask pattern as a PNG, plus a gallery."""

from __future__ import annotations

import argparse

HELP = "render every mask pattern as a PNG (and a combined gallery.png)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int, default=64, help="sequence length T of the pictures (default 64)")
    parser.add_argument("--out", default="out/masks", help="output directory (default out/masks)")


def run(args: argparse.Namespace) -> int:
    from attnlab.masks.render import gallery

    try:
        paths = gallery(args.length, args.out)
    except ValueError as exc:
        print(f"attnlab masks: {exc}")
        return 2
    for p in paths:
        print(p)
    print(f"\n{len(paths) - 1} masks rendered; gallery: {paths[-1]}")
    return 0
