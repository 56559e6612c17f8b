"""Length-bucketed batches of sentence pairs for encoder-decoder training, deterministic from ``(seed, step)``.

Shapes: B batch size (sentences), S source length, T target length (of ``tgt_in`` and ``tgt_out``).

Conventions (one place for all of them):

* An encoded pair (:class:`EncodedSplit`, built by :func:`attnlab.data.encode_parallel`) holds the source ids as
  ``x [eos]`` (no ``bos``) and the target ids as ``[bos] y [eos]``.
* :func:`pad_batch` turns a list of pairs into ``src (B, S)`` = ``x [eos]``, ``tgt_in (B, T)`` = ``[bos] y`` and
  ``tgt_out (B, T)`` = ``y [eos]``, all ``torch.long``. ``src`` and ``tgt_in`` are padded on the right with the pad
  id (0); ``tgt_out`` is padded with :data:`IGNORE_INDEX` (-1), so ``F.cross_entropy(logits, tgt_out,
  ignore_index=IGNORE_INDEX)`` ignores padding, and a loss that forgets ``ignore_index`` fails loudly (an index
  of -1) instead of quietly training the model to predict padding. ``src_pad_mask (B, S)`` and
  ``tgt_pad_mask (B, T)`` are ``bool``, ``True`` at padding (PyTorch's ``key_padding_mask`` convention).
* Training batches: :func:`global_batch` gives the example indices of global step ``s`` from ``(seed, s)`` alone;
  :func:`rank_rows` splits them between data-parallel ranks. Evaluation: :func:`eval_batches` walks a whole split
  in a fixed order and yields original indices, so hypotheses can be written back in corpus order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "EncodedSplit",
    "MTBatch",
    "batches_per_epoch",
    "global_batch",
    "rank_rows",
    "pad_batch",
    "eval_batches",
]

#: Padding value of ``tgt_out``: pass it as ``ignore_index`` to the loss.
IGNORE_INDEX = -1


def _positive_int(value: object, arg: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: {arg} must be a positive int, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------ encoded pairs

@dataclass(frozen=True, eq=False)
class EncodedSplit:
    """Token ids of one split's sentence pairs: ``src[i]`` = ``x [eos]``, ``tgt[i]`` = ``[bos] y [eos]``.

    Each entry is a 1-D ``int32`` numpy array. ``src_lengths`` is ``S_i = len(src[i])`` and ``tgt_lengths`` is
    ``T_i = len(tgt[i]) - 1`` (the length of ``tgt_in`` and ``tgt_out``); :attr:`lengths` (``max(S_i, T_i)``) is
    the sort key for bucketing.
    """

    src: list[np.ndarray]
    tgt: list[np.ndarray]

    def __post_init__(self) -> None:
        if len(self.src) != len(self.tgt):
            raise ValueError(f"EncodedSplit: src has {len(self.src)} sentences but tgt has {len(self.tgt)}")

    def __len__(self) -> int:
        return len(self.src)

    @functools.cached_property
    def src_lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.src), dtype=np.int64, count=len(self.src))

    @functools.cached_property
    def tgt_lengths(self) -> np.ndarray:
        return np.fromiter((len(t) - 1 for t in self.tgt), dtype=np.int64, count=len(self.tgt))

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """``max(S_i, T_i)`` per pair: the padded width the pair forces on its batch."""
        return np.maximum(self.src_lengths, self.tgt_lengths)

    def batch(
        self, indices: Sequence[int] | np.ndarray, *, pad_id: int = 0, device: torch.device | str | None = None
    ) -> MTBatch:
        """:func:`pad_batch` of the pairs at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return pad_batch([self.src[i] for i in idx], [self.tgt[i] for i in idx], pad_id=pad_id, device=device)


_FIELDS = ("src", "tgt_in", "tgt_out", "src_pad_mask", "tgt_pad_mask")


@dataclass(frozen=True, eq=False)
class MTBatch:
    """A padded batch (see the module docstring for the conventions)."""

    src: Tensor  # (B, S) long: x [eos], then pad_id
    tgt_in: Tensor  # (B, T) long: [bos] y, then pad_id
    tgt_out: Tensor  # (B, T) long: y [eos], then IGNORE_INDEX
    src_pad_mask: Tensor  # (B, S) bool, True at padding
    tgt_pad_mask: Tensor  # (B, T) bool, True at padding

    @property
    def n_tgt_tokens(self) -> int:
        """Number of real (non-padding) target tokens: weight a batch's mean loss by it to average over tokens."""
        return int((~self.tgt_pad_mask).sum())

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> MTBatch:
        return MTBatch(**{k: getattr(self, k).to(device, non_blocking=non_blocking) for k in _FIELDS})


