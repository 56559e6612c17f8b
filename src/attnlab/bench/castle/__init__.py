"""The ``castle`` benchmark suite: CASTLE against standard causal attention at equal parameters.

Sizes: the standard layer has ``options.n_heads`` heads of ``D = d_model / n_heads``; CASTLE has
``heads_for_parity(n_heads)`` heads of the same ``D`` (e.g. ``--d-model 512 --n-heads 8``: 8 standard heads of 64
against 5 CASTLE heads of 64). Both layers are built from the registry (``"standard"``, ``"castle"``) with
``rope=True`` (as the language models build them) and no dropout.

Tables (every case is checked for correctness first; a failing check is reported instead of a speed):

* **time**: the ``CastleAttention`` layer (``impl="auto"``: chunked on CPU, Triton on CUDA) against the standard
  ``MultiHeadAttention`` layer, forward (``torch.no_grad``) and forward+backward (input and parameter gradients),
  timed interleaved in this process; median after warm-up. Target on CPU: ratio <= 2.5.
* **memory** (the attention op alone, so that the figure is CASTLE's *own* memory): see
  :data:`~attnlab.bench.castle.memory.MEMORY_NOTE`. CASTLE as benchmarked (chunked / Triton), CASTLE's naive
  parallel form (Theorem 1, ``T x T`` matrices; run only while its projected peak fits
  :func:`~attnlab.bench.castle.memory.parallel_budget_bytes` and its projected time fits ``budget_s``), and
  the standard layer's core (:func:`attnlab.ops.softmax.softmax_attention`, causal). Fitted exponents in ``T``;
  target: CASTLE's exponent close to 1 (<= 1.1).
* **decode**: one cached decoding step of each layer (batch 1, ``x`` of one token, ``torch.no_grad``):
  ``CastleAttention`` + ``UQKVCache`` against ``MultiHeadAttention`` + ``KVCache``, after a prefill of the context;
  latency ratio (target <= 2) and its growth from the shorter to the longer context.
* **cache memory**: ``memory_bytes()`` of both caches after the prefill, and the ratio expected from spec
  section 3.4 (``4 n_C / (2 n_std)``: 8/7 at exact parity, e.g. 14 -> 8 heads).
* **correctness**: every benchmarked path against its float64 reference on CPU (layers: output and every
  gradient; decode: prefill + single steps against the full reference forward).

One module per part: :mod:`~attnlab.bench.castle.sizes` (the two layers at equal parameters),
:mod:`~attnlab.bench.castle.checks` (correctness), :mod:`~attnlab.bench.castle.timing` (a),
:mod:`~attnlab.bench.castle.memory` (b and the growth exponents), :mod:`~attnlab.bench.castle.decode` (c and the
cache memory), :mod:`~attnlab.bench.castle.plots`, and :mod:`~attnlab.bench.castle.suite`, which runs them all and
registers the suite.
"""

from attnlab.bench.castle.checks import CHECK_COLUMNS
from attnlab.bench.castle.decode import CACHE_COLUMNS, DECODE_COLUMNS, DECODE_GROWTH_COLUMNS, DECODE_TARGET
from attnlab.bench.castle.memory import (GROWTH_COLUMNS, MEMORY_COLUMNS, MEMORY_EXPONENT_TARGET,
                                         parallel_budget_bytes)
from attnlab.bench.castle.plots import plot_castle
from attnlab.bench.castle.suite import run_castle
from attnlab.bench.castle.timing import TIME_COLUMNS, TIME_TARGET

__all__ = ["run_castle", "plot_castle", "parallel_budget_bytes", "TIME_TARGET", "DECODE_TARGET",
           "MEMORY_EXPONENT_TARGET", "TIME_COLUMNS", "MEMORY_COLUMNS", "GROWTH_COLUMNS", "DECODE_COLUMNS",
           "DECODE_GROWTH_COLUMNS", "CACHE_COLUMNS", "CHECK_COLUMNS"]
