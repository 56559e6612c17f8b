"""``attnlab list``: every registered mechanism and what it supports."""

from __future__ import annotations

import argparse

from attnlab.commands._table import aligned

HELP = "list every registered attention mechanism with what it supports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="print only the names, one per line")


def table() -> str:
    from attnlab.layers.registry import all_specs

    rows = [[s.name, "causal" if s.causal else "bidirectional", "yes" if s.cross else "-", s.cache or "-",
             ", ".join(s.backends), s.description] for s in all_specs()]
    return aligned(["mechanism", "masking", "cross", "cached decoding", "backends / forms (reference first)",
                    "description"], rows)


def run(args: argparse.Namespace) -> int:
    from attnlab.layers.registry import names

    if args.names:
        print("\n".join(names()))
        return 0
    print(table())
    print(f"\n{len(names())} mechanisms")
    return 0
