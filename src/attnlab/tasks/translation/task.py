"""Translation: an encoder-decoder (:class:`~attnlab.models.encdec.EncoderDecoder`) trained on aligned sentence pairs.

Data: :func:`attnlab.data.load_parallel` (Multi30K bundled, or any aligned files), a joint BPE vocabulary trained on
the training split (:func:`attnlab.data.build_subword_tokenizer`, cached), sources ``x [eos]`` and targets
``[bos] y [eos]``. Rows of a global batch are sentence indices from length-bucketed pools
(:func:`attnlab.data.global_batch`, a function of ``(seed, step)``), so batches pad little. Loss: label-smoothed
cross-entropy per target token (padding ignored). Evaluation over a whole split: the teacher-forced loss without
smoothing and its perplexity; at the end of training (and in ``attnlab eval``) also beam-search (or greedy)
translations, detokenized, scored with corpus BLEU and chrF by sacreBLEU, and written one line per source sentence.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnlab._validation import check_float, check_int
from attnlab.models.common import IGNORE_INDEX
from attnlab.models.encdec import EncDecConfig, EncoderDecoder
from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task

__all__ = ["TranslationDataConfig", "TranslationOptions", "Translation", "ParallelData", "CROSS_SCORES"]

CROSS_SCORES = ["scaled_dot", "dot", "general", "additive"]


@dataclass(kw_only=True)
class TranslationDataConfig:
    """Which sentence pairs, in which direction, with which subword vocabulary.

    Attributes:
        source: ``"multi30k"`` (bundled English-German task 1; test = test_2016_flickr) or a directory of aligned
            files ``{train,val,test}.<lang>[.gz]``.
        src_lang, tgt_lang: the direction, e.g. ``"de"`` -> ``"en"``.
        vocab_size: size of the joint BPE vocabulary trained on the training split.
        min_frequency: the least count of a merge the BPE learns.
        lowercase: lowercase every sentence before the tokenizer (BLEU is then computed on lowercased text).
        cache_dir: where the tokenizer is cached (``None``: ``$ATTNLAB_CACHE_DIR`` or ``~/.cache/attnlab``).
    """

    source: str = "multi30k"
    src_lang: str = "de"
    tgt_lang: str = "en"
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must name a parallel corpus or a directory, got {self.source!r}")
        for name in ("src_lang", "tgt_lang"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ValueError(f"{name} must be a language code such as 'de', got {v!r}")
        if self.src_lang == self.tgt_lang:
            raise ValueError(f"src_lang and tgt_lang must differ, both are {self.src_lang!r}")
        check_int("vocab_size", self.vocab_size, 300)
        check_int("min_frequency", self.min_frequency, 1)


@dataclass(kw_only=True)
class TranslationOptions:
    """The task's own options: the loss and how translations are produced for BLEU.

    Attributes:
        label_smoothing: of the training cross-entropy (0.1 as in Vaswani et al. 2017); evaluation loss has none.
        search: ``"beam"`` or ``"greedy"``.
        beam_size: hypotheses kept per sentence.
        length_penalty: GNMT's alpha (see :mod:`attnlab.models.encdec.search`).
        max_len_a, max_len_b: a translation has at most ``a * source_length + b`` tokens (and ``max_target_len``).
        bleu_during_training: also decode and score BLEU at every evaluation during training (costly); BLEU is
            always computed at the end of training.
    """

    label_smoothing: float = 0.1
    search: Literal["beam", "greedy"] = "beam"
    beam_size: int = 4
    length_penalty: float = 0.6
    max_len_a: float = 1.2
    max_len_b: int = 10
    bleu_during_training: bool = False

    def __post_init__(self) -> None:
        check_float("label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        if self.search not in ("beam", "greedy"):
            raise ValueError(f"search must be 'beam' or 'greedy', got {self.search!r}")
        check_int("beam_size", self.beam_size, 1)
        check_float("length_penalty", self.length_penalty, low=0.0, high=math.inf)
        check_float("max_len_a", self.max_len_a, low=0.0, high=math.inf)
        check_int("max_len_b", self.max_len_b, 1)


@dataclass
class ParallelData:
    """A loaded parallel corpus: the raw pairs, the tokenizer and every split's ids."""

    corpus: Any
    tokenizer: Any
    encoded: dict[str, Any]


