"""The device and its two ceilings, measured before anything else in ``run_all.sh``.

* bf16 matrix rate: an 8192 x 8192 x 8192 ``torch.matmul`` on random data (2 * 8192^3 FLOP per product), median of
  10 timed products (CUDA events) after 3 warm-ups.
* Memory bandwidth: a device-to-device copy of a 2 GiB tensor, counting the bytes read plus the bytes written,
  median of 10 after 3 warm-ups.

The matrix rate is measured by ``gpu_common.matmul_ceiling``, as ``train_throughput.py`` measures its MFU ceiling.
Writes ``ceilings.json`` in ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from gpu_common import matmul_ceiling, timed_median_s  # noqa: E402


def measure() -> dict[str, object]:
    p = torch.cuda.get_device_properties(0)
    dev = torch.device("cuda")
    n = 8192
    mm = matmul_ceiling(dev, n=n)
    src = torch.randn(2**29, device=dev, dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    cp_s, _ = timed_median_s(lambda: dst.copy_(src), dev)
    nbytes = 2 * src.numel() * src.element_size()
    del src, dst
    torch.cuda.empty_cache()
    return {"gpu": p.name, "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "torch": torch.__version__, "cuda": torch.version.cuda,
            f"bf16 matmul {n}^3 TFLOP/s": mm["tflops"],
            "d2d copy TB/s (read+write)": nbytes / cp_s / 1e12}


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
