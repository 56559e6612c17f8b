"""Named, tested training presets (:class:`TrainConfig`); comparison presets are in :mod:`attnlab.compare.presets`.

Each preset is a plain function; presets derive from each other with :func:`dataclasses.replace`.

Training presets (``attnlab train --preset NAME``):

* ``shakespeare-char``: nanoGPT's ``train_shakespeare_char.py`` (6 layers, 6 heads, 384 dims, context 256,
  batch 64, lr 1e-3 -> 1e-4 over 5000 iterations, warmup 100, beta2 0.99, dropout 0.2); nanoGPT reports a best
  validation loss of 1.4697 (its model is a GPT-2 block with learned positions; ours is LLaMA-style:
  RMSNorm, SwiGLU, RoPE).
* ``shakespeare-char-cpu``: nanoGPT's CPU settings (4 layers, 4 heads, 128 dims, context 64, batch 12, 2000
  iterations, dropout 0); nanoGPT reports about 1.88.
* ``wikitext2``: word-level WikiText-2 (33,278 words), reporting test perplexity (reference points: a 2-layer
  650-unit LSTM about 87, AWD-LSTM 65.6).
* ``castle-s``: the CASTLE paper's S size (12 layers, d_model 896, 14 heads of 64 for the baseline, 8 for
  CASTLE by parameter parity, sequence 2048), for a GPU. The data default is WikiText-2 in GPT-2 tokens, far
  less than the paper's pre-training data: point ``data.source`` at a larger text file for a real run.
* ``etth1-dlinear``, ``etth1-transformer``, ``etth1-autohformer``, ``etth1-quick``: forecasting on ETTh1
  (``task = "forecast"``).
* ``digits-vqa``, ``digits-vqa-quick``: two-image digit questions under a future-aware mask (``task = "digits-vqa"``;
  spec future_mask.md E4).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from attnlab.config import ConfigError
from attnlab.models.lm import LMConfig
from attnlab.tasks.lm import LMDataConfig
from attnlab.train.config import OptimConfig, TrainConfig

__all__ = [
    "PRESETS",
    "get_preset",
    "shakespeare_char",
    "shakespeare_char_cpu",
    "wikitext2",
    "castle_s",
]


# ---------------------------------------------------------------------------------------------------------------
# Training presets


def shakespeare_char() -> TrainConfig:
    """nanoGPT ``shakespeare_char`` (published best val loss 1.4697 after 5000 iterations on one A100)."""
    return TrainConfig(
        model=LMConfig(n_layers=6, n_heads=6, d_model=384, context_len=256, dropout=0.2),
        data=LMDataConfig(source="tinyshakespeare", tokenizer="char"),
        optim=OptimConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, warmup_steps=100, min_lr_ratio=0.1,
                           grad_clip=1.0),
        steps=5000, batch_size=64, eval_interval=250, log_interval=10,
    )


def shakespeare_char_cpu() -> TrainConfig:
    """nanoGPT's CPU variant of ``shakespeare_char`` (published val loss about 1.88)."""
    base = shakespeare_char()
    return replace(
        base,
        model=replace(base.model, n_layers=4, n_heads=4, d_model=128, context_len=64, dropout=0.0),
        steps=2000, batch_size=12, eval_interval=250,
    )


def wikitext2() -> TrainConfig:
    """Word-level WikiText-2; the final report includes test perplexity."""
    base = shakespeare_char()
    return replace(
        base,
        model=LMConfig(n_layers=4, n_heads=4, d_model=256, context_len=128, dropout=0.3),
        data=LMDataConfig(source="wikitext2", tokenizer="word"),
        optim=replace(base.optim, lr=1e-3, betas=(0.9, 0.95), warmup_steps=200),
        steps=6000, batch_size=32, eval_interval=500,
    )


def castle_s() -> TrainConfig:
    """The CASTLE paper's S configuration (about 160M parameters with the GPT-2 vocabulary), for a GPU."""
    base = wikitext2()
    return replace(
        base,
        model=LMConfig(n_layers=12, d_model=896, n_heads=14, head_dim=64, context_len=2048, dropout=0.0,
                           parity=True),
        data=LMDataConfig(source="wikitext2", tokenizer="gpt2"),
        optim=OptimConfig(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=200, min_lr_ratio=0.1),
        steps=2000, batch_size=32, grad_accum=4, eval_interval=250, eval_batch_size=4, precision="auto",
    )


# ---------------------------------------------------------------------------------------------------------------
# Translation presets (Multi30K task 1, bundled)