class Translation(Task):
    """Encoder-decoder translation (see the module docstring)."""

    name = "translation"
    model_config = EncDecConfig
    data_config = TranslationDataConfig
    options_config = TranslationOptions
    compare_key = "model.cross_score"
    variant_label = "cross score"
    primary_metric = ("bleu", "max")
    metric_format = ".2f"  # BLEU points
    data_argument = "parallel"
    default_variants = ["additive", "general", "dot", "scaled_dot"]
    supports_fsdp = False  # beam search and greedy decoding call encode/decode, not forward

    def __init__(self, model: EncDecConfig, data: TranslationDataConfig, *, seed: int,
                 options: TranslationOptions | None = None, parallel: ParallelData | None = None,
                 tokenizer: Any = None, progress: bool = False) -> None:
        super().__init__(model, data, seed=seed, progress=progress)
        self.options = options if options is not None else TranslationOptions()
        if not isinstance(self.options, TranslationOptions):
            raise ValueError(f"options must be a TranslationOptions, got {type(self.options).__name__}")
        self._data = parallel
        self._tokenizer = tokenizer if tokenizer is not None else (parallel.tokenizer if parallel else None)

    @classmethod
    def valid_variants(cls) -> list[str]:
        return list(CROSS_SCORES)

    # ------------------------------------------------------------------------------------------------ data
    @property
    def data(self) -> ParallelData:
        if self._data is None:
            from attnlab.data import SubwordConfig, build_subword_tokenizer, encode_parallel, load_parallel

            d = self.data_cfg
            corpus = load_parallel(d.source, src_lang=d.src_lang, tgt_lang=d.tgt_lang)
            tok = self._tokenizer or build_subword_tokenizer(
                corpus, SubwordConfig(vocab_size=d.vocab_size, min_frequency=d.min_frequency, lowercase=d.lowercase),
                cache_dir=d.cache_dir)
            self._data = ParallelData(corpus=corpus, tokenizer=tok, encoded=encode_parallel(corpus, tok))
            self._tokenizer = tok
        return self._data

    def shared_data(self) -> ParallelData:
        return self.data

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer if self._tokenizer is not None else self.data.tokenizer

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("val", "test") if s in self.data.encoded)

    def check_data(self, micro_batch: int) -> None:
        m = self.model_cfg
        for split, enc in self.data.encoded.items():
            if len(enc) and int(enc.src_lengths.max()) > m.max_source_len:
                raise ValueError(f"model.max_source_len={m.max_source_len} is shorter than the longest {split} source "
                                 f"({int(enc.src_lengths.max())} tokens with eos); raise it")
            if len(enc) and int(enc.tgt_lengths.max()) > m.max_target_len:
                raise ValueError(f"model.max_target_len={m.max_target_len} is shorter than the longest {split} target "
                                 f"({int(enc.tgt_lengths.max())} tokens with bos); raise it")

    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        from attnlab.data import global_batch

        train = self.data.encoded["train"]
        return global_batch(step, seed=self.seed, n_examples=len(train), batch_size=batch_size, lengths=train.lengths)

    def count_targets(self, rows: Any) -> int:
        return int(self.data.encoded["train"].tgt_lengths[np.asarray(rows)].sum())

    def make_batch(self, rows: Any, device: torch.device) -> Batch:
        b = self.data.encoded["train"].batch(rows, device=device)
        return Batch(inputs={"src": b.src, "tgt_in": b.tgt_in, "tgt_out": b.tgt_out}, n_targets=b.n_tgt_tokens)

    # ------------------------------------------------------------------------------------------------ model
    def resolved_model_config(self) -> EncDecConfig:
        from attnlab.data.subword import PAD_ID

        vocab, cfg = self.tokenizer_vocab_size(self.tokenizer), self.model_cfg
        if cfg.pad_id != PAD_ID:
            raise ValueError(f"model.pad_id={cfg.pad_id} but the subword tokenizer pads with {PAD_ID}")
        return cfg if cfg.vocab_size == vocab else cfg.with_vocab_size(vocab)

    def build_model(self) -> nn.Module:
        return EncoderDecoder(self.resolved_model_config())

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        logits = model(batch.inputs["src"], batch.inputs["tgt_in"])  # (B, T, V)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.inputs["tgt_out"].reshape(-1),
                               ignore_index=IGNORE_INDEX, label_smoothing=self.options.label_smoothing)
        return Loss(main=loss)

    # ------------------------------------------------------------------------------------------- decoding
    def _search(self, model: nn.Module, src: torch.Tensor) -> list[list[int]]:
        from attnlab.data.subword import BOS_ID, EOS_ID
        from attnlab.models.encdec.search import beam_search, greedy_decode

        o = self.options
        if o.search == "greedy":
            longest = int((src != self.model_cfg.pad_id).sum(1).max())
            max_len = min(int(o.max_len_a * longest + o.max_len_b), model.config.max_target_len)
            return greedy_decode(model, src, max_len=max_len, bos_id=BOS_ID, eos_id=EOS_ID)
        return beam_search(model, src, beam_size=o.beam_size, length_penalty=o.length_penalty, max_len_a=o.max_len_a,
                           max_len_b=o.max_len_b, bos_id=BOS_ID, eos_id=EOS_ID)

    @torch.no_grad()
    def translate(self, model: nn.Module, sentences: list[str], *, batch_size: int = 32,
                  device: torch.device | None = None) -> list[str]:
        """Translations of ``sentences`` (detokenized text), in order."""
        from attnlab.data.subword import EOS_ID

        device = device or next(model.parameters()).device
        tok = self.tokenizer
        ids = [tok.encode(s) + [EOS_ID] for s in sentences]
        for i, x in enumerate(ids):
            if len(x) > model.config.max_source_len:
                raise ValueError(f"sentence {i + 1} has {len(x)} tokens with eos; this model accepts at most "
                                 f"max_source_len={model.config.max_source_len}")
        out: list[str] = [""] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            S = max(len(ids[i]) for i in chunk)
            src = torch.full((len(chunk), S), self.model_cfg.pad_id, dtype=torch.long)
            for r, i in enumerate(chunk):
                src[r, : len(ids[i])] = torch.tensor(ids[i])
            for r, hyp in enumerate(self._search(model, src.to(device))):
                out[chunk[r]] = tok.decode(hyp)
        return out

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, ctx: EvalContext) -> EvalResult:
        """Teacher-forced loss over the whole split; with ``ctx.full`` (or ``bleu_during_training``) also BLEU and
        chrF of the searched translations against the raw references (hypotheses written to the output dir)."""
        from attnlab.data import eval_batches

        enc = self.data.encoded.get(split)
        if enc is None:
            raise ValueError(f"split={split!r}: the corpus has no such split; it has {', '.join(self.data.encoded)}")
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        count = torch.zeros((), dtype=torch.float64, device=ctx.device)
        batches = list(eval_batches(enc.lengths, batch_size=ctx.batch_size))
        for i, idx in enumerate(batches):
            if i % ctx.world_size != ctx.rank:
                continue
            b = enc.batch(idx, device=ctx.device)
            with ctx.autocast():
                logits = model(b.src, b.tgt_in)
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), b.tgt_out.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").double()
            count += b.n_tgt_tokens
        ctx.all_reduce_sum(total, count)
        metrics: dict[str, float] = {}
        if (ctx.full or self.options.bleu_during_training) and ctx.rank == 0:
            metrics = self._score(model, split, enc, batches, ctx)
        model.train(was_training)
        return EvalResult(split=split, loss=float(total / count), tokens=int(count), metrics=metrics)

    def _score(self, model: nn.Module, split: str, enc: Any, batches: list[np.ndarray], ctx: EvalContext) -> dict[str, float]:
        from attnlab.tasks.translation.metrics import corpus_bleu, corpus_chrf

        hyps: list[str] = [""] * len(enc)
        t0 = time.perf_counter()
        for idx in batches:
            b = enc.batch(idx, device=ctx.device)
            for j, hyp in zip(idx, self._search(model, b.src)):
                hyps[int(j)] = self.tokenizer.decode(hyp)
        search_s = time.perf_counter() - t0
        refs = [t for _, t in self.data.corpus.splits[split]]
        if self.data_cfg.lowercase:
            refs = [r.lower() for r in refs]
        if self.output_dir is not None:
            self.write_eval_file(f"hypotheses-{split}", ".txt", "".join(h.replace("\n", " ") + "\n" for h in hyps))
        # the search's speed (batches of ctx.batch_size sources, detokenization included), for the benchmarks
        return {"bleu": corpus_bleu(hyps, refs), "chrf": corpus_chrf(hyps, refs),
                "search_sentences_per_s": len(hyps) / max(search_s, 1e-9)}

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}

    @classmethod
    def from_state(cls, model: EncDecConfig, data: TranslationDataConfig, state: dict[str, Any], *, seed: int = 0,
                   options: TranslationOptions | None = None) -> "Translation":
        from attnlab.data import tokenizer_from_dict

        tok = tokenizer_from_dict(state["tokenizer"]) if state.get("tokenizer") else None
        return cls(model, data, seed=seed, options=options, tokenizer=tok)

    def describe(self) -> str:
        d = self.data_cfg
        where = d.source
        if self._data is not None:
            where += f" ({len(self._data.encoded['train']):,} training pairs)"
        return f"translation {d.src_lang}->{d.tgt_lang} on {where}, cross-attention score {self.model_cfg.cross_score}"
