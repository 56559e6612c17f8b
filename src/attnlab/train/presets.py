"""Named, tested presets: training runs (:class:`TrainConfig`) and comparisons (:class:`CompareConfig`).

Each preset is a plain function; presets derive from each other with :func:`dataclasses.replace`.

Training presets (``attnlab train --preset NAME``):

* ``shakespeare-char``: nanoGPT's ``train_shakespeare_char.py`` (6 layers, 6 heads, 384 dims, block 256,
  batch 64, lr 1e-3 -> 1e-4 over 5000 iterations, warmup 100, beta2 0.99, dropout 0.2); nanoGPT reports a best
  validation loss of 1.4697 (its model is a GPT-2 block with learned positions; ours is LLaMA-style:
  RMSNorm, SwiGLU, RoPE).
* ``shakespeare-char-cpu``: nanoGPT's CPU settings (4 layers, 4 heads, 128 dims, block 64, batch 12, 2000
  iterations, dropout 0); nanoGPT reports about 1.88.
* ``wikitext2``: word-level WikiText-2 (33,278 words), reporting test perplexity (reference points: a 2-layer
  650-unit LSTM about 87, AWD-LSTM 65.6).
* ``castle-s``: the CASTLE paper's S size (12 layers, d_model 896, 14 heads of 64 for the baseline, 8 for
  CASTLE by parameter parity, sequence 2048), for a GPU. The data default is WikiText-2 in GPT-2 tokens, far
  less than the paper's pre-training data: point ``data.source`` at a larger text file for a real run.

Comparison presets (``attnlab compare --preset NAME``):

* ``quick``: the CPU demo — standard, castle, castle-swl, sliding-window and linear on Tiny Shakespeare
  (characters) with tiny models; sized to finish within 10 minutes on a 2-core CPU.
* ``tiny``: a seconds-long smoke comparison for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from attnlab.train.config import ConfigError, DataSection, ModelSection, OptimSection, TrainConfig

__all__ = [
    "CompareConfig",
    "PRESETS",
    "COMPARE_PRESETS",
    "get_preset",
    "get_compare_preset",
    "shakespeare_char",
    "shakespeare_char_cpu",
    "wikitext2",
    "castle_s",
    "quick",
    "tiny",
]


@dataclass(kw_only=True)
class CompareConfig:
    """Train each mechanism with each seed under one token budget and at equal parameters.

    Attributes:
        base: the run every mechanism shares (its ``model.attention`` is replaced per run; ``model.parity``
            should stay on so that head counts give equal attention parameters).
        mechanisms: registry names; the first is the baseline unless ``baseline`` is given.
        seeds: one run per seed per mechanism.
        options: layer options per mechanism (e.g. ``{"sliding-window": {"window": 32}}``); entries for
            mechanisms not in ``mechanisms`` are dropped.
        baseline: the mechanism every other is compared with.
    """

    base: TrainConfig
    mechanisms: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None

    def __post_init__(self) -> None:
        if not self.mechanisms:
            raise ConfigError("mechanisms must name at least one mechanism")
        if len(set(self.mechanisms)) != len(self.mechanisms):
            raise ConfigError(f"mechanisms has duplicates: {self.mechanisms}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.baseline is None:
            self.baseline = self.mechanisms[0]
        if self.baseline not in self.mechanisms:
            raise ConfigError(f"baseline={self.baseline!r} is not among mechanisms {self.mechanisms}")
        from attnlab.layers import registry

        unknown = sorted(set(self.options) - set(registry.names()))
        if unknown:
            raise ConfigError(f"options given for {unknown}, which are not registered mechanisms")
        # options for registered mechanisms that this comparison leaves out are dropped (derived presets)
        self.options = {k: v for k, v in self.options.items() if k in self.mechanisms}
        for m in self.mechanisms:  # fail now, not after an hour of training
            self.run_config(m, self.seeds[0])

    def run_config(self, mechanism: str, seed: int) -> TrainConfig:
        """The config of one run."""
        opts = {mechanism: dict(self.options[mechanism])} if mechanism in self.options else {}
        model = replace(self.base.model, attention=mechanism, schedule="uniform", attention_options=opts)
        return replace(self.base, model=model, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# Training presets


def shakespeare_char() -> TrainConfig:
    """nanoGPT ``shakespeare_char`` (published best val loss 1.4697 after 5000 iterations on one A100)."""
    return TrainConfig(
        model=ModelSection(n_layers=6, n_heads=6, d_model=384, block_size=256, dropout=0.2),
        data=DataSection(source="tinyshakespeare", tokenizer="char"),
        optim=OptimSection(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, warmup_steps=100, min_lr_ratio=0.1,
                           grad_clip=1.0),
        steps=5000, batch_size=64, eval_interval=250, log_interval=10,
    )


def shakespeare_char_cpu() -> TrainConfig:
    """nanoGPT's CPU variant of ``shakespeare_char`` (published val loss about 1.88)."""
    base = shakespeare_char()
    return replace(
        base,
        model=replace(base.model, n_layers=4, n_heads=4, d_model=128, block_size=64, dropout=0.0),
        steps=2000, batch_size=12, eval_interval=250,
    )


