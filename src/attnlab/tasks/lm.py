"""Language modelling: next-token prediction on a text corpus with the decoder-only :class:`~attnlab.models.LM`.

Rows of a global batch are window start offsets into the training split, drawn uniformly from a generator seeded
by ``(seed, step)`` alone; a row is ``tokens[o : o + context_len + 1]`` (inputs and the targets one position
later). Evaluation covers the whole split with non-overlapping windows: every token but the first is a target
exactly once (:func:`attnlab.data.iterate_eval_batches`); for character data it also reports bits per character.

A model with ``decon_fixedseqqk`` layers gets its fixed sequence ``t_s`` (spec 3.6) from the training split when the
task builds it fresh: the window of ``context_len`` tokens that :func:`fixed_token_window` picks with the layers'
``stream_seed`` (not the run's seed: every seed of a study shares one ``t_s``, as the paper uses one fixed text). The
ids are a buffer of the model, so checkpoints carry them; the task state records where they came from (split,
offset, length, ``stream_seed``, SHA-256 of the ids). A task rebuilt from a checkpoint (:meth:`from_state`) sets
nothing: its model gets ``t_s`` with the weights, and no data is read. A resumed run chooses again and then loads
the checkpoint's ids over the choice; the state always records the hash of the ids the model holds, with the
offset only when they are the task's own choice.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import check_float
from attnlab.models.common import IGNORE_INDEX
from attnlab.models.lm import LM, LMConfig
from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task

__all__ = ["LMDataConfig", "LMOptions", "LanguageModeling", "lm_loss", "window_offsets", "fixed_token_window"]


@dataclass(kw_only=True)
class LMDataConfig:
    """Which corpus and tokenizer (see :func:`attnlab.data.load_corpus`).

    Attributes:
        source: ``"tinyshakespeare"``, ``"wikitext2"`` (bundled) or the path of a text file or directory.
        tokenizer: ``"char"``, ``"gpt2"`` or ``"word"``.
        val_fraction: the fraction of the text held out for validation (corpora without their own splits).
        cache_dir: where token arrays are cached (``None``: ``$ATTNLAB_CACHE_DIR`` or ``~/.cache/attnlab``).
    """

    source: str = "tinyshakespeare"
    tokenizer: Literal["char", "gpt2", "word"] = "char"
    val_fraction: float = 0.1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_float("val_fraction", self.val_fraction, low=0.0, high=1.0, low_inclusive=False)
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must name a corpus or a file, got {self.source!r}")


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the targets that are not :data:`~attnlab.models.IGNORE_INDEX`;
    half-precision logits are upcast to float32 first. ``logits (B, T, V)``, ``targets (B, T)``."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def window_offsets(step: int, *, seed: int, n_tokens: int, context_len: int, batch_size: int) -> Tensor:
    """Start offsets ``(batch_size,)`` of the windows of optimizer step ``step``; depends on ``(seed, step)`` only.

    A window is ``tokens[o : o + context_len + 1]``, so ``o`` is uniform in ``[0, n_tokens - context_len - 1]``.
    """
    high = n_tokens - context_len
    if high <= 0:
        raise ValueError(f"context_len={context_len} needs more than {context_len + 1} tokens, the split has {n_tokens}")
    return torch.randint(0, high, (batch_size,), generator=_generator(seed, step, 0x5EED))


def _generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by ``keys`` alone (through NumPy's ``SeedSequence``)."""
    g_seed = int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(g_seed)


def fixed_token_window(n_tokens: int, length: int, *, seed: int) -> int:
    """The start offset of the window ``tokens[o : o + length]`` that becomes a ``decon_fixedseqqk`` model's fixed
    sequence: uniform in ``[0, n_tokens - length]``, from a generator seeded by ``seed`` alone (spec 3.6: a chunk of
    the training split chosen by seed)."""
    if n_tokens < length:
        raise ValueError(f"the fixed sequence of decon_fixedseqqk needs context_len={length} training tokens, the "
                         f"split has {n_tokens}")
    return int(torch.randint(0, n_tokens - length + 1, (1,), generator=_generator(seed, 0xF1C5)))


def _ids_sha256(ids: Tensor) -> str:
    return hashlib.sha256(ids.to(torch.int64).cpu().numpy().astype("<i8").tobytes()).hexdigest()


