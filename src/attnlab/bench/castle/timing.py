"""Table (a) of the ``castle`` suite: the CASTLE layer's time against the standard layer's at equal parameters.

Forward (``torch.no_grad``) and forward+backward (input and parameter gradients) of both layers, timed
interleaved in this process; median after warm-up. Target on CPU: CASTLE / standard <= :data:`TIME_TARGET`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnlab.bench.castle.sizes import castle_impl_of
from attnlab.bench.core import BenchOptions
from attnlab.bench.steps import layer_step, progress, short_error, time_steps

__all__ = ["TIME_TARGET", "TIME_COLUMNS", "time_table"]

TIME_TARGET = 2.5  # CASTLE / standard time on CPU, forward and forward+backward
TIME_COLUMNS = ["T", "status", "castle impl", "standard fwd ms", "castle fwd ms", "fwd ratio",
                "standard fwd+bwd ms", "castle fwd+bwd ms", "fwd+bwd ratio", "target", "met"]


def time_table(std: nn.Module, cas: nn.Module, castle_status: str, std_status: str, lengths: tuple[int, ...],
               options: BenchOptions) -> list[dict[str, Any]]:
    rows = []
    for T in progress(list(lengths), options, "castle: time"):
        status = castle_status if castle_status != "ok" else std_status
        row: dict[str, Any] = {"T": T, "status": status, "castle impl": castle_impl_of(cas, options)}
        if std_status != "ok":
            rows.append(row)
            continue
        try:
            x = torch.randn(options.batch_size, T, options.d_model, device=options.device, dtype=options.dtype,
                            requires_grad=True)
            g = torch.randn_like(x)
            steps = {"standard": layer_step(std, x, g)}
            if castle_status == "ok":
                steps["castle"] = layer_step(cas, x, g)
            for k, t in time_steps(steps, options).items():
                row[f"{k} fwd ms"], row[f"{k} fwd+bwd ms"] = t["fwd ms"], t["fwd+bwd ms"]
            if "castle" in steps:
                row["fwd ratio"] = row["castle fwd ms"] / row["standard fwd ms"]
                row["fwd+bwd ratio"] = row["castle fwd+bwd ms"] / row["standard fwd+bwd ms"]
                if not options.is_cuda:
                    row["target"] = f"<= {TIME_TARGET:g}"
                    row["met"] = "yes" if max(row["fwd ratio"], row["fwd+bwd ratio"]) <= TIME_TARGET else "NO"
        except Exception as exc:
            row["status"] = short_error(exc)
        rows.append(row)
    return rows