def multi30k_de_en() -> TrainConfig:
    """German -> English on Multi30K: a small pre-norm Transformer (3 + 3 layers, d_model 256, 4 heads, SwiGLU,
    RoPE in self-attention, tied embeddings, 8k joint BPE), label smoothing 0.1, beam 4; sized for a 2-core CPU
    within about 2 hours (one command, resumable). Public small-Transformer implementations report BLEU about
    30-36 on test_2016_flickr after longer GPU training."""
    from attnlab.models.encdec import EncDecConfig
    from attnlab.tasks.translation.task import TranslationDataConfig, TranslationOptions

    return TrainConfig(
        task="translation",
        model=EncDecConfig(d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3, dropout=0.1,
                           max_source_len=96, max_target_len=96),
        data=TranslationDataConfig(source="multi30k", src_lang="de", tgt_lang="en", vocab_size=8000),
        options=TranslationOptions(label_smoothing=0.1, search="beam", beam_size=4, length_penalty=0.6),
        optim=OptimConfig(lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01, warmup_steps=400, min_lr_ratio=0.05,
                          grad_clip=1.0),
        steps=4000, batch_size=128, eval_interval=500, log_interval=20, eval_batch_size=100, threads=2,
    )


def multi30k_en_de() -> TrainConfig:
    """English -> German, otherwise :func:`multi30k_de_en`."""
    base = multi30k_de_en()
    return replace(base, data=replace(base.data, src_lang="en", tgt_lang="de"))


def multi30k_mid() -> TrainConfig:
    """The classic cross-attention comparison's run: 2 + 2 layers, d_model 128, 1,200 steps of 64 pairs,
    greedy decoding (a run takes a few minutes on a 2-core CPU)."""
    base = multi30k_de_en()
    return replace(
        base,
        model=replace(base.model, d_model=128, n_encoder_layers=2, n_decoder_layers=2),
        options=replace(base.options, search="greedy"),
        optim=replace(base.optim, warmup_steps=200),
        steps=1200, batch_size=64, eval_interval=400, threads=1,
    )


def multi30k_quick() -> TrainConfig:
    """A smoke run of a minute or two for tests and demos: 1 + 1 layers, d_model 64, 150 steps, greedy."""
    base = multi30k_mid()
    return replace(
        base,
        model=replace(base.model, d_model=64, n_encoder_layers=1, n_decoder_layers=1),
        data=replace(base.data, vocab_size=2000),
        optim=replace(base.optim, warmup_steps=20),
        steps=150, batch_size=32, eval_interval=75, log_interval=10,
    )


# ---------------------------------------------------------------------------------------------------------------
# Forecasting presets (ETTh1, bundled; the long-horizon protocol of spec time_series.md C.9)


def etth1_dlinear() -> TrainConfig:
    """ETTh1, multivariate, look-back 336, horizon 96 (``--set data.horizon=192`` etc.), a DLinear-style model
    (moving average 25, maps shared by the channels); Adam-style AdamW without weight decay, lr 5e-3, batch 32,
    about 10 epochs of the 8,209 training windows. Settings chosen here, not taken from a paper."""
    from attnlab.models.timeseries import ForecastModelConfig
    from attnlab.tasks.forecast import ForecastDataConfig, ForecastOptions

    return TrainConfig(
        task="forecast",
        model=ForecastModelConfig(arch="dlinear"),
        data=ForecastDataConfig(source="etth1", look_back=336, horizon=96, features="M", borders="ett_hour"),
        options=ForecastOptions(),
        optim=OptimConfig(lr=5e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=50, min_lr_ratio=0.01,
                          grad_clip=1.0),
        steps=2600, batch_size=32, eval_interval=260, log_interval=20, eval_batch_size=256, threads=1,
    )


def etth1_transformer() -> TrainConfig:
    """:func:`etth1_dlinear` with the small causal Transformer forecaster (2 layers, d_model 64, 4 heads, full
    causal attention, dropout 0.1 on the input and the residual branches, none on the attention probabilities),
    lr 1e-3 with weight decay 0.01. Attention dropout is off for cost: on a CPU it forces SDPA's math kernel and a
    ``(B, H, L, L)`` Bernoulli mask, and the training step at look-back 336 took 2.4 s with it and 0.64 s without
    (one thread of a shared machine)."""
    from attnlab.models.timeseries import TransformerForecasterConfig

    base = etth1_dlinear()
    return replace(
        base,
        model=replace(base.model, arch="transformer", transformer=TransformerForecasterConfig(
            attention_options={"standard": {"dropout": 0.0}})),
        optim=replace(base.optim, lr=1e-3, weight_decay=0.01, warmup_steps=100),
        eval_batch_size=128,
    )


