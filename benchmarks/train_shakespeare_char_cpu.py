"""Trainer benchmark: nanoGPT's CPU shakespeare_char setting with standard attention.

Runs the ``shakespeare-char-cpu`` preset (4 layers, 4 heads, 128 dims, block 64, batch 12, 2000 iterations,
lr 1e-3, dropout 0) and writes ``benchmarks/results/train-shakespeare-char-cpu.md`` (+ a loss-curve PNG):
validation loss over the whole validation split against nanoGPT's published ~1.88, training tokens/s, and the
trainer's own overhead (the fraction of training time spent outside forward, backward and the optimizer step).

    .venv/bin/python benchmarks/train_shakespeare_char_cpu.py [--threads N] [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import torch

from attnlab.bench.report import machine_info
from attnlab.train.presets import get_preset
from attnlab.train.trainer import train

NANOGPT_CPU_VAL_LOSS = 1.88  # nanoGPT README, shakespeare_char on CPU (about 1.88)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--force", action="store_true", help="overwrite an existing result file")
    args = ap.parse_args()
    out = Path(args.out)
    md = out / "train-shakespeare-char-cpu.md"
    png = out / "train-shakespeare-char-cpu.png"
    if md.exists() and not args.force:
        print(f"{md} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset("shakespeare-char-cpu")
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(cfg, out_dir=run_dir)
    assert result.val is not None
    out.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, losses = zip(*result.train_losses)
    ax.plot(steps, losses, lw=0.8, alpha=0.6, label="train (per logged step)")
    es, ev = zip(*result.eval_history)
    ax.plot(es, ev, "o-", label="validation (whole split)")
    ax.axhline(NANOGPT_CPU_VAL_LOSS, color="gray", ls="--", label=f"nanoGPT CPU reference {NANOGPT_CPU_VAL_LOSS}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title("shakespeare-char-cpu, standard attention")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)

    info = machine_info()
    command = "python benchmarks/train_shakespeare_char_cpu.py" + " ".join([""] + sys.argv[1:])
    met = result.val.loss <= NANOGPT_CPU_VAL_LOSS
    lines = [
        "# Trainer benchmark: nanoGPT's CPU shakespeare_char setting",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
        "Setting: preset `shakespeare-char-cpu` = nanoGPT's CPU settings (4 layers, 4 heads, 128 dims, block 64,",
        "batch 12, 2000 iterations, lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4, dropout 0), standard",
        f"causal attention, LLaMA-style blocks (RMSNorm, RoPE, SwiGLU), {result.n_params:,} parameters.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| validation loss (whole split, {result.val.tokens:,} targets) | **{result.val.loss:.4f}** |",
        f"| bits per character | {result.val.bits_per_char:.4f} |",
        f"| nanoGPT's published CPU figure | about {NANOGPT_CPU_VAL_LOSS} |",
        f"| target (<= {NANOGPT_CPU_VAL_LOSS}) met | {'yes' if met else 'NO'} |",
        f"| training tokens/s | {result.tokens_per_s:,.0f} |",
        f"| training time (s) | {result.train_time_s:.1f} |",
        f"| of which forward + backward + optimizer step (s) | {result.compute_time_s:.1f} |",
        f"| trainer overhead (fraction of training time outside them) | {100 * result.overhead_fraction:.2f} % |",
        f"| evaluation time (s) | {result.eval_time_s:.1f} |",
        f"| wall time (s) | {result.wall_s:.1f} |",
        "",
        "Validation loss during training:",
        "",
        "| step | validation loss |",
        "|---|---|",
        *[f"| {s} | {v:.4f} |" for s, v in result.eval_history],
        "",
        f"![loss curves]({png.name})",
        "",
    ]
    md.write_text("\n".join(lines))
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
