"""Named, tested comparison presets (``attnlab compare --preset NAME``).

* ``quick``: the CPU demo — standard, castle, castle-swl, sliding-window and linear on Tiny Shakespeare
  (characters) with tiny models; sized to finish within 10 minutes on a 2-core CPU.
* ``tiny``: a seconds-long smoke comparison for tests.
* ``multi30k-scores``: the four cross-attention scores of translation, three seeds.
* ``digits-masks``, ``digits-masks-quick``: the two-image digits task trained under each future-aware mask
  (:mod:`attnlab.study.digits`; ``attnlab vlm digits`` adds the train x evaluation mask report).
* ``stg-objectives``, ``stg-objectives-quick``: the Spurious Token Game under plain training and CAT with each
  decay schedule (spec causal_training.md A.9).
* ``forecast-quick``: DLinear, the causal Transformer and AutoHFormer on ETTh1 (the ``etth1-quick`` run: look-back
  96, horizon 24, 60 steps), two seeds; other horizons with ``--set data.horizon=N`` (one comparison per horizon).
* ``etth1-models``: the same three at look-back 336 and the horizon of ``--set data.horizon=N``, each with its own
  preset's optimiser, three seeds (the ETTh1 table).

Every comparison preset evaluates at least 10 times per run (10 validation points per curve), except the smoke
presets. A training preset given to ``attnlab compare`` becomes a comparison of its task's default variants.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from attnlab.compare.config import CompareConfig
from attnlab.config import ConfigError
from attnlab.train.config import TrainConfig
from attnlab.train.presets import PRESETS, shakespeare_char_cpu

__all__ = ["COMPARE_PRESETS", "QUICK_MECHANISMS", "get_compare_preset", "run_preset", "quick", "tiny"]

QUICK_MECHANISMS = ["standard", "castle", "castle-swl", "sliding-window", "linear"]


def quick() -> CompareConfig:
    """The CPU demo: five mechanisms, tiny LLaMA-style models on Tiny Shakespeare characters.

    2 layers, d_model 64, 4 heads (CASTLE: 2 by parity), block 128, 16 sequences per step, 500 steps (1.0M
    training tokens, about one epoch), two seeds; windows of 32 for the windowed mechanisms; one CPU thread; a
    validation point every 50 steps (10 per curve); TensorBoard logs in each run directory.
    Measured cost: about 140 CPU-seconds per seed for all five mechanisms (one thread, this project's dev machine).
    """
    base = shakespeare_char_cpu()
    cfg = replace(
        base,
        model=replace(base.model, n_layers=2, d_model=64, n_heads=4, context_len=128, dropout=0.0),
        optim=replace(base.optim, lr=3e-3, warmup_steps=50),
        steps=500, batch_size=16, eval_interval=50, log_interval=10, keep_checkpoints=1,
        device="cpu", tensorboard=True, threads=1,
    )
    return CompareConfig(
        base=cfg, variants=list(QUICK_MECHANISMS), seeds=[0, 1],
        options={"sliding-window": {"window": 32}, "castle-swl": {"lookahead": 32}},
    )


def tiny() -> CompareConfig:
    """A smoke comparison (seconds): the ``quick`` mechanisms, 1-layer 16-dim models, 6 steps, 2 seeds."""
    q = quick()
    cfg = replace(
        q.base,
        model=replace(q.base.model, n_layers=1, d_model=16, n_heads=2, context_len=16),
        steps=6, batch_size=4, eval_interval=3, log_interval=1, progress=False, tensorboard=False,
    )
    return CompareConfig(base=cfg, variants=list(QUICK_MECHANISMS), seeds=[0, 1],
                         options={"sliding-window": {"window": 4}, "castle-swl": {"lookahead": 4}})


def multi30k_scores() -> CompareConfig:
    """The classic comparison: Bahdanau additive vs Luong general vs Luong dot vs scaled dot-product
    cross-attention on Multi30K de->en (the ``multi30k-mid`` run), 3 seeds each; ranked by test BLEU."""
    from attnlab.train.presets import multi30k_mid

    base = multi30k_mid()
    return CompareConfig(base=replace(base, eval_interval=base.steps // 10),  # 10 validation points per curve
                         variants=["scaled_dot", "additive", "general", "dot"], seeds=[0, 1, 2])


def multi30k_scores_tiny() -> CompareConfig:
    """A smoke version of :func:`multi30k_scores` for tests: the ``multi30k-quick`` run cut to 12 steps, 2 seeds,
    evaluated on the first sentences only through a small corpus the caller provides."""
    from attnlab.train.presets import multi30k_quick

    base = replace(multi30k_quick(), steps=12, eval_interval=6, progress=False, tensorboard=False)
    return CompareConfig(base=base, variants=["scaled_dot", "additive"], seeds=[0, 1])


def forecast_quick() -> CompareConfig:
    """Every forecasting model (``model.arch``) on the ``etth1-quick`` run, seeds 0 and 1; AutoHFormer at the
    ``etth1-autohformer`` sizes (2 layers, d_model 64, 4 heads, segments of 24 steps: one per horizon of 24)."""
    from attnlab.models.timeseries import ARCHS
    from attnlab.train.presets import etth1_autohformer, etth1_quick

    base = etth1_quick()
    base = replace(base, model=replace(base.model, autohformer=etth1_autohformer().model.autohformer),
                   eval_interval=base.steps // 10)  # 10 validation points per curve
    return CompareConfig(base=base, variants=list(ARCHS), seeds=[0, 1])


def etth1_models() -> CompareConfig:
    """The ETTh1 table of issue 13 at one horizon (``--set data.horizon=192`` etc.; one comparison per horizon):
    DLinear, the causal Transformer and AutoHFormer at look-back 336, three seeds, each model with its own preset's
    optimiser settings (``etth1-dlinear``, ``-transformer``, ``-autohformer``). Budget: DLinear its preset's 2,600
    steps; the two attention models 1,000 steps of 32 windows (about 3.9 epochs of the 8,209 training windows) so
    that a horizon takes about 2 core-hours on a CPU; validation curves on 256 evenly spaced windows
    (``options.val_windows``), the test split on every window. Baseline ``dlinear``."""
    from attnlab.models.timeseries import ARCHS
    from attnlab.tasks.forecast import ForecastOptions
    from attnlab.train.presets import etth1_autohformer, etth1_dlinear, etth1_transformer

    base = etth1_dlinear()
    tr, ah = etth1_transformer(), etth1_autohformer()
    base = replace(base, model=replace(base.model, transformer=tr.model.transformer, autohformer=ah.model.autohformer),
                   options=ForecastOptions(val_windows=256))  # validation curves on 256 windows; test on all

    def optim(cfg) -> dict[str, object]:
        return {"optim.lr": cfg.optim.lr, "optim.weight_decay": cfg.optim.weight_decay,
                "optim.warmup_steps": cfg.optim.warmup_steps, "steps": 1000, "eval_interval": 100,
                "eval_batch_size": cfg.eval_batch_size}

    return CompareConfig(base=base, variants=list(ARCHS), seeds=[0, 1, 2], baseline="dlinear",
                         options={"transformer": optim(tr), "autohformer": optim(ah)})


def digits_masks() -> CompareConfig:
    """The ``digits-vqa`` run trained under each future-aware mask (``options.train_mask``: c, f, v2v, v2t), three
    seeds, baseline the causal mask (``attnlab vlm digits`` adds the train x evaluation mask report)."""
    from attnlab.masks.vlm import FUTURE_KINDS
    from attnlab.train.presets import digits_vqa

    base = digits_vqa()
    return CompareConfig(base=replace(base, eval_interval=base.steps // 10),  # 10 validation points per curve
                         variants=list(FUTURE_KINDS), baseline="c", seeds=[0, 1, 2])


def digits_masks_quick() -> CompareConfig:
    """:func:`digits_masks` at smoke size (``digits-vqa-quick``: seconds), two seeds."""
    from attnlab.train.presets import digits_vqa_quick

    return replace(digits_masks(), base=digits_vqa_quick(), seeds=[0, 1])


def stg_objectives() -> CompareConfig:
    """The Spurious Token Game (``stg`` preset) under plain training and CAT with each decay (``plain``,
    ``cat-epoch``, ``cat-progress``, ``cat-none``), three seeds, baseline ``plain``."""
    from attnlab.tasks.stg import DEFAULT_VARIANTS
    from attnlab.train.presets import stg

    return CompareConfig(base=stg(), variants=list(DEFAULT_VARIANTS), baseline="plain", seeds=[0, 1, 2])


def stg_objectives_quick() -> CompareConfig:
    """:func:`stg_objectives` at smoke size (``stg-quick``), two seeds."""
    from attnlab.train.presets import stg_quick

    return replace(stg_objectives(), base=stg_quick(), seeds=[0, 1])


COMPARE_PRESETS: dict[str, Callable[[], CompareConfig]] = {"quick": quick, "tiny": tiny, "multi30k-scores": multi30k_scores,
                                                           "multi30k-scores-tiny": multi30k_scores_tiny,
                                                           "forecast-quick": forecast_quick,
                                                           "etth1-models": etth1_models,
                                                           "digits-masks": digits_masks,
                                                           "digits-masks-quick": digits_masks_quick,
                                                           "stg-objectives": stg_objectives,
                                                           "stg-objectives-quick": stg_objectives_quick}


def get_compare_preset(name: str) -> CompareConfig:
    """A comparison preset by name; a training preset becomes a comparison of its task's default variants
    (for language modelling the ``quick`` mechanisms), one seed."""
    if name in COMPARE_PRESETS:
        return COMPARE_PRESETS[name]()
    if name in PRESETS:
        base = PRESETS[name]()
        variants = list(getattr(base.task_class, "default_variants", QUICK_MECHANISMS))
        return CompareConfig(base=base, variants=variants, seeds=[0])
    raise ConfigError(f"unknown preset {name!r}; comparison presets: {', '.join(COMPARE_PRESETS)}; "
                      f"training presets: {', '.join(PRESETS)}")


def run_preset(name: str) -> TrainConfig:
    """The run of a training preset, or the shared base run of a comparison preset (``attnlab train --preset``)."""
    if name in PRESETS:
        return PRESETS[name]()
    if name in COMPARE_PRESETS:
        return COMPARE_PRESETS[name]().base
    raise ConfigError(f"unknown preset {name!r}; training presets: {', '.join(PRESETS)}; "
                      f"comparison presets: {', '.join(COMPARE_PRESETS)}")
