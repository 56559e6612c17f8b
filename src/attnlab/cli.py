"""The ``attnlab`` command line: a thin layer over the library.

Each subcommand lives in its own module under :mod:`attnlab.commands` and defines

* ``HELP``: one line for ``attnlab --help``;
* ``add_arguments(parser)``: its flags;
* ``run(args) -> int``: the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import attnlab.commands as _commands


def _subcommands() -> dict[str, object]:
    mods = {}
    for m in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            mods[m.name.replace("_", "-")] = importlib.import_module(f"attnlab.commands.{m.name}")
    return mods


def build_parser() -> argparse.ArgumentParser:
    from attnlab import __version__

    parser = argparse.ArgumentParser(prog="attnlab", description="A lab for attention mechanisms.")
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _subcommands().items():
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        mod.add_arguments(p)  # type: ignore[attr-defined]
        p.set_defaults(_run=mod.run)  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