def etth1_autohformer() -> TrainConfig:
    """:func:`etth1_dlinear` (look-back 336, horizon 96) with AutoHFormer (spec ``time_series.md`` C.6), the
    released scripts' settings (C.8) scaled to a 2-core CPU: kept are the window W = 32 (look-back 16), gamma
    0.5 multiplicative, dropout 0.1 and the MSE loss; scaled are 2 layers instead of 3, d_model 64 instead of 128,
    4 heads of 16 instead of 16 of 8, d_ff 128 instead of 256, batch 32 instead of 128, 1,300 steps (about 5
    epochs) instead of up to 100 epochs with early stopping, AdamW lr 1e-3 with warm-up and cosine decay instead
    of Adam 1e-4 with the per-epoch ``type3`` rule. Segments of 24 steps (4 per horizon of 96; the paper does not
    state H). Measured on one thread of a shared 2-core machine: about 1.1 s per training step (1.9 s before the
    banded form computed its window one diagonal at a time); evaluation decodes 96 steps one at a time (about 1 s
    per 32 windows)."""
    from attnlab.models.timeseries import AutoHFormerConfig

    base = etth1_dlinear()
    return replace(
        base,
        model=replace(base.model, arch="autohformer", autohformer=AutoHFormerConfig(
            n_layers=2, d_model=64, n_heads=4, ffn_hidden=128, dropout=0.1, window=32, decay="multiplicative",
            gamma_init=0.5, segment_len=24)),
        optim=replace(base.optim, lr=1e-3, weight_decay=0.0, warmup_steps=100),
        steps=1300, eval_interval=650, eval_batch_size=256,
    )


def etth1_quick() -> TrainConfig:
    """A smoke run of seconds for tests and demos: ETTh1, look-back 96, horizon 24, DLinear, 60 steps of 32."""
    base = etth1_dlinear()
    return replace(
        base,
        data=replace(base.data, look_back=96, horizon=24),
        optim=replace(base.optim, warmup_steps=10),
        steps=60, eval_interval=30, log_interval=10,
    )


# ---------------------------------------------------------------------------------------------------------------
# Two-image digit questions (future_mask.md E4; needs attnlab[digits] to load the images)


def digits_vqa() -> TrainConfig:
    """The two-image digits task (``task = "digits-vqa"``) under the causal mask: patches of 4x4 pixels (4 visual
    tokens per image, 11 positions in all), a 4-layer LM of width 64 with 4 heads, 2,000 steps of 64 questions,
    AdamW lr 2e-3 (100 warm-up steps, cosine to 10%), weight decay 0.1, one thread; 3,000 fixed validation and test
    questions. About 2 minutes on one idle core. Chosen here: 2x2 patches (35 positions) reached 74% against 95%
    for 4x4 after 1,500 steps in a trial, at three times the cost."""
    from attnlab.models.lm import LMConfig
    from attnlab.models.vlm import PatchVLMConfig
    from attnlab.tasks.digits_vqa import DigitsDataConfig, DigitsOptions

    return TrainConfig(
        task="digits-vqa",
        model=PatchVLMConfig(patch_size=4, lm=LMConfig(n_layers=4, d_model=64, n_heads=4, context_len=16)),
        data=DigitsDataConfig(eval_questions=3000),
        options=DigitsOptions(train_mask="c"),
        optim=OptimConfig(lr=2e-3, warmup_steps=100, weight_decay=0.1),
        steps=2000, batch_size=64, eval_interval=500, log_interval=50, eval_batch_size=500, device="cpu",
        threads=1, tensorboard=True, progress=False,
    )


def digits_vqa_quick() -> TrainConfig:
    """:func:`digits_vqa` at smoke size (seconds): 2 layers (the fewest in which a mask can change the answer: in
    one layer the answer row is a text row, which every mask leaves causal), width 16, 30 steps, 200 evaluation
    questions."""
    from attnlab.models.lm import LMConfig

    full = digits_vqa()
    return replace(full, model=replace(full.model, lm=LMConfig(n_layers=2, d_model=16, n_heads=2, context_len=16)),
                   data=replace(full.data, eval_questions=200), optim=replace(full.optim, warmup_steps=5),
                   steps=30, eval_interval=15, log_interval=5)


# ---------------------------------------------------------------------------------------------------------------
# The Spurious Token Game (spec causal_training.md A.7, A.9)


