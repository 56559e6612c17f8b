"""``attnlab masks --length T --out DIR``: render every mask pattern as a PNG, plus a gallery.

The gallery includes the four vision-language masks (``vlm_causal``, ``future_full``, ``future_v2v``,
``future_v2t``; :mod:`attnlab.masks.vlm`) on a two-image layout of ``T`` positions
(:func:`attnlab.masks.render.example_vlm_layout`: text prefix, image A, text, image B, question).

``--length`` must lie in ``[4, 1024]`` (:data:`attnlab.masks.render.MAX_RENDER_LENGTH`: a picture is about 500 pixels
wide); anything else is refused before any mask is materialised: ``attnlab: error: ...`` on stderr, exit status 2.
"""

from __future__ import annotations

import argparse

HELP = "render every mask pattern as a PNG (and a combined gallery.png)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int, default=64,
                        help="sequence length T of the pictures, 4 to 1024 (default 64)")
    parser.add_argument("--out", default="out/masks", help="output directory (default out/masks)")


def run(args: argparse.Namespace) -> int:
    from attnlab.commands._config_args import fail
    from attnlab.masks.render import MAX_RENDER_LENGTH, MIN_GALLERY_LENGTH, gallery

    if not MIN_GALLERY_LENGTH <= args.length <= MAX_RENDER_LENGTH:
        return fail(f"--length must be between {MIN_GALLERY_LENGTH} and {MAX_RENDER_LENGTH} (the maximum: a picture "
                    f"is about 500 pixels wide), got --length {args.length}")
    try:
        paths = gallery(args.length, args.out)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    for p in paths:
        print(p)
    print(f"\n{len(paths) - 1} masks rendered; gallery: {paths[-1]}")
    return 0