@dataclass(kw_only=True)
class LMOptions:
    """Options of the language-modelling task (none yet: the loss is plain next-token cross-entropy)."""


class LanguageModeling(Task):
    """Next-token prediction (see the module docstring).

    Args:
        model: the :class:`LMConfig` (its ``vocab_size`` is filled in from the tokenizer).
        data: the :class:`LMDataConfig`.
        seed: seeds the data order.
        corpus: an already loaded :class:`attnlab.data.Corpus` (default: loaded from ``data`` on first use).
        tokenizer: a tokenizer to encode with (e.g. rebuilt from a checkpoint) instead of building one.
        progress: show a progress bar while a corpus is encoded for the first time.
    """

    name = "lm"
    model_config = LMConfig
    data_config = LMDataConfig
    options_config = LMOptions
    compare_key = "model.attention"
    primary_metric = ("loss", "min")
    variant_label = "mechanism"

    @classmethod
    def variant_overrides(cls, variant: str, options: dict[str, Any]) -> dict[str, Any]:
        """Every layer uses mechanism ``variant``, with ``options`` as its layer options."""
        return {"model.attention": variant, "model.schedule": "uniform",
                "model.attention_options": {variant: dict(options)} if options else {}}

    @classmethod
    def valid_variants(cls) -> list[str]:
        from attnlab.layers import registry

        return registry.names()

    def shared_data(self) -> Any:
        return self.corpus

    def __init__(self, model: LMConfig, data: LMDataConfig, *, seed: int, options: LMOptions | None = None,
                 corpus: Any = None, tokenizer: Any = None, progress: bool = False) -> None:
        super().__init__(model, data, seed=seed, progress=progress)
        self._corpus = corpus
        self._tokenizer = tokenizer if tokenizer is not None else (corpus.tokenizer if corpus is not None else None)
        #: where a decon_fixedseqqk model's fixed sequence came from (``None``: no such model built yet)
        self.fixed_tokens: dict[str, Any] | None = None
        self._from_checkpoint = False
        self._fixed_stream: nn.Module | None = None  # the text fixed stream of the model built last

    # ------------------------------------------------------------------------------------------------ data
    @property
    def corpus(self) -> Any:
        """The token arrays (loaded and cached on first use)."""
        if self._corpus is None:
            from attnlab.data import load_corpus

            d = self.data_cfg
            self._corpus = load_corpus(d.source, tokenizer=self._tokenizer or d.tokenizer, cache_dir=d.cache_dir,
                                       val_fraction=d.val_fraction, progress=self.progress)
            self._tokenizer = self._corpus.tokenizer
        return self._corpus

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            return self.corpus.tokenizer
        return self._tokenizer

    @property
    def char_level(self) -> bool:
        return getattr(self.tokenizer, "name", None) == "char"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("val", "test") if getattr(self.corpus, s, None) is not None)

    def check_data(self, micro_batch: int) -> None:
        T = self.model_cfg.context_len
        c = self.corpus
        if len(c.train) < T + 2:
            raise ValueError(
                f"model.context_len={T} is longer than the training split ({len(c.train)} tokens of "
                f"{getattr(c, 'name', 'the corpus')}); it needs at least context_len + 2 tokens"
            )
        for split in ("val", "test"):
            toks = getattr(c, split, None)
            if toks is not None and len(toks) < T + 1:
                raise ValueError(
                    f"model.context_len={T} is longer than the {split} split ({len(toks)} tokens of "
                    f"{getattr(c, 'name', 'the corpus')}); use a smaller context_len or a larger data.val_fraction"
                )

    def global_batch(self, step: int, batch_size: int) -> Tensor:
        return window_offsets(step, seed=self.seed, n_tokens=len(self.corpus.train),
                              context_len=self.model_cfg.context_len, batch_size=batch_size)

    def count_targets(self, rows: Any) -> int:
        return len(rows) * self.model_cfg.context_len

    def make_batch(self, rows: Any, device: torch.device) -> Batch:
        T = self.model_cfg.context_len
        idx = rows.numpy()[:, None] + np.arange(T + 1)[None, :]  # (B, T+1)
        win = torch.from_numpy(np.asarray(self.corpus.train[idx]).astype(np.int64))  # (B, T+1)
        x, y = win[:, :-1], win[:, 1:]
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            x, y = x.to(device), y.to(device)
        return Batch(inputs={"idx": x, "targets": y}, n_targets=y.numel())

    # ------------------------------------------------------------------------------------------------ model
    def resolved_model_config(self) -> LMConfig:
        """The model config with ``vocab_size`` set from the tokenizer (a different explicit value is an error)."""
        vocab, cfg = self.tokenizer_vocab_size(self.tokenizer), self.model_cfg
        return cfg if cfg.vocab_size == vocab else cfg.with_vocab_size(vocab)

    def build_model(self) -> nn.Module:
        """The :class:`LM`; with ``decon_fixedseqqk`` layers and a task not rebuilt from a checkpoint, its fixed
        sequence is set from the training split (see the module docstring)."""
        model = LM(self.resolved_model_config())
        fs = model.fixed_stream
        if fs is not None and fs.kind == "text":
            self._fixed_stream = fs
        if fs is not None and fs.kind == "text" and not self._from_checkpoint:
            L = self.model_cfg.context_len
            train = self.corpus.train
            o = fixed_token_window(len(train), L, seed=fs.stream_seed)
            ids = torch.from_numpy(np.asarray(train[o:o + L]).astype(np.int64))  # (L,)
            model.set_fixed_tokens(ids)
            self.fixed_tokens = {"split": "train", "offset": o, "length": L, "stream_seed": fs.stream_seed,
                                 "sha256": _ids_sha256(ids)}
        return model

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        return Loss(main=lm_loss(model(batch.inputs["idx"]), batch.inputs["targets"]))

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, ctx: EvalContext) -> EvalResult:
        """Mean next-token cross-entropy over the whole split (batches dealt round-robin to the ranks)."""
        from attnlab.data import iterate_eval_batches

        tokens = getattr(self.corpus, split, None)
        if tokens is None:
            raise ValueError(f"split={split!r}: the corpus {self.corpus.name!r} has no such split; it has "
                             f"{', '.join(('train',) + self.splits)}")
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        count = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for i, (x, y) in enumerate(iterate_eval_batches(tokens, ctx.batch_size, self.model_cfg.context_len)):
            if i % ctx.world_size != ctx.rank:
                continue
            x, y = x.to(ctx.device), y.to(ctx.device)
            with ctx.autocast():
                logits = model(x)
            if logits.dtype not in (torch.float32, torch.float64):
                logits = logits.float()
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").double()
            count += y.numel()
        ctx.all_reduce_sum(total, count)
        model.train(was_training)
        loss = float(total / count)
        return EvalResult(split=split, loss=loss, tokens=int(count),
                          bits_per_char=loss / math.log(2) if self.char_level else None)

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        tok = self.tokenizer
        out = {"tokenizer": tok.to_dict() if hasattr(tok, "to_dict") else None,
               "corpus": getattr(self._corpus, "name", None)}
        rec = self.fixed_tokens
        if self._fixed_stream is not None:  # what the model holds now (a resume loads the checkpoint's ids)
            live = _ids_sha256(self._fixed_stream.tokens)
            if rec is None or rec.get("sha256") != live:
                rec = {"split": None, "offset": None, "length": int(self._fixed_stream.tokens.numel()),
                       "stream_seed": self._fixed_stream.stream_seed, "sha256": live}  # origin unknown here
        if rec is not None:
            out["fixed_tokens"] = dict(rec)
        return out

    @classmethod
    def from_state(cls, model: LMConfig, data: LMDataConfig, state: dict[str, Any], *, seed: int = 0,
                   options: LMOptions | None = None) -> "LanguageModeling":
        """The task of a checkpoint, with its tokenizer and without loading any data (a ``decon_fixedseqqk`` model
        it builds keeps the fixed sequence that comes with the weights; ``fixed_tokens`` says where it came from)."""
        tok = None
        if state.get("tokenizer") is not None:
            from attnlab.data import tokenizer_from_dict

            tok = tokenizer_from_dict(state["tokenizer"])
        task = cls(model, data, seed=seed, tokenizer=tok)
        task._from_checkpoint = True
        task.fixed_tokens = dict(state["fixed_tokens"]) if isinstance(state.get("fixed_tokens"), dict) else None
        return task

    def describe(self) -> str:
        c = self._corpus
        where = f"{c.name} ({len(c.train):,} training tokens)" if c is not None else self.data_cfg.source
        return f"language modelling on {where}"