def stg() -> TrainConfig:
    """The Spurious Token Game with the answer-only loss (``task = "stg"``): 1,600 IID training examples (seed 42),
    400 per test split, a 2-layer LM of width 64 with 4 heads trained from scratch, 3,000 steps of 32 (60 epochs),
    AdamW lr 3e-3, one thread; about 2.5 minutes. ``--set options.objective=cat`` adds CAT's term (alpha 2, the
    released defaults; ``options.cat.decay=progress`` for the from-scratch schedule of spec A.9)."""
    from attnlab.tasks.stg import STGDataConfig, STGOptions

    return TrainConfig(
        task="stg", model=LMConfig(n_layers=2, d_model=64, n_heads=4, context_len=48), data=STGDataConfig(),
        options=STGOptions(), optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1),
        steps=3000, batch_size=32, eval_interval=300, log_interval=50, device="cpu", threads=1, tensorboard=True,
    )


def stg_quick() -> TrainConfig:
    """:func:`stg` at smoke size (seconds): 1 layer of width 16, 20 steps, 200 training and 40 test examples."""
    base = stg()
    return replace(base, model=replace(base.model, n_layers=1, d_model=16, n_heads=2),
                   data=replace(base.data, n_train=200, n_test=40), optim=replace(base.optim, warmup_steps=5),
                   steps=20, eval_interval=10, log_interval=5, progress=False)


def arith_distractors() -> TrainConfig:
    """Arithmetic with distractors (``task = "arith-distractors"``, spec B.8): 4,000 distractor-heavy IID problems
    (the year's last digit is the answer's units digit 90 % of the time), 400 per test split, the :func:`stg` model
    and optimiser, 3,000 steps of 32 (24 epochs), one thread. The LeaF teacher: ``--set data.train_split=clean+ood``;
    then ``--set options.objective=leaf --set options.teacher.checkpoint=runs/teacher --set
    options.student.checkpoint=runs/student``."""
    from attnlab.tasks.arith import ArithDataConfig, ArithOptions

    return replace(stg(), task="arith-distractors", model=LMConfig(n_layers=2, d_model=64, n_heads=4, context_len=40),
                   data=ArithDataConfig(), options=ArithOptions())


def arith_distractors_quick() -> TrainConfig:
    """:func:`arith_distractors` at smoke size (seconds): 1 layer of width 16, 20 steps, 200 problems, 40 per split."""
    base = arith_distractors()
    return replace(base, model=replace(base.model, n_layers=1, d_model=16, n_heads=2),
                   data=replace(base.data, n_train=200, n_test=40), optim=replace(base.optim, warmup_steps=5),
                   steps=20, eval_interval=10, log_interval=5, progress=False)


def discovery() -> TrainConfig:
    """The causal-discovery forecaster (``task = "discovery"``) at the sizes of ``attnlab discover``: variable tokens,
    2 layers of width 32, look-back 5, 1,500 steps of 64 windows, AdamW lr 3e-3 without weight decay, one thread.
    Name the series with ``--set data.source=my.csv`` (``attnlab discover`` runs it over seeds and reads the graph
    out)."""
    from attnlab.models.timeseries.causal import CausalForecasterConfig
    from attnlab.tasks.causal_discovery import DiscoveryDataConfig, DiscoveryOptions

    return TrainConfig(
        task="discovery", model=CausalForecasterConfig(), data=DiscoveryDataConfig(), options=DiscoveryOptions(),
        optim=OptimConfig(lr=3e-3, warmup_steps=100, weight_decay=0.0), steps=1500, batch_size=64,
        eval_interval=500, log_interval=50, device="cpu", threads=1, tensorboard=False,
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "shakespeare-char": shakespeare_char,
    "shakespeare-char-cpu": shakespeare_char_cpu,
    "wikitext2": wikitext2,
    "castle-s": castle_s,
    "multi30k-de-en": multi30k_de_en,
    "multi30k-en-de": multi30k_en_de,
    "multi30k-mid": multi30k_mid,
    "multi30k-quick": multi30k_quick,
    "etth1-dlinear": etth1_dlinear,
    "etth1-transformer": etth1_transformer,
    "etth1-autohformer": etth1_autohformer,
    "etth1-quick": etth1_quick,
    "digits-vqa": digits_vqa,
    "digits-vqa-quick": digits_vqa_quick,
    "stg": stg,
    "stg-quick": stg_quick,
    "arith-distractors": arith_distractors,
    "arith-distractors-quick": arith_distractors_quick,
    "discovery": discovery,
}


def get_preset(name: str) -> TrainConfig:
    """A training preset by name (``attnlab.compare.presets.run_preset`` also accepts comparison presets)."""
    if name in PRESETS:
        return PRESETS[name]()
    raise ConfigError(f"unknown preset {name!r}; training presets: {', '.join(PRESETS)}")
