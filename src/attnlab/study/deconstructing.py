"""``attnlab study deconstructing``: the small-scale reproduction of Xue, Moosavi and Aletras, "Deconstructing
Attention" (arXiv:2510.11602v1), as the grid of spec 12.1.

Standard, plus each of the six variants in Uniform and Hybrid (``alternate``: variant on the odd layers), trained
with every seed under one budget, optimiser, schedule, context and data order at equal parameters (the variants
are at exact parity with ``standard``); then, without training:

* Hybrid-SKIP of every trained hybrid (its variant layers removed; whole blocks, and mixers only), and the
  Standard-SKIP control (uniform Standard without its odd layers; attnlab proposal, spec 12.1);
* validation loss at evaluation contexts T/8, T/4, T/2, T (the paper's Tbl. 4 analogue);
* the largest |pre-softmax logit| per layer (the paper's Fig. 2 analogue) for every layer with a dot-product
  score (Standard, Non-approximate, RndEmbQK, FixedSeqQK, StaticEmbQK);
* a count-based bigram model's validation loss (the reference for uniform MLP, spec 3.2).

``layouts="all"`` adds the nine-layout ablation (spec 4.2) for RndEmbQK and Non-approximate (``even`` is the
hybrid itself and is not trained twice).

Output directory::

    OUT/
      study.json                          the study (every run's config), written first
      bigram.json                         the bigram reference
      runs/<variant>/<layout>/seed<k>/     one trainer run each (checkpoint, metrics, result.json),
                                           then study_eval.json (the evaluations above) or diverged.json
      leaderboard.md, .csv, table_12_3.md, report.html, *.png

Resuming: running the same study again on the same directory keeps every run whose ``study_eval.json`` (or
``diverged.json``) exists, continues unfinished runs from their newest checkpoint, and never rewrites a finished
run's files; a directory holding a *different* study is refused, except that the same study with ``layouts="all"``
extends a ``layouts="main"`` directory (its finished runs are kept, only the ablation is trained: the two halves
fit one sitting each, see :func:`attnlab.study.presets.full`); ``force=True`` moves an existing directory aside.
A run whose loss or gradient becomes non-finite is recorded as diverged (counted and reported, never dropped).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from attnlab.config import ConfigError
from attnlab.study.grid import ABLATION_LAYOUTS, ABLATION_VARIANTS, VARIANTS
from attnlab.train.config import TrainConfig

__all__ = ["VARIANTS", "ABLATION_VARIANTS", "StudyConfig", "StudyResult", "run_study", "bigram_loss", "eval_loss",
           "max_logits_per_layer", "capped_word_tokenizer", "study_data"]



def _schedule(layout: str) -> str:
    return {"uniform": "uniform", "hybrid": "alternate"}.get(layout, layout)


@dataclass(kw_only=True)
class StudyConfig:
    """The grid of spec 12.1.

    Attributes:
        name: the preset (or a name of the caller's) recorded in reports.
        base: the run every model shares (its ``model.attention`` and ``model.schedule`` are set per model).
        variants: which of :data:`VARIANTS` to train (all six by default).
        seeds: one run per seed per model, the same for every model.
        layouts: ``"main"`` (Uniform and Hybrid) or ``"all"`` (also the nine-layout ablation for
            :data:`ABLATION_VARIANTS`).
        eval_fractions: evaluation contexts as fractions of the training context (T/8 ... T).
        eval_tokens: validation tokens for the extra evaluations (contexts, SKIP): the first this many of the split
            (``None``: the whole split). The main validation loss is always over the whole split.
        logit_rows: validation windows (of length T) over which the largest logit per layer is taken.
        skip_parts: the SKIP readings evaluated (``"block"``: whole blocks, the default reading; ``"mixer"``).
        eval_batch_size: rows per evaluation batch.
        vocab_cap: word-level corpora only: keep the ``vocab_cap - 2`` most frequent words of the training split
            (ties: first appearance) plus ``<eos>`` and ``<unk>``, every other word read as ``<unk>``
            (:func:`capped_word_tokenizer`); ``None``: the whole vocabulary. On CPU the output layer and softmax
            over WikiText-2's 33,278 words cost about 90% of a small model's step, so the ``full`` preset caps it.
    """

    name: str = "custom"
    base: TrainConfig
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    layouts: str = "main"
    eval_fractions: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    eval_tokens: int | None = None
    logit_rows: int = 8
    skip_parts: list[str] = field(default_factory=lambda: ["block", "mixer"])
    eval_batch_size: int = 16
    vocab_cap: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, TrainConfig) or self.base.task != "lm":
            raise ConfigError("base must be a language-modelling TrainConfig (task 'lm')")
        bad = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or bad or len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants must be distinct names from {', '.join(VARIANTS)}, got {self.variants!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ConfigError(f"seeds must be distinct integers >= 0, at least one, got {self.seeds!r}")
        if self.layouts not in ("main", "all"):
            raise ConfigError(f"layouts must be 'main' or 'all', got {self.layouts!r}")
        if any(p not in ("block", "mixer") for p in self.skip_parts):
            raise ConfigError(f"skip_parts must hold 'block' and/or 'mixer', got {self.skip_parts!r}")
        T = self.base.model.context_len
        for f in self.eval_fractions:
            if not 0 < f <= 1 or int(T * f) < 1:
                raise ConfigError(f"eval_fractions must be in (0, 1] and give >= 1 token of context_len={T}, got {f}")
        if self.vocab_cap is not None:
            if isinstance(self.vocab_cap, bool) or not isinstance(self.vocab_cap, int) or self.vocab_cap < 2:
                raise ConfigError(f"vocab_cap must be an integer >= 2 or None, got {self.vocab_cap!r}")
            if self.base.data.tokenizer != "word":
                raise ConfigError(f"vocab_cap applies to word-level corpora only (the base's tokenizer is "
                                  f"{self.base.data.tokenizer!r}); leave it None")
        if self.eval_tokens is not None and self.eval_tokens < T + 1:
            raise ConfigError(f"eval_tokens={self.eval_tokens} must exceed context_len={T}")
        self._runs: dict[tuple[str, str], TrainConfig] = {}
        for variant, layout in self.models():
            try:
                self._runs[(variant, layout)] = self.base.replace(**{
                    "model.attention": variant, "model.schedule": _schedule(layout), "model.attention_options": {}})
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"{variant} {layout}: {e}") from None

    def models(self) -> list[tuple[str, str]]:
        """Every trained model as ``(variant, layout)``: Standard first, then per variant uniform, hybrid and (with
        ``layouts="all"``) the ablation layouts."""
        out = [("standard", "uniform")]
        for v in self.variants:
            out += [(v, "uniform"), (v, "hybrid")]
            if self.layouts == "all" and v in ABLATION_VARIANTS:
                out += [(v, lay) for lay in ABLATION_LAYOUTS]
        return out

    def run_config(self, variant: str, layout: str, seed: int) -> TrainConfig:
        return dataclasses.replace(self._runs[(variant, layout)], seed=seed)

    def run_dir(self, out: Path, variant: str, layout: str, seed: int) -> Path:
        return Path(out) / "runs" / variant / layout / f"seed{seed}"

    def eval_contexts(self) -> list[int]:
        T = self.base.model.context_len
        return sorted({max(1, int(round(T * f))) for f in self.eval_fractions})

    def to_dict(self) -> dict[str, Any]:
        from attnlab.config import to_dict

        d = {k: getattr(self, k) for k in ("name", "variants", "seeds", "layouts", "eval_fractions", "eval_tokens",
                                           "logit_rows", "skip_parts", "eval_batch_size")}
        if self.vocab_cap is not None:  # only when set, so studies written before the field still resume
            d["vocab_cap"] = self.vocab_cap
        d["study"] = "deconstructing"
        d["base"] = to_dict(self.base)
        return d


# -------------------------------------------------------------------------------------------------------- data
def capped_word_tokenizer(tokenizer: Any, train: np.ndarray, cap: int) -> Any:
    """A :class:`~attnlab.data.WordTokenizer` of the ``cap - 2`` most frequent words of ``train`` (ids of
    ``tokenizer``; ties broken by id, i.e. first appearance) plus its ``<eos>`` and ``<unk>``, in ``tokenizer``'s
    order; every other word then encodes as ``<unk>``. ``tokenizer`` itself when it has at most ``cap`` words."""
    from attnlab.data.tokenizers import WordTokenizer

    if not isinstance(tokenizer, WordTokenizer):
        raise ConfigError(f"vocab_cap needs a word-level tokenizer, got {getattr(tokenizer, 'name', tokenizer)!r}")
    V = tokenizer.vocab_size
    if V <= cap:
        return tokenizer
    special = {tokenizer.eos_id, tokenizer.unk_id}
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=V)
    order = [i for i in np.argsort(-counts, kind="stable").tolist() if i not in special]
    keep = set(order[: cap - len(special)]) | special
    return WordTokenizer([w for i, w in enumerate(tokenizer.words) if i in keep], eos=tokenizer.eos, unk=tokenizer.unk)


def study_data(cfg: StudyConfig, *, progress: bool = False) -> Any:
    """The corpus every run of ``cfg`` trains on: the base's, re-encoded with :func:`capped_word_tokenizer` when
    ``cfg.vocab_cap`` is set (cached like any corpus; a checkpoint stores the capped tokenizer), without its test
    split."""
    from attnlab.train.trainer import make_task

    corpus = make_task(cfg.base, progress=progress).shared_data()
    if cfg.vocab_cap is not None and corpus.vocab_size > cfg.vocab_cap:
        from attnlab.data import load_corpus

        tok = capped_word_tokenizer(corpus.tokenizer, np.asarray(corpus.train), cfg.vocab_cap)
        d = cfg.base.data
        corpus = load_corpus(d.source, tokenizer=tok, cache_dir=d.cache_dir, val_fraction=d.val_fraction,
                             progress=progress)
    # the study reports validation figures only: without a test split the trainer does not evaluate one (WikiText-2's
    # 245k test tokens would add ~half again to every run's evaluation time)
    return dataclasses.replace(corpus, test=None) if corpus.test is not None else corpus


# ------------------------------------------------------------------------------------------------- evaluations
@torch.no_grad()
def eval_loss(model: nn.Module, tokens: np.ndarray, context_len: int, *, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over ``tokens`` in non-overlapping windows of
    ``context_len`` (every token but the first is a target once, whatever ``context_len``)."""
    from attnlab.data import iterate_eval_batches

    total, count = 0.0, 0
    for x, y in iterate_eval_batches(tokens, batch_size, context_len):
        logits = model(x).float()  # (B, T, V)
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                         reduction="sum"))
        count += y.numel()
    return total / count


def bigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Validation cross-entropy (nats/token) of a count-based bigram model of ``train`` with Witten-Bell smoothing
    towards an add-one unigram: ``p(w|v) = (c(v,w) + N1(v) p(w)) / (c(v) + N1(v))``, ``N1(v)`` the number of
    distinct successors of ``v`` (no tuned constant)."""
    tr = np.asarray(train, dtype=np.int64)
    va = np.asarray(val, dtype=np.int64)
    V = int(vocab_size)
    uni = (np.bincount(tr, minlength=V) + 1.0) / (len(tr) + V)
    pairs = tr[:-1] * V + tr[1:]
    codes, counts = np.unique(pairs, return_counts=True)
    hist = np.bincount(tr[:-1], minlength=V).astype(np.float64)  # c(v)
    types = np.bincount(codes // V, minlength=V).astype(np.float64)  # N1(v)
    q = va[:-1] * V + va[1:]
    pos = np.searchsorted(codes, q)
    pos_c = np.minimum(pos, len(codes) - 1)
    c_vw = np.where(codes[pos_c] == q, counts[pos_c], 0).astype(np.float64)
    v, w = va[:-1], va[1:]
    denom = hist[v] + types[v]
    p = np.where(denom > 0, (c_vw + types[v] * uni[w]) / np.maximum(denom, 1e-300), uni[w])
    return float(-np.mean(np.log(p)))


@torch.no_grad()
def max_logits_per_layer(model: nn.Module, x: Tensor) -> list[float | None]:
    """The largest |pre-softmax logit| of each layer on input ``x`` ``(B, T)`` (``None`` for a layer without a
    dot-product score: MLP, Approximate): Standard and the fixed-map and static variants ``q_i . k_j / sqrt(D)`` over
    the causal pairs; Non-approximate its self-gated score ``SiLU(q_j) . k_j / sqrt(D)``."""
    from attnlab.layers.deconstructed._common import MixerInputs
    from attnlab.layers.rope import apply_rope

    seen: dict[int, tuple[Tensor, dict[str, Any]]] = {}
    hooks = []
    for i, block in enumerate(model.blocks):
        def pre(mod: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
            seen[i] = (args[0], kwargs)
        hooks.append(block.attn.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    out: list[float | None] = []
    for i, block in enumerate(model.blocks):
        attn, name = block.attn, block.mechanism
        h, kw = seen[i]
        T = h.shape[1]
        inputs: MixerInputs | None = kw.get("inputs")
        scores: Tensor | None = None
        if name == "standard":
            H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
            qk = attn.in_proj(h)[..., : (H + Hkv) * D]
            if attn.rope:
                qk = apply_rope(qk.view(*h.shape[:2], H + Hkv, D), 0, attn.rope_base, seq_dim=-3)
            q, k = (t.transpose(1, 2) for t in qk.view(*h.shape[:2], H + Hkv, D).split((H, Hkv), dim=2))
            scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
        elif name == "decon_nonapprox":
            scores, _ = attn.scores(h)  # (B, H, T)
        elif name in ("decon_rndembqk", "decon_fixedseqqk"):
            q, k = attn.fixed_qk(attn.fixed_source(inputs, T, like=h)[:T])  # (1, H, T, D)
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        elif name == "decon_staticembqk":
            q, k = attn._qk(attn.static_source(h, inputs), 0)
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if scores is None:
            out.append(None)
            continue
        if scores.ndim == 4:  # keep the causal pairs only
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=scores.device).tril(), 0.0)
        out.append(float(scores.abs().max()))
    return out


def _evaluate_run(model: nn.Module, cfg: StudyConfig, corpus: Any, variant: str, layout: str) -> dict[str, Any]:
    """The study's evaluations of one trained model (see the module docstring)."""
    model.eval()
    val = np.asarray(corpus.val)
    sub = val if cfg.eval_tokens is None else val[: cfg.eval_tokens]
    T = cfg.base.model.context_len
    bs = cfg.eval_batch_size
    res: dict[str, Any] = {"eval_tokens": int(len(sub) - 1)}
    res["context_loss"] = {str(c): eval_loss(model, sub, c, batch_size=bs) for c in cfg.eval_contexts()}
    rows = min(cfg.logit_rows, (len(val) - 1) // T)
    x = torch.from_numpy(val[: rows * T].astype(np.int64).reshape(rows, T))
    res["max_logit"] = max_logits_per_layer(model, x)
    mechs = list(model.mechanisms)
    skip_spec = None
    if variant == "standard":
        skip_spec = "odd"  # the Standard-SKIP control
    elif "standard" in mechs and any(m != "standard" for m in mechs):
        skip_spec = "variant"
    if skip_spec is not None:
        res["skip"] = {}
        for part in cfg.skip_parts:
            with model.skipping(skip_spec, part=part) as layers:
                res["skip"][part] = {"layers": layers, "loss": eval_loss(model, sub, T, batch_size=bs)}
        res["skip_spec"] = skip_spec
    return res


# ------------------------------------------------------------------------------------------------------ runner
@dataclass
class StudyResult:
    out_dir: Path
    runs: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    bigram: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0


def run_study(cfg: StudyConfig, out_dir: str | Path, *, force: bool = False, data: Any = None,
              log: Callable[[str], None] = print, jobs: int = 1) -> StudyResult:
    """Run (or resume) the study ``cfg`` in ``out_dir`` and write its leaderboard and report.

    The same study on the same directory resumes; a different one is refused (:class:`OutputDirError`);
    ``force`` moves an existing directory aside first. Holds the directory's run lock throughout.

    ``jobs`` > 1 trains that many runs at once, each in its own process with ``max(1, threads // jobs)`` torch
    threads (``threads`` of the study's base config), for small models whose matrix products are too small to split
    well across threads. Every run's configuration, seed and data are the same as with
    ``jobs=1``; only the thread count of its matrix products differs, so losses agree to float rounding, not bit for
    bit. Each run is trained and evaluated exactly as in the sequential order, and a study interrupted in either
    mode resumes in either mode."""
    from attnlab.config import ConfigError
    from attnlab.train.outdir import run_lock

    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    with run_lock(out_dir):
        return _run_study(cfg, Path(out_dir), force=force, data=data, log=log, jobs=jobs)


def _train_and_evaluate(cfg: StudyConfig, out: Path, variant: str, layout: str, seed: int, data: Any,
                        log: Callable[[str], None], threads: int | None = None) -> None:
    """Train one run of the grid (resuming its checkpoint) and write its ``study_eval.json``, or ``diverged.json``
    if training produced a non-finite loss. A run with either file is left as it is."""
    from attnlab.train.loading import load_trained
    from attnlab.train.outdir import atomic_write_text
    from attnlab.train.trainer import NonFiniteError, Trainer

    rdir = cfg.run_dir(out, variant, layout, seed)
    done, diverged = rdir / "study_eval.json", rdir / "diverged.json"
    if done.is_file() or diverged.is_file():
        return
    if not (rdir / "result.json").is_file():
        run_cfg = cfg.run_config(variant, layout, seed)
        if threads is not None:
            run_cfg = dataclasses.replace(run_cfg, threads=threads)
        trainer = Trainer(run_cfg, out_dir=rdir, data=data, resume=True, log=log)
        try:
            trainer.fit()
        except NonFiniteError as e:
            atomic_write_text(diverged, json.dumps({"diverged": True, "error": str(e),
                                                    "n_params": trainer.n_params}, indent=1))
        del trainer
        gc.collect()
    if not diverged.is_file():
        t = load_trained(rdir, device="cpu")
        ev = _evaluate_run(t.model, cfg, data, variant, layout)
        ev["parameter_counts"] = t.model.parameter_counts()
        ev["mechanisms"] = list(t.model.mechanisms)
        del t
        atomic_write_text(done, json.dumps(ev, indent=1))


_WORKER: dict[str, Any] = {}


def _worker_init(cfg: StudyConfig, out: Path, data: Any, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(cfg=cfg, out=out, data=data, threads=threads)


def _worker_run(variant: str, layout: str, seed: int) -> tuple[str, str, int]:
    w = _WORKER
    prefix = f"[{variant} {layout} seed {seed}] "
    _train_and_evaluate(w["cfg"], w["out"], variant, layout, seed, w["data"], lambda m: print(prefix + m, flush=True),
                        threads=w["threads"])
    return variant, layout, seed


def _run_study(cfg: StudyConfig, out: Path, *, force: bool, data: Any, log: Callable[[str], None],
               jobs: int = 1) -> StudyResult:
    from attnlab.train.config import upgrade_config_dict
    from attnlab.train.outdir import OutputDirError, atomic_write_text, prepare_out_dir

    desc = cfg.to_dict()
    meta = out / "study.json"
    if meta.is_file() and not force:
        old = json.loads(meta.read_text())
        if isinstance(old, dict) and "base" in old:  # written by an earlier attnlab: options added since, defaults
            old = {**old, "base": upgrade_config_dict(old["base"])}
        if old != desc and desc["layouts"] == "all" and {**desc, "layouts": "main"} == old:
            log(f"extending the study in {out} with the nine-layout ablation (its finished runs are kept)")
            atomic_write_text(meta, json.dumps(desc, indent=1))
            old = desc
        if old != desc:
            diff = sorted(k for k in set(old) | set(desc) if old.get(k) != desc.get(k))
            raise OutputDirError(f"{out} holds a different study (differs in: {', '.join(diff)}); use another --out, "
                                 "or --force to move it aside")
        log(f"resuming the study in {out}")
    else:
        backup = prepare_out_dir(out, resume=False, force=force)
        if backup is not None:
            log(f"moved the previous contents of {out} to {backup}")
        atomic_write_text(meta, json.dumps(desc, indent=1))

    if data is None:
        data = study_data(cfg, progress=cfg.base.progress)
    corpus = data
    result = StudyResult(out_dir=out)
    bfile = out / "bigram.json"
    if not bfile.is_file():
        vocab = int(corpus.tokenizer.vocab_size)
        rec = {"val_loss": bigram_loss(corpus.train, corpus.val, vocab),
               "smoothing": "Witten-Bell towards add-one unigram", "vocab_size": vocab}
        unk = getattr(corpus.tokenizer, "unk_id", None)
        if unk is not None:  # word level: how much of the validation split is <unk>
            rec["val_unk_share"] = float(np.mean(np.asarray(corpus.val) == unk))
        atomic_write_text(bfile, json.dumps(rec, indent=1))
    result.bigram = json.loads(bfile.read_text())
    t0 = time.perf_counter()
    grid = [(v, lay, s) for v, lay in cfg.models() for s in cfg.seeds]

    def finished(variant: str, layout: str, seed: int) -> bool:
        rdir = cfg.run_dir(out, variant, layout, seed)
        return (rdir / "study_eval.json").is_file() or (rdir / "diverged.json").is_file()

    todo = []
    for n, key in enumerate(grid, 1):
        if finished(*key):
            log(f"[{n}/{len(grid)}] {' '.join(map(str, key[:2]))} seed {key[2]}: finished earlier, kept")
        else:
            todo.append(key)
    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (cfg.base.threads or torch.get_num_threads()) // jobs)
        log(f"{len(todo)} runs, {min(jobs, len(todo))} at a time, {threads} thread(s) each")
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(cfg, out, data, threads)) as pool:
            futures = [pool.submit(_worker_run, *key) for key in todo]
            try:
                for n, future in enumerate(as_completed(futures), len(grid) - len(todo) + 1):
                    variant, layout, seed = future.result()
                    log(f"[{n}/{len(grid)}] {variant} {layout} seed {seed}: finished")
            except BaseException:
                # a failed run stops the study as it would sequentially: runs not started are dropped, the ones
                # in flight finish (their results are kept for the next resume)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    else:
        for variant, layout, seed in todo:
            log(f"[{grid.index((variant, layout, seed)) + 1}/{len(grid)}] {variant} {layout} seed {seed}")
            _train_and_evaluate(cfg, out, variant, layout, seed, data, log)
    for variant, layout, seed in grid:
        rdir = cfg.run_dir(out, variant, layout, seed)
        done, diverged = rdir / "study_eval.json", rdir / "diverged.json"
        rec: dict[str, Any] = {"variant": variant, "layout": layout, "seed": seed}
        if diverged.is_file():
            rec.update(json.loads(diverged.read_text()))
        else:
            rec["result"] = json.loads((rdir / "result.json").read_text())
            rec["eval"] = json.loads(done.read_text())
            rec["diverged"] = not math.isfinite(rec["result"]["val"]["loss"])
        result.runs[(variant, layout, seed)] = rec
    result.wall_s = time.perf_counter() - t0

    from attnlab.study.report import write_study_report

    result.files = write_study_report(out, cfg, result)
    log("wrote " + ", ".join(str(p) for p in result.files.values()))
    return result
