"""The device and its two ceilings, measured before anything else in ``run_all.sh``.

* bf16 matrix rate: an 8192 x 8192 x 8192 ``torch.matmul`` on random data (2 * 8192^3 FLOP per product), median of
  10 timed products (CUDA events) after 3 warm-ups.
* Memory bandwidth: a device-to-device copy of a 2 GiB tensor, counting the bytes read plus the bytes written,
  median of 10 after 3 warm-ups.

The MFU figures of ``train_throughput.py`` use the datasheet's dense bf16 peak and, beside it, this measured rate.
Writes ``ceilings.json`` in ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


def _median_ms(fn, warmup: int = 3, reps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def measure() -> dict[str, object]:
    p = torch.cuda.get_device_properties(0)
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    mm_ms = _median_ms(lambda: torch.matmul(x, y))
    del x, y
    src = torch.randn(2**29, device="cuda", dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    cp_ms = _median_ms(lambda: dst.copy_(src))
    nbytes = 2 * src.numel() * src.element_size()
    del src, dst
    torch.cuda.empty_cache()
    return {"gpu": p.name, "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16 matmul 8192^3 TFLOP/s": 2 * n**3 / (mm_ms * 1e-3) / 1e12,
            "d2d copy TB/s (read+write)": nbytes / (cp_ms * 1e-3) / 1e12}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("ceilings.py: needs a CUDA device", file=sys.stderr)
        return 2
    try:
        import triton

        extra = {"triton": triton.__version__}
    except ImportError:
        extra = {"triton": None}
    res = measure() | extra | {"python": sys.version.split()[0]}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ceilings.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