def pad_batch(
    src: Sequence[Sequence[int] | np.ndarray],
    tgt: Sequence[Sequence[int] | np.ndarray],
    *,
    pad_id: int = 0,
    device: torch.device | str | None = None,
) -> MTBatch:
    """Pad sources ``x [eos]`` and targets ``[bos] y [eos]`` into an :class:`MTBatch`.

    ``tgt_in`` is each target without its last id (``[bos] y``), ``tgt_out`` without its first (``y [eos]``).
    ``src`` and ``tgt_in`` are padded with ``pad_id``, ``tgt_out`` with :data:`IGNORE_INDEX`.
    """
    if len(src) != len(tgt) or len(src) == 0:
        raise ValueError(
            f"pad_batch: src and tgt must hold the same positive number of sequences, got {len(src)} and {len(tgt)}"
        )
    src_arr = [np.asarray(s, dtype=np.int64).reshape(-1) for s in src]
    tgt_arr = [np.asarray(t, dtype=np.int64).reshape(-1) for t in tgt]
    for i, s in enumerate(src_arr):
        if len(s) < 1:
            raise ValueError(f"pad_batch: src[{i}] is empty; a source holds at least [eos]")
    for i, t in enumerate(tgt_arr):
        if len(t) < 2:
            raise ValueError(f"pad_batch: tgt[{i}] has {len(t)} ids; a target holds at least [bos] ... [eos] (2 ids)")
    b = len(src_arr)
    s_max = max(len(s) for s in src_arr)
    t_max = max(len(t) for t in tgt_arr) - 1
    src_np = np.full((b, s_max), pad_id, dtype=np.int64)  # (B, S)
    tgt_in_np = np.full((b, t_max), pad_id, dtype=np.int64)  # (B, T)
    tgt_out_np = np.full((b, t_max), IGNORE_INDEX, dtype=np.int64)  # (B, T)
    src_pad = np.ones((b, s_max), dtype=bool)  # (B, S)
    tgt_pad = np.ones((b, t_max), dtype=bool)  # (B, T)
    for i, (s, t) in enumerate(zip(src_arr, tgt_arr)):
        src_np[i, : len(s)] = s
        src_pad[i, : len(s)] = False
        n = len(t) - 1
        tgt_in_np[i, :n] = t[:-1]
        tgt_out_np[i, :n] = t[1:]
        tgt_pad[i, :n] = False
    batch = MTBatch(
        src=torch.from_numpy(src_np),
        tgt_in=torch.from_numpy(tgt_in_np),
        tgt_out=torch.from_numpy(tgt_out_np),
        src_pad_mask=torch.from_numpy(src_pad),
        tgt_pad_mask=torch.from_numpy(tgt_pad),
    )
    if device is None:
        return batch
    device = torch.device(device)
    if device.type == "cuda":  # pinned host memory: the copy overlaps with compute
        return MTBatch(**{k: getattr(batch, k).pin_memory() for k in _FIELDS}).to(device, non_blocking=True)
    return batch.to(device)


# ------------------------------------------------------------------------------------------- training batches

def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    """``n_examples // batch_size``: every batch is full; an epoch leaves out its last ``n % B`` shuffled examples."""
    n = _positive_int(n_examples, "n_examples", "batches_per_epoch")
    bs = _positive_int(batch_size, "batch_size", "batches_per_epoch")
    if bs > n:
        raise ValueError(f"batches_per_epoch: batch_size={bs} is larger than n_examples={n}")
    return n // bs


