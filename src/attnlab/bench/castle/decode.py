"""Table (c) of the ``castle`` suite: one cached decoding step of each layer, and the size of their caches.

Decode: batch 1, ``x`` of one token, ``torch.no_grad``: ``CastleAttention`` + ``UQKVCache`` against
``MultiHeadAttention`` + ``KVCache``, after a prefill of the context; latency ratio (target <=
:data:`DECODE_TARGET`) and its growth from the shorter to the longer context. Cache memory: ``memory_bytes()`` of
both caches after the prefill, and the ratio expected from spec section 3.4 (``4 n_C / (2 n_std)``: 8/7 at exact
parity, e.g. 14 -> 8 heads).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from attnlab.bench.castle.sizes import sizes
from attnlab.bench.core import BenchOptions
from attnlab.bench.measure import fit_exponent, time_fns
from attnlab.bench.steps import MiB, number, progress, short_error
from attnlab.cache.base import AttentionCache
from attnlab.cache.kv import KVCache
from attnlab.cache.uqkv import UQKVCache
from attnlab.layers.castle import heads_for_parity

__all__ = ["DECODE_TARGET", "DECODE_COLUMNS", "DECODE_GROWTH_COLUMNS", "CACHE_COLUMNS", "decode_contexts",
           "decode_tables", "parity_cache_row"]

DECODE_TARGET = 2.0  # CASTLE / standard per-token decode latency
DECODE_COLUMNS = ["context", "status", "standard ms/token", "castle ms/token", "ratio", "target", "met",
                  "contexts timed"]
DECODE_GROWTH_COLUMNS = ["case", "contexts", "growth", "exponent in context", "target", "met"]
CACHE_COLUMNS = ["standard heads", "castle heads", "head dim", "context", "standard cache MiB", "castle cache MiB",
                 "ratio", "expected 4 n_C / (2 n_std)"]


def _cache_row(n_std: int, n_c: int, D: int, context: int, std_cache: AttentionCache,
               castle_cache: AttentionCache) -> dict[str, Any]:
    sb, cb = std_cache.memory_bytes(), castle_cache.memory_bytes()
    return {"standard heads": n_std, "castle heads": n_c, "head dim": D, "context": context,
            "standard cache MiB": sb / MiB, "castle cache MiB": cb / MiB, "ratio": cb / sb,
            "expected 4 n_C / (2 n_std)": 4 * n_c / (2 * n_std)}


def decode_contexts(options: BenchOptions, lengths: tuple[int, ...]) -> tuple[int, ...]:
    """The contexts decoded after: the shortest and longest length in a quick run, else 1024 and 4096."""
    if options.quick:
        return tuple(sorted({min(lengths), max(lengths)}))
    return (1024, 4096)


def decode_tables(std: nn.Module, cas: nn.Module, castle_status: str, std_status: str,
                  contexts: tuple[int, ...], options: BenchOptions) -> tuple[list, list, list]:
    """``(decode rows, growth rows, cache rows)``: one cached step of each layer per context, timed interleaved."""
    rows, cache_rows = [], []
    kw = options.timing()
    kw["max_repeats"] = 48  # every timed call appends a token: keep the context drift small (reported)
    n_std, n_c, D = sizes(options)
    for ctx in progress(list(contexts), options, "castle: decode"):
        bad = [s for s in (castle_status, std_status) if s != "ok"]
        row: dict[str, Any] = {"context": ctx, "status": bad[0] if bad else "ok"}
        try:
            gen = torch.Generator().manual_seed(4)
            prompt = torch.randn(1, ctx, options.d_model, generator=gen).to(device=options.device,
                                                                           dtype=options.dtype)
            tok = torch.randn(1, 1, options.d_model, generator=gen).to(device=options.device, dtype=options.dtype)
            fns: dict[str, Callable[[], Any]] = {}
            caches = {}
            for name, layer, status in (("standard", std, std_status), ("castle", cas, castle_status)):
                if status != "ok":
                    continue
                cache = layer.new_cache(1)
                with torch.no_grad():
                    layer(prompt, cache=cache)
                caches[name] = cache

                def step(layer=layer, cache=cache) -> Tensor:
                    with torch.no_grad():
                        return layer(tok, cache=cache)

                fns[name] = step
            if "standard" in caches and "castle" in caches:
                cache_rows.append(_cache_row(n_std, n_c, D, ctx, caches["standard"], caches["castle"]))
            if fns:
                t = time_fns(fns, **kw)
                for name in fns:
                    row[f"{name} ms/token"] = t[name].median * 1e3
                n = len(next(iter(t.values())).samples)
                warm = kw["warmup"]
                row["contexts timed"] = f"{ctx + warm}..{ctx + warm + n - 1}"
            if "castle ms/token" in row and "standard ms/token" in row:
                row["ratio"] = row["castle ms/token"] / row["standard ms/token"]
                row["target"] = f"<= {DECODE_TARGET:g}"
                row["met"] = "yes" if row["ratio"] <= DECODE_TARGET else "NO"
        except Exception as exc:
            row["status"] = short_error(exc)
        rows.append(row)
    return rows, _decode_growth(rows), cache_rows


def _decode_growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Latency growth of each layer from the shortest to the longest context decoded, and its fitted exponent."""
    growth = []
    ok = [r for r in rows if r.get("status") == "ok"]
    if len(ok) >= 2:
        lo, hi = ok[0], ok[-1]
        for name in ("standard", "castle"):
            a, b = number(lo.get(f"{name} ms/token")), number(hi.get(f"{name} ms/token"))
            g: dict[str, Any] = {"case": name, "contexts": f"{lo['context']} -> {hi['context']}", "growth": b / a,
                                 "exponent in context": fit_exponent([r["context"] for r in ok],
                                                                     [number(r.get(f"{name} ms/token")) for r in ok])}
            if name == "castle":
                g["target"] = "exp <= 1 (no worse than the O(t d) attention work)"
                g["met"] = "" if math.isnan(g["exponent in context"]) else (
                    "yes" if g["exponent in context"] <= 1.0 else "NO")
            growth.append(g)
    return growth


def parity_cache_row(options: BenchOptions) -> dict[str, Any]:
    """Cache sizes at exact parameter parity (14 standard heads -> 8 CASTLE heads, head dim 64), context 64:
    the 8/7 of spec section 3.4, from real caches (no layer needed)."""
    n_std, D, T = 14, 64, 64
    n_c = heads_for_parity(n_std)
    kv = KVCache(1, n_std, D)
    z = torch.zeros(1, n_std, T, D)
    kv.update(z, z)
    uq = UQKVCache(1, n_c, D)
    uq.prefill(*(torch.randn(1, n_c, T, D) for _ in range(6)))
    return _cache_row(n_std, n_c, D, T, kv, uq)
