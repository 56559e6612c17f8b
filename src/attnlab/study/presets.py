"""The presets of ``attnlab study deconstructing``: ``quick`` (a smoke study, <= 10 minutes on 2 cores), ``full``
(the committed study, <= 2.5 hours per sitting; its sizes and measured costs in :func:`full`) and ``tiny`` (seconds,
for tests)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from attnlab.config import ConfigError
from attnlab.study.deconstructing import StudyConfig
from attnlab.train.config import TrainConfig

__all__ = ["STUDY_PRESETS", "get_study_preset", "quick", "full", "tiny", "FULL_SIZE"]


def _base(source: str, tokenizer: str, *, n_layers: int, d_model: int, n_heads: int, context_len: int, steps: int,
          batch_size: int, lr: float, warmup: int, threads: int = 1) -> TrainConfig:
    from attnlab.train.presets import shakespeare_char

    b = shakespeare_char()
    return dataclasses.replace(
        b,
        model=dataclasses.replace(b.model, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                                  context_len=context_len, dropout=0.0),
        data=dataclasses.replace(b.data, source=source, tokenizer=tokenizer),  # type: ignore[arg-type]
        optim=dataclasses.replace(b.optim, lr=lr, betas=(0.9, 0.95), warmup_steps=warmup),
        steps=steps, batch_size=batch_size, eval_interval=steps, log_interval=10, keep_checkpoints=1,
        device="cpu", tensorboard=False, threads=threads, progress=False,
    )


def quick(corpus: str = "tinyshakespeare") -> StudyConfig:
    """The smoke study (at most 10 minutes on 2 cores): 13 models x 2 seeds, 4 layers, d_model 32, 2 heads,
    context 64, 150 steps x 16 rows (154k tokens per run), Tiny Shakespeare characters; extra evaluations over the
    first 16,384 validation tokens. Measured: one run (training + whole-split validation) 9.3 s on one thread of a
    busy 2-core machine, so about 26 x 11 s = 5 minutes for the grid (an estimate; the whole preset was not run)."""
    src, tok = _corpus(corpus)
    return StudyConfig(name="quick", base=_base(src, tok, n_layers=4, d_model=32, n_heads=2, context_len=64,
                                                steps=150, batch_size=16, lr=3e-3, warmup=20),
                       seeds=[0, 1], eval_tokens=16384, logit_rows=4)


#: The ``full`` preset's size (checked against its docstring by the tests).
FULL_SIZE = {"n_layers": 8, "d_model": 64, "n_heads": 4, "context_len": 128, "steps": 500, "batch_size": 16,
             "seeds": 3, "vocab_cap": 8192, "threads": 2}


def full(corpus: str = "wikitext2") -> StudyConfig:
    """The reproduction, sized to finish in one sitting on 2 CPU cores: 13 models x 3 seeds, 8 layers (every
    layout of ``layouts="all"`` gives whole layers), d_model 64, 4 heads, context 128, 500 steps x 16 rows
    (1,024,000 training tokens per run), 2 threads, WikiText-2 word level with the vocabulary capped at 8,192 (the
    8,190 most frequent training words, ``<eos>``, ``<unk>``; 13.0% of validation tokens become ``<unk>`` against
    5.4% with all 33,278 words), or ``corpus="tinyshakespeare"`` (65 characters, no cap) as a second run of the same
    size; extra evaluations (contexts, SKIP) over the first 32,768 validation tokens; no test-split evaluation.

    Why the cap: on one CPU thread a training step (16 x 128 tokens) of the 8-layer Standard model costs 1.3-1.5 s
    with all 33,278 words (profile: matrix products 48%, log-softmax forward and backward 32%, zero-filling 8%;
    about 90% of the step is the output layer and its softmax), 0.65 s at 16,384 words, 0.38-0.43 s at 8,192 and
    0.16-0.17 s at 65 characters; d_model 32 instead of 64 saves only 10%. Uncapped (1.2-2.0 s per step, 19.5 s for
    all 13 models), one run takes ~12 min of one thread and the grid ~5.5 h on 2 cores.

    Measured (2026-12-03, AMD EPYC, torch 2.13 CPU; CPU seconds per training step of random tokens on one thread,
    forward, cross-entropy, backward, AdamW; a loaded 2-core machine, so upper bounds; the higher of two passes).
    WikiText-2 at 8,192 words, uniform / hybrid: Standard 0.43; MLP 0.47 / 0.40; Approximate 0.99 / 0.76;
    Non-approximate 0.46 / 0.37; RndEmbQK 0.38 / 0.44; FixedSeqQK 0.41 / 0.38; StaticEmbQK 0.50 / 0.43; all 13
    models 6.3 s per step. The 16 ablation models (Non-approximate, RndEmbQK x 8 layouts) 0.38-0.44 each, 6.6 s
    together. Tiny Shakespeare: Standard 0.17; MLP 0.13 / 0.16; Approximate 0.75 / 0.46; Non-approximate
    0.23 / 0.19; RndEmbQK 0.19 / 0.22; FixedSeqQK 0.17 / 0.17; StaticEmbQK 0.26 / 0.23; all 13 models 3.3 s. The
    real trainer on the capped corpus (20-step runs through :func:`run_study`, wall time, same loaded machine):
    Standard 0.41-0.49 s per step and ~30 s of evaluations per run, uniform Approximate 0.87 s and ~60 s.

    Estimate on 2 idle cores, taking 2 threads as 1.7x one (not measured: the second core was busy): WikiText-2
    training 6.3 s x 500 steps x 3 seeds = 2.6 h of one thread; evaluations (the whole 217,646-token validation
    split at the end of each run, then 4 contexts, 2 SKIP readings and the logit probe) add 12-15%; about
    **1.75 h** in all (2.15 h if 2 threads give only 1.4x; limit 2.5 h). Tiny Shakespeare: 3.3 s x 1,500 = 1.4 h
    of one thread, about **0.95 h** on two.

    ``layouts="all"`` adds 2 variants x 8 layouts = 16 models (48 runs): 6.6 s x 1,500 = 2.8 h of one thread plus
    evaluations, about **1.9 h** on 2 cores (2.3 h at 1.4x). The whole ``all`` grid (87 runs, ~3.6 h) does not
    fit one 2.5-hour sitting, so run the main grid first, then the same command with ``--layouts all`` on the same
    ``--out``: it keeps the 39 finished runs and trains only the ablation."""
    src, tok = _corpus(corpus)
    z = FULL_SIZE
    return StudyConfig(name="full", base=_base(src, tok, n_layers=z["n_layers"], d_model=z["d_model"],
                                               n_heads=z["n_heads"], context_len=z["context_len"], steps=z["steps"],
                                               batch_size=z["batch_size"], lr=2e-3, warmup=50, threads=z["threads"]),
                       seeds=list(range(z["seeds"])), eval_tokens=32768, logit_rows=8,
                       vocab_cap=z["vocab_cap"] if tok == "word" else None)


def tiny(corpus: str = "tinyshakespeare") -> StudyConfig:
    """A seconds-long smoke study for tests: Standard, MLP and Non-approximate, 2 layers of 16, 3 steps, 2 seeds."""
    src, tok = _corpus(corpus)
    return StudyConfig(name="tiny", base=_base(src, tok, n_layers=2, d_model=16, n_heads=2, context_len=16, steps=3,
                                               batch_size=2, lr=3e-3, warmup=1),
                       variants=["decon_mlp", "decon_nonapprox"], seeds=[0, 1], eval_tokens=512, logit_rows=2,
                       eval_batch_size=8)


def _corpus(name: str) -> tuple[str, str]:
    known = {"tinyshakespeare": ("tinyshakespeare", "char"), "wikitext2": ("wikitext2", "word")}
    if name in known:
        return known[name]
    return name, "char"  # a path: characters


STUDY_PRESETS: dict[str, Callable[..., StudyConfig]] = {"quick": quick, "full": full, "tiny": tiny}


def get_study_preset(name: str, corpus: str | None = None) -> StudyConfig:
    """A study preset by name (``quick``, ``full``, ``tiny``), on its default corpus or ``corpus``."""
    if name not in STUDY_PRESETS:
        raise ConfigError(f"unknown study preset {name!r}; choose from {', '.join(STUDY_PRESETS)}")
    return STUDY_PRESETS[name]() if corpus is None else STUDY_PRESETS[name](corpus)