def wikitext2() -> TrainConfig:
    """Word-level WikiText-2; the final report includes test perplexity."""
    base = shakespeare_char()
    return replace(
        base,
        model=ModelSection(n_layers=4, n_heads=4, d_model=256, block_size=128, dropout=0.3),
        data=DataSection(source="wikitext2", tokenizer="word"),
        optim=replace(base.optim, lr=1e-3, betas=(0.9, 0.95), warmup_steps=200),
        steps=6000, batch_size=32, eval_interval=500,
    )


def castle_s() -> TrainConfig:
    """The CASTLE paper's S configuration (about 160M parameters with the GPT-2 vocabulary), for a GPU."""
    base = wikitext2()
    return replace(
        base,
        model=ModelSection(n_layers=12, d_model=896, n_heads=14, head_dim=64, block_size=2048, dropout=0.0,
                           parity=True),
        data=DataSection(source="wikitext2", tokenizer="gpt2"),
        optim=OptimSection(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=200, min_lr_ratio=0.1),
        steps=2000, batch_size=32, grad_accum=4, eval_interval=250, eval_batch_size=4, precision="auto",
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "shakespeare-char": shakespeare_char,
    "shakespeare-char-cpu": shakespeare_char_cpu,
    "wikitext2": wikitext2,
    "castle-s": castle_s,
}


# ---------------------------------------------------------------------------------------------------------------
# Comparison presets

QUICK_MECHANISMS = ["standard", "castle", "castle-swl", "sliding-window", "linear"]


def quick() -> CompareConfig:
    """The CPU demo: five mechanisms, tiny LLaMA-style models on Tiny Shakespeare characters.

    2 layers, d_model 64, 4 heads (CASTLE: 2 by parity), block 128, 16 sequences per step, 500 steps (1.0M
    training tokens, about one epoch), two seeds; windows of 32 for the windowed mechanisms; one CPU thread.
    Measured cost: about 140 CPU-seconds per seed for all five mechanisms (one thread, this project's dev machine).
    """
    base = shakespeare_char_cpu()
    cfg = replace(
        base,
        model=replace(base.model, n_layers=2, d_model=64, n_heads=4, block_size=128, dropout=0.0),
        optim=replace(base.optim, lr=3e-3, warmup_steps=50),
        steps=500, batch_size=16, eval_interval=100, log_interval=10, keep_checkpoints=1,
        device="cpu", tensorboard=False, threads=1,
    )
    return CompareConfig(
        base=cfg, mechanisms=list(QUICK_MECHANISMS), seeds=[0, 1],
        options={"sliding-window": {"window": 32}, "castle-swl": {"window": 32}},
    )


def tiny() -> CompareConfig:
    """A smoke comparison (seconds): the ``quick`` mechanisms, 1-layer 16-dim models, 6 steps, 2 seeds."""
    q = quick()
    cfg = replace(
        q.base,
        model=replace(q.base.model, n_layers=1, d_model=16, n_heads=2, block_size=16),
        steps=6, batch_size=4, eval_interval=3, log_interval=1, progress=False,
    )
    return CompareConfig(base=cfg, mechanisms=list(QUICK_MECHANISMS), seeds=[0, 1],
                         options={"sliding-window": {"window": 4}, "castle-swl": {"window": 4}})


COMPARE_PRESETS: dict[str, Callable[[], CompareConfig]] = {"quick": quick, "tiny": tiny}


def get_preset(name: str) -> TrainConfig:
    """A training preset by name (comparison presets give their shared base run)."""
    if name in PRESETS:
        return PRESETS[name]()
    if name in COMPARE_PRESETS:
        return COMPARE_PRESETS[name]().base
    raise ConfigError(f"unknown preset {name!r}; training presets: {', '.join(PRESETS)}; "
                      f"comparison presets: {', '.join(COMPARE_PRESETS)}")


def get_compare_preset(name: str) -> CompareConfig:
    """A comparison preset by name; a training preset becomes a comparison of the ``quick`` mechanisms."""
    if name in COMPARE_PRESETS:
        return COMPARE_PRESETS[name]()
    if name in PRESETS:
        return CompareConfig(base=PRESETS[name](), mechanisms=list(QUICK_MECHANISMS), seeds=[0])
    raise ConfigError(f"unknown preset {name!r}; comparison presets: {', '.join(COMPARE_PRESETS)}; "
                      f"training presets: {', '.join(PRESETS)}")
