"""What a comparison trains: one base run, the variants of one config key, the seeds, and the baseline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.config import ConfigError
from attnlab.train.config import TrainConfig

__all__ = ["CompareConfig"]


@dataclass(kw_only=True)
class CompareConfig:
    """Train each variant with each seed under one budget and, where the task supports it, at equal parameters.

    Attributes:
        base: the run every variant shares.
        variants: values of the task's compared key (:attr:`attnlab.tasks.Task.compare_key`): mechanism names
            for language modelling (``model.attention``), cross-attention scores for translation
            (``model.cross_score``); the first is the baseline unless ``baseline`` is given.
        seeds: one run per seed per variant.
        options: per variant, its own options (for mechanisms: the layer options, e.g.
            ``{"sliding-window": {"window": 32}}``); entries for variants not compared are dropped.
        baseline: the variant every other is compared with.

    Each variant's run config is built (and so validated: a mechanism name is resolved here, once, and the task's
    :meth:`~attnlab.tasks.Task.check_config` checks the variant's model against the data, e.g. a forecaster's
    segments against the horizon) when the comparison is made, before any run trains; :meth:`run_config` only sets
    the seed.
    """

    base: TrainConfig
    variants: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, TrainConfig):
            raise ConfigError(f"base must be a TrainConfig, got {type(self.base).__name__}")
        if not self.variants or not all(isinstance(v, str) and v for v in self.variants):
            raise ConfigError(f"variants must name at least one {self.variant_label}, got {self.variants!r}")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants has duplicates: {self.variants}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ConfigError(f"seeds must be distinct integers >= 0, at least one, got {self.seeds!r}")
        if self.baseline is None:
            self.baseline = self.variants[0]
        if self.baseline not in self.variants:
            raise ConfigError(f"baseline={self.baseline!r} is not among the variants {self.variants}")
        cls = self.base.task_class
        valid = cls.valid_variants()
        unknown = sorted(set(self.options) - set(valid)) if valid is not None else []
        if unknown:
            raise ConfigError(f"options given for {unknown}, which are not {self.variant_label}s; valid: "
                              f"{', '.join(valid)}")
        # options for valid variants that this comparison leaves out are dropped (derived presets)
        self.options = {k: v for k, v in self.options.items() if k in self.variants}
        self._runs: dict[str, TrainConfig] = {}
        for v in self.variants:  # resolve and validate each variant once, now rather than after an hour of training
            try:
                self._runs[v] = self.base.replace(**cls.variant_overrides(v, self.options.get(v, {})))
            except ConfigError as e:
                raise ConfigError(f"{self.variant_label} {v!r}: {e}") from None

    @property
    def task_class(self) -> Any:
        return self.base.task_class

    @property
    def key(self) -> str:
        """The dotted config key the variants set."""
        return self.task_class.compare_key

    @property
    def variant_label(self) -> str:
        """What a variant is called in reports (``mechanism``, ``cross score``)."""
        return getattr(self.base.task_class, "variant_label", "variant")

    @property
    def primary_metric(self) -> tuple[str, str]:
        return self.task_class.primary_metric

    def run_config(self, variant: str, seed: int) -> TrainConfig:
        """The config of one run (the variant's resolved config with ``seed``)."""
        return dataclasses.replace(self._runs[variant], seed=seed)

    def run_dir(self, out_dir: Path, variant: str, seed: int) -> Path:
        return Path(out_dir) / "runs" / variant / f"seed{seed}"

    def describe(self, targets_per_run: int) -> str:
        """The leaderboard's introduction: what each run trained and how the table is computed."""
        b = self.base
        m = b.model
        arch = ", ".join(f"{k.replace('_', ' ')} {getattr(m, k)}" for k in ("n_layers", "n_encoder_layers",
                         "n_decoder_layers", "d_model", "n_heads") if hasattr(m, k))
        parity = getattr(m, "parity", None)
        metric = self.primary_metric[0]
        budgets = {v: (self._runs[v].steps, self._runs[v].batch_size) for v in self.variants}
        if len(set(budgets.values())) == 1:
            budget = (f"Each {self.variant_label} (`{self.key}`) trained {b.steps} steps x {b.batch_size} rows "
                      f"= {targets_per_run:,} target tokens per run")
        else:  # (variants with their own budgets, e.g. a linear baseline and attention models)
            budget = (f"Each {self.variant_label} (`{self.key}`) trained its own budget: "
                      + ", ".join(f"`{v}` {s:,} steps x {n} rows" for v, (s, n) in budgets.items()))
        return (
            f"Task `{b.task}`. {budget}"
            + (f" on `{b.data.source}`" if getattr(b.data, "source", None) else "") + ", seeds "
            + f"{', '.join(map(str, self.seeds))}" + (f"; {arch}" if arch else "")
            + ("" if parity is None else f" (parity {'on' if parity else 'off'})")
            + f". Validation loss is the mean {self.task_class.loss_label} over the whole validation split"
            + ("" if metric == "loss" else f"; the verdict compares {metric} over the whole split")
            + f". Baseline: `{self.baseline}`."
        )

    def to_dict(self) -> dict[str, Any]:
        from attnlab.config import to_dict

        return {"task": self.base.task, "key": self.key, "variants": self.variants, "seeds": self.seeds,
                "baseline": self.baseline, "options": self.options, "base": to_dict(self.base)}
