"""``attnlab export --checkpoint RUN --format hf --out DIR``: a trained LM as a Hugging Face model directory.

A standard-attention LM (every layer ``standard``, ``gqa`` or ``mqa``) becomes a ``LlamaForCausalLM``
(:mod:`attnlab.integrations.hf_export`), loadable with ``transformers.AutoModelForCausalLM.from_pretrained(DIR)``;
any other LM an ``AttnlabForCausalLM``, loadable the same way after ``import attnlab.integrations.hf``.
Needs ``pip install 'attnlab[hf]'``. Exit status 2 with ``attnlab: error: ...`` for a checkpoint that cannot be
exported, a missing extra or an output directory that holds files (``--force`` moves it aside).
"""

from __future__ import annotations

import argparse

HELP = ("export a trained LM checkpoint as a Hugging Face model directory (LlamaForCausalLM for standard attention, "
        "AttnlabForCausalLM for any other mechanism)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (newest checkpoint)")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers model directory (default)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty)")
    p.add_argument("--as", dest="arch", choices=["auto", "llama", "attnlab"], default="auto",
                   help="auto (default): LlamaForCausalLM when every layer has a Llama form, else AttnlabForCausalLM")
    p.add_argument("--force", action="store_true", help="move an existing output directory aside first")


def run(args: argparse.Namespace) -> int:
    from attnlab.commands._config_args import fail
    from attnlab.train.checkpoint import CheckpointError

    try:
        from attnlab.integrations.hf_export import export_hf
    except ImportError as exc:  # pragma: no cover - the module itself imports nothing optional at import time
        return fail(str(exc))
    try:
        out, kind = export_hf(args.checkpoint, args.out, arch=args.arch, force=args.force)
    except ImportError as exc:
        return fail(f"attnlab export --format hf needs transformers: pip install 'attnlab[hf]' ({exc})")
    except (CheckpointError, ValueError) as exc:
        return fail(str(exc))
    how = "" if kind == "LlamaForCausalLM" else ", after import attnlab.integrations.hf"
    print(f"wrote {out} ({kind}; load with transformers.AutoModelForCausalLM.from_pretrained{how})")
    return 0