@functools.lru_cache(maxsize=4)
def _epoch_batches(seed: int, epoch: int, n: int, batch_size: int, pool: int, lengths: bytes) -> np.ndarray:
    """The ``(batches_per_epoch, batch_size)`` index matrix of one epoch, in step order."""
    lens = np.frombuffer(lengths, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    n_batches = n // batch_size
    perm = rng.permutation(n)[: n_batches * batch_size]  # the epoch's examples in random order
    pool_examples = pool * batch_size
    chunks = []
    for start in range(0, len(perm), pool_examples):
        chunk = perm[start : start + pool_examples]
        chunks.append(chunk[np.argsort(lens[chunk], kind="stable")])  # by length; ties keep the random order
    batches = np.concatenate(chunks).reshape(n_batches, batch_size)
    return batches[rng.permutation(n_batches)]  # shuffle the batches across the whole epoch


def global_batch(
    step: int,
    *,
    seed: int,
    n_examples: int,
    batch_size: int,
    lengths: Sequence[int] | np.ndarray,
    pool: int = 64,
) -> np.ndarray:
    """Example indices ``(batch_size,)`` (``int64``) of global training step ``step``, from ``(seed, step)`` alone.

    Step ``s`` is in epoch ``e = s // batches_per_epoch(n_examples, batch_size)``. Each epoch draws a permutation of
    the examples from ``numpy.random.default_rng([seed, e])`` and drops its last ``n_examples % batch_size``
    entries; the rest is cut into pools of ``pool`` batches, each pool sorted by ``lengths`` (stably, so ties keep
    the random order) and cut into batches of ``batch_size`` similar-length examples, which keeps padding small;
    finally the epoch's batches are shuffled with the same generator. Step ``s`` takes batch
    ``s % batches_per_epoch`` of that order. Every example appears at most once per epoch, and the result does not
    depend on which steps were asked for before (resuming at any step gives the same batches).

    Args:
        lengths: one sort key per example, e.g. :attr:`EncodedSplit.lengths` (``max(S_i, T_i)``).
        pool: batches per sorting pool (~50-100: larger pools pad less, smaller ones mix lengths more).
    """
    who = "global_batch"
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{who}: step must be an int >= 0, got {step!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{who}: seed must be an int >= 0, got {seed!r}")
    n = _positive_int(n_examples, "n_examples", who)
    bs = _positive_int(batch_size, "batch_size", who)
    pool = _positive_int(pool, "pool", who)
    lens = np.asarray(lengths)
    if lens.shape != (n,) or not np.issubdtype(lens.dtype, np.integer):
        raise ValueError(f"{who}: lengths must be {n} integers (one per example), got shape {lens.shape} {lens.dtype}")
    n_batches = batches_per_epoch(n, bs)
    epoch, k = divmod(int(step), n_batches)
    batches = _epoch_batches(int(seed), epoch, n, bs, pool, lens.astype(np.int64).tobytes())
    return batches[k].copy()


_Rows = TypeVar("_Rows", np.ndarray, Tensor)


def rank_rows(batch_indices: _Rows, rank: int, world_size: int) -> _Rows:
    """The part of a global batch that data-parallel rank ``rank`` of ``world_size`` processes.

    Contiguous blocks, rank 0 first: rank ``r`` gets rows ``[r*B // W, (r+1)*B // W)``, so the ranks' parts are
    disjoint and together cover the batch in order; their sizes differ by at most one (equal when ``W`` divides
    ``B``). Works on numpy arrays and tensors.
    """
    world = _positive_int(world_size, "world_size", "rank_rows")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world:
        raise ValueError(f"rank_rows: rank must be an int in [0, {world}), got {rank!r}")
    b = len(batch_indices)
    return batch_indices[b * rank // world : b * (rank + 1) // world]


# ------------------------------------------------------------------------------------------- evaluation batches

def eval_batches(lengths: Sequence[int] | np.ndarray, *, batch_size: int) -> Iterator[np.ndarray]:
    """Original indices (``int64``) of a whole split in batches of ``batch_size`` (the last may be smaller).

    The order is fixed: longest first (``lengths`` descending, ties by index), so batches pad little and the
    largest batch comes first, where an out-of-memory error shows at once. Every index appears exactly once;
    write each hypothesis to position ``indices[j]`` to get them back in corpus order.
    """
    bs = _positive_int(batch_size, "batch_size", "eval_batches")
    lens = np.asarray(lengths)
    if lens.ndim != 1 or (lens.size and not np.issubdtype(lens.dtype, np.integer)):
        raise ValueError(
            f"eval_batches: lengths must be a 1-D sequence of integers, got shape {lens.shape} {lens.dtype}"
        )
    order = np.argsort(-lens.astype(np.int64), kind="stable")
    return (order[start : start + bs] for start in range(0, len(order), bs))
