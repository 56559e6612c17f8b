"""The task interface: what the trainer needs to train, evaluate and compare a model, and nothing about models.

A task owns its model family, its data and its loss. The trainer (:mod:`attnlab.train`) only calls:

* :meth:`Task.build_model`: the model, from the task's typed model config (filled in with what the data
  decides, e.g. the vocabulary size);
* :meth:`Task.global_batch`: the rows of the **global** batch of optimizer step ``s``, a function of
  ``(seed, s)`` only, so that every rank knows the whole batch without talking to the others and a resumed run
  knows it from the step number. The trainer deals the rows out as ``[micro-step][rank][row]``;
* :meth:`Task.count_targets` and :meth:`Task.make_batch`: the number of loss targets of a set of rows and the
  device tensors of a micro-batch. The trainer weights micro-batch ``i`` by ``n_i / N`` (its share of the global
  batch's ``N`` targets), so that the update is the gradient of the mean over every target of the global batch
  whatever the split over micro-steps and ranks;
* :meth:`Task.loss`: a :class:`Loss`, the main term plus named auxiliary terms, every term logged;
* :meth:`Task.evaluate`: metrics over a whole split (:class:`~attnlab.tasks.base.EvalResult`);
* :meth:`Task.state` / ``from_state``: what a checkpoint needs to rebuild the task without its training data
  (its tokenizer), so that ``attnlab eval`` and generation work from the checkpoint alone.

A task may hold a frozen second model, :attr:`Task.teacher` (distillation): the trainer moves it to the
device, keeps it in eval mode with gradients off and never puts it in the optimizer or the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Task", "Batch", "Loss", "EvalResult", "EvalContext"]


@dataclass
class Batch:
    """One micro-batch on the device: ``inputs`` for :meth:`Task.loss` and its number of loss targets."""

    inputs: dict[str, Tensor]
    n_targets: int


@dataclass
class Loss:
    """``total = main + sum(aux.values())`` (each auxiliary term already carries its weight)."""

    main: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        out = self.main
        for v in self.aux.values():
            out = out + v
        return out

    def terms(self) -> dict[str, Tensor]:
        """Every term by name: ``main``, then the auxiliary ones."""
        return {"main": self.main, **self.aux}


@dataclass(kw_only=True)
class EvalResult:
    """Metrics over a whole split: mean loss per target in nats, its perplexity, bits per character for
    character data, and any task metrics (e.g. ``bleu``) in ``metrics``."""

    split: str
    loss: float
    tokens: int
    bits_per_char: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ppl"] = self.ppl
        return d

    def summary(self) -> str:
        """One line: the loss, perplexity or bits/char, and the task metrics."""
        s = f"{self.split} loss {self.loss:.4f}"
        s += f" ({self.bits_per_char:.4f} bpc)" if self.bits_per_char is not None else f" (ppl {self.ppl:.2f})"
        for k, v in self.metrics.items():
            s += f", {k} {v:.2f}"
        return s


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(kw_only=True)
class EvalContext:
    """How to evaluate: device, batch size, autocast dtype and the DDP layout (the task deals batches to ranks
    round-robin and all-reduces its sums)."""

    device: torch.device
    batch_size: int
    autocast_dtype: torch.dtype | None = None
    rank: int = 0
    world_size: int = 1
    progress: bool = False
    full: bool = True  # whole-split extras such as decoding for BLEU; False during training evaluations if costly

    def autocast(self) -> Any:
        return autocast(self.device, self.autocast_dtype)

    def all_reduce_sum(self, *values: Tensor) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            for v in values:
                dist.all_reduce(v)


class Task(ABC):
    """Base class of every task; see the module docstring.

    Class attributes a task sets:
        name: the registry name (``--task NAME``).
        model_config: the typed config class of its model (the run config's ``[model]`` table).
        data_config: the typed config class of its data (the ``[data]`` table).
        compare_key: the dotted config key that ``attnlab compare`` varies (``"model.attention"`` for the LM);
            ``variant_label`` says what its values are called (``"mechanism"``).
        primary_metric: ``(name, "min" | "max")``: what the leaderboard ranks by (``"loss"`` or an
            :attr:`EvalResult.metrics` key such as ``"bleu"``); ``metric_format``: the format spec its values are
            printed with in reports (``".2f"`` for BLEU points, ``".4f"`` for a mean squared error).
        loss_label: what the loss is, for reports and plots; ``loss_is_nll``: whether it is a mean negative
            log-likelihood, so that a perplexity means something (reports show one only then).
    """

    name: ClassVar[str]
    model_config: ClassVar[type]
    data_config: ClassVar[type]
    #: the typed config of the task's own options (loss, evaluation): the run config's ``[options]`` table
    options_config: ClassVar[type] = type(None)
    compare_key: ClassVar[str]
    primary_metric: ClassVar[tuple[str, str]] = ("loss", "min")
    metric_format: ClassVar[str] = ".4f"
    variant_label: ClassVar[str] = "variant"
    loss_label: ClassVar[str] = "cross-entropy (nats/token)"
    loss_is_nll: ClassVar[bool] = True
    #: the keyword of ``__init__`` that takes already loaded data (:meth:`shared_data` of another instance)
    data_argument: ClassVar[str] = "corpus"
    #: whether the task's model may be sharded with FSDP2 (``fsdp=true``): its loss and evaluation call the model
    #: only through ``forward`` (FSDP2 gathers a sharded root's parameters only there)
    supports_fsdp: ClassVar[bool] = True

    @classmethod
    def variant_overrides(cls, variant: str, options: dict[str, Any]) -> dict[str, Any]:
        """Dotted config overrides that make the base run a comparison's ``variant`` (default: set
        :attr:`compare_key` to it, plus ``options`` as further dotted overrides)."""
        return {cls.compare_key: variant, **options}

    @classmethod
    def valid_variants(cls) -> list[str] | None:
        """Every value the compared key may take, if the task knows them (``None``: checked by the config)."""
        return None

    @classmethod
    def check_config(cls, model: Any, data: Any, options: Any) -> None:
        """Refuse a run config whose parts do not fit together (each part validated itself when it was made), e.g.
        a model that cannot take the data's sizes; raise ``ValueError`` naming the keys. Called whenever a run config
        is made (:class:`attnlab.train.TrainConfig`), so a comparison checks every variant before any training.
        Default: nothing."""

    def shared_data(self) -> Any:
        """Loaded data that other runs of the same data config may reuse (passed back as ``data_argument``)."""
        return None

    def __init__(self, model: Any, data: Any, *, seed: int, progress: bool = False) -> None:
        if not isinstance(model, self.model_config):
            raise ValueError(f"model must be a {self.model_config.__name__} for task {self.name!r}, got "
                             f"{type(model).__name__}")
        if not isinstance(data, self.data_config):
            raise ValueError(f"data must be a {self.data_config.__name__} for task {self.name!r}, got "
                             f"{type(data).__name__}")
        self.model_cfg = model
        self.data_cfg = data
        self.seed = seed
        self.progress = progress
        self.teacher: nn.Module | None = None
        #: where :meth:`evaluate` may write files (:meth:`write_eval_file`); ``None``: nowhere
        self.output_dir: Path | None = None
        #: added to the names of those files (the trainer sets ``"-step<N>"``)
        self.step_label = ""
        #: every file written so far
        self.written_files: list[Path] = []
        #: (the optimizer step being made, the run's total steps): set by the trainer before each step, for
        #: schedules inside a loss (e.g. CAT's decay by epoch or by the fraction of training done)
        self.step_progress: tuple[int, int] = (0, 1)

    # ------------------------------------------------------------------------------------------- checkpoints
    def required_checkpoints(self) -> dict[str, str]:
        """Other runs this run needs, by role (e.g. ``{"teacher": "runs/t"}``): the trainer loads each
        (:func:`attnlab.train.loading.load_trained`, on the CPU) and passes them to :meth:`attach_checkpoints`
        before :meth:`build_model`. Default: none."""
        return {}

    def resume_diffs(self, saved: dict[str, Any]) -> list[str]:
        """What differs between the task state of the checkpoint being resumed (``saved``) and this task, as
        ``"key: checkpoint A vs now B"`` lines; any line refuses the resume. Default: nothing."""
        return []

    def attach_checkpoints(self, loaded: dict[str, Any]) -> None:
        """Take the runs of :meth:`required_checkpoints` (role -> :class:`attnlab.train.loading.Trained`); raise
        ``ValueError`` naming the role when one does not fit (another task or vocabulary). Default: nothing."""

    # ------------------------------------------------------------------------------------------------ model
    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model to train (parameters on the CPU, float32; the trainer moves it)."""

    def tokenizer_vocab_size(self, tokenizer: Any) -> int:
        """``tokenizer.vocab_size``, checked against an explicit ``model.vocab_size`` (which must then agree: the
        task sets it from the tokenizer)."""
        vocab = int(tokenizer.vocab_size)
        given = getattr(self.model_cfg, "vocab_size", None)
        if given is not None and given != vocab:
            raise ValueError(f"model.vocab_size={given} but the tokenizer has {vocab} tokens; leave "
                             "model.vocab_size unset (the task sets it)")
        return vocab

    # ------------------------------------------------------------------------------------------------- data
    @abstractmethod
    def global_batch(self, step: int, batch_size: int) -> Sequence[Any] | Tensor:
        """The ``batch_size`` rows of the global batch of optimizer step ``step`` (depends on ``(seed, step)``)."""

    @abstractmethod
    def count_targets(self, rows: Sequence[Any] | Tensor) -> int:
        """The number of loss targets in ``rows``."""

    @abstractmethod
    def make_batch(self, rows: Sequence[Any] | Tensor, device: torch.device) -> Batch:
        """The micro-batch of ``rows`` on ``device``."""

    def check_data(self, micro_batch: int) -> None:
        """Refuse data that cannot train this model (e.g. a split shorter than one window); default: nothing."""

    # ------------------------------------------------------------------------------------------------- loss
    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        """The loss of a micro-batch: a mean over its targets, plus named auxiliary terms."""

    # ------------------------------------------------------------------------------------------- evaluation
    @property
    def splits(self) -> tuple[str, ...]:
        """Evaluation splits this task's data has, validation first."""
        return ("val",)

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str, ctx: EvalContext) -> EvalResult:
        """Metrics over the whole ``split``."""

    def set_output_dir(self, path: str | Path | None) -> None:
        """Where :meth:`evaluate` writes its files (hypotheses, per-step errors; ``None``: nowhere)."""
        self.output_dir = Path(path) if path is not None else None

    def write_eval_file(self, stem: str, suffix: str, text: str) -> Path:
        """Write ``<stem><step_label><suffix>`` in :attr:`output_dir` and return its path; an existing file is
        never overwritten (``.1``, ``.2``, ... is added before the suffix)."""
        from attnlab._io import atomic_write_text

        if self.output_dir is None:
            raise ValueError("write_eval_file needs an output directory: call set_output_dir first")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stem += self.step_label
        path, k = self.output_dir / f"{stem}{suffix}", 1
        while path.exists():
            path, k = self.output_dir / f"{stem}.{k}{suffix}", k + 1
        atomic_write_text(path, text)
        self.written_files.append(path)
        return path

    # ------------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        """JSON-serialisable state a checkpoint keeps to rebuild this task without its training data."""
        return {}

    def describe(self) -> str:
        """One line for logs: what is trained on what."""
        return f"task {self.name}"
