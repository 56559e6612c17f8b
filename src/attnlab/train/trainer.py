"""The training loop: one readable function's worth of steps, with evaluation, checkpoints and metrics.

Per optimizer step ``s``:

1. set the learning rate from :func:`~attnlab.train.schedule.lr_at` (warmup, cosine to 10% of peak);
2. for each of ``grad_accum`` micro-steps: read this rank's rows of the global batch of step ``s``
   (:mod:`attnlab.train.distributed`), forward under autocast, ``backward(loss / grad_accum)`` (DDP gradient
   sync only on the last micro-step);
3. clip the gradient norm, ``optimizer.step()``, ``zero_grad``;
4. every ``log_interval`` steps log the training loss; every ``eval_interval`` steps (and at the end) evaluate
   on the *whole* validation split; checkpoint at each evaluation (or every ``checkpoint_interval``).

Determinism: initialisation is seeded by ``seed``; the data of step ``s`` depends on ``(seed, s)`` only; the
dropout RNG state (under DDP: every rank's) is saved in each checkpoint. Resuming from the checkpoint of step
``k`` with the same number of processes therefore continues exactly as if the run had never stopped (tested
bitwise on CPU, single-process and with 2 gloo processes); with another world size only rank 0's dropout stream
continues.

Time is split into model compute (forward, backward, optimizer step; on CUDA measured after a synchronize)
and everything else in the training steps (data, logging, schedule, progress bar): ``overhead_fraction`` is
the latter over the training-step time. Evaluation and checkpoint time are reported apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from attnlab.train import checkpoint as ckpt
from attnlab.train import distributed as ddp
from attnlab.train.config import ConfigError, TrainConfig, config_to_dict
from attnlab.train.metrics import EvalResult, MetricsWriter, PeakMemory
from attnlab.train.schedule import lr_at, make_optimizer

__all__ = ["Trainer", "TrainResult", "evaluate", "build_model", "resolve_device", "train"]


@dataclass(kw_only=True)
class TrainResult:
    """What a run produced (on every rank; only rank 0's files exist)."""

    steps: int
    tokens: int
    n_params: int
    val: EvalResult | None
    test: EvalResult | None = None
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    train_time_s: float = 0.0
    compute_time_s: float = 0.0
    eval_time_s: float = 0.0
    checkpoint_time_s: float = 0.0
    overhead_fraction: float = 0.0
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["val"] = self.val.to_dict() if self.val else None
        d["test"] = self.test.to_dict() if self.test else None
        return d


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available on this machine")
    return dev


def build_model(model_cfg: Any, vocab_size: int) -> nn.Module:
    """The :class:`attnlab.models.LM` of a config's model section."""
    from attnlab.models import LM

    return LM(model_cfg.lm_config(vocab_size))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: np.ndarray,
    *,
    split: str,
    block_size: int,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    char_level: bool = False,
    dist_info: ddp.DistInfo | None = None,
) -> EvalResult:
    """Mean next-token cross-entropy over the whole ``tokens`` split: every token but the first is a target
    exactly once (non-overlapping windows of :func:`attnlab.data.iterate_eval_batches`).

    Under DDP the batches are dealt round-robin to the ranks and the sums all-reduced. For character-level
    data ``bits_per_char = loss / ln 2``.
    """
    info = dist_info or ddp.DistInfo()
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    from attnlab.data import iterate_eval_batches

    for i, (x, y) in enumerate(iterate_eval_batches(tokens, batch_size, block_size)):
        if i % info.world_size != info.rank:
            continue
        x, y = x.to(device), y.to(device)
        with _autocast(device, autocast_dtype):
            logits, _ = model(x, targets=y)
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        total += ce.double()
        count += y.numel()
    if info.enabled:
        torch_dist.all_reduce(total)
        torch_dist.all_reduce(count)
    model.train(was_training)
    loss = float(total / count)
    return EvalResult(split=split, loss=loss, tokens=int(count), bits_per_char=loss / math.log(2) if char_level else None)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str) -> list[str]:
    return [f"{prefix}{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Trainer:
    """Train a language model as described by a :class:`TrainConfig`.

    Args:
        config: the run.
        out_dir: where checkpoints, metrics and ``result.json`` go (``None``: nothing is written).
        corpus: an :class:`attnlab.data.Corpus` (default: ``load_corpus`` of ``config.data``).
        model: a model to train instead of building ``LM(config.model)`` (tests).
        resume: continue from the newest checkpoint in ``out_dir`` if there is one.
        log: where one-line messages go (rank 0 only).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        corpus: Any = None,
        model: nn.Module | None = None,
        resume: bool = False,
        log: Callable[[str], None] | None = print,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.dist = ddp.init(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.log = (log if self.dist.is_main else None) or (lambda s: None)
        if not resume and self.out_dir is not None and self.dist.is_main:
            self._refuse_used_out_dir(self.out_dir)
        self.micro = config.micro_batch_size(self.dist.world_size)

        if corpus is None:
            from attnlab.data import load_corpus

            d = config.data
            corpus = load_corpus(d.source, tokenizer=d.tokenizer, cache_dir=d.cache_dir,
                                 val_fraction=d.val_fraction, progress=config.progress and self.dist.is_main)
        self.corpus = corpus
        self._check_data()

        # Precision.
        self.param_dtype = torch.float64 if config.precision == "float64" else torch.float32
        if config.precision == "bfloat16" or (config.precision == "auto" and self.device.type == "cuda"
                                                and torch.cuda.is_bf16_supported()):
            self.autocast_dtype: torch.dtype | None = torch.bfloat16
        else:
            self.autocast_dtype = None

        torch.manual_seed(config.seed)
        self.model = model if model is not None else build_model(config.model, corpus.vocab_size)
        self.model.to(device=self.device, dtype=self.param_dtype)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        o = config.optim
        self.optimizer = make_optimizer(self.model, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        # Dropout draws from the global RNG: a per-rank stream derived from the seed.
        torch.manual_seed(config.seed + 7919 * (self.dist.rank + 1))

        self.step = 0
        self.tokens_seen = 0
        self.resumed_from: int | None = None
        if resume and self.out_dir is not None and ckpt.latest_checkpoint(self.out_dir) is not None:
            self._resume(ckpt.latest_checkpoint(self.out_dir))  # type: ignore[arg-type]

        # DDP first, then compile the wrapper (the order PyTorch supports: DDPOptimizer splits the graph at
        # gradient buckets). ``self.ddp`` keeps the wrapper for ``no_sync``.
        self.forward_model: nn.Module = self.model
        self.ddp: nn.Module | None = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            self.forward_model = self.ddp
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)  # type: ignore[assignment]
        self.metrics = MetricsWriter(self.out_dir, enabled=self.dist.is_main, tensorboard=config.tensorboard)
        if resume:  # forget records written after the checkpoint we continue from (all, if there was none)
            self.metrics.truncate_after(self.resumed_from or 0)

    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _refuse_used_out_dir(out: Path) -> None:
        """Without ``resume``, a directory holding a run's results (checkpoints, metrics, ``result.json``) is an
        error: training into it would replace its checkpoints and mix two runs' metrics."""
        if not out.is_dir():
            return
        found = sorted(p.name for p in out.iterdir()
                       if p.name.startswith(ckpt._PREFIX) or p.name in ("metrics.jsonl", "metrics.csv", "result.json"))
        if found:
            from attnlab.train.outdir import OutputDirError

            raise OutputDirError(
                f"output directory {str(out)!r} already holds results ({', '.join(found[:4])}"
                f"{', ...' if len(found) > 4 else ''}); pass resume=True (--resume) to continue them, or use another "
                "directory (--force moves it aside)"
            )

    def _check_data(self) -> None:
        T = self.config.model.block_size
        c = self.corpus
        if len(c.train) < T + 2:
            raise ConfigError(
                f"model.block_size={T} is longer than the training split ({len(c.train)} tokens of "
                f"{getattr(c, 'name', 'the corpus')}); it needs at least block_size + 2 tokens"
            )
        for split in ("val", "test"):
            toks = getattr(c, split, None)
            if toks is not None and len(toks) < T + 1:
                raise ConfigError(
                    f"model.block_size={T} is longer than the {split} split ({len(toks)} tokens of "
                    f"{getattr(c, 'name', 'the corpus')}); use a smaller block_size or a larger data.val_fraction"
                )

    @property
    def char_level(self) -> bool:
        tok = getattr(self.corpus, "tokenizer", None)
        return getattr(tok, "name", None) == "char"

    def _state(self, rng_ranks: list[Any] | None = None) -> dict[str, Any]:
        tok = getattr(self.corpus, "tokenizer", None)
        return {
            "config": config_to_dict(self.config),
            "vocab_size": int(self.corpus.vocab_size),
            "tokenizer": tok.to_dict() if tok is not None and hasattr(tok, "to_dict") else None,
            "corpus": getattr(self.corpus, "name", None),
            "tokens_seen": self.tokens_seen,
            "lr": self.optimizer.param_groups[0]["lr"],
            "world_size": self.dist.world_size,
            "rng": ckpt.rng_state(),
            # under DDP every rank's dropout stream (index = rank), so that each rank resumes its own exactly
            "rng_ranks": rng_ranks,
            "data": {"order": "per-step seeded global batch (attnlab.train.distributed.batch_offsets)",
                     "seed": self.config.seed, "next_step": self.step},
            "n_params": self.n_params,
        }

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank waits for it)."""
        path = None
        rng_ranks = None
        if self.dist.enabled and self.out_dir is not None:  # every rank's RNG state goes into rank 0's checkpoint
            rng_ranks = [None] * self.dist.world_size
            torch_dist.all_gather_object(rng_ranks, ckpt.rng_state())
        if self.dist.is_main and self.out_dir is not None:
            path = ckpt.save_checkpoint(self.out_dir, step=self.step, model=self.model, optimizer=self.optimizer,
                                        state=self._state(rng_ranks), keep=self.config.keep_checkpoints)
        if self.dist.enabled:
            torch_dist.barrier()
        return path

    def _resume(self, path: Path) -> None:
        state = ckpt.read_state(path)
        saved = state.get("config", {})
        now = config_to_dict(self.config)
        diffs = _config_diff(saved.get("model", {}), now["model"], "model.") + _config_diff(
            saved.get("data", {}), now["data"], "data.")
        for k in ("seed", "batch_size"):
            if saved.get(k) != now[k]:
                diffs.append(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}")
        if diffs:
            raise ckpt.CheckpointError(f"cannot resume from {str(path)!r}: the configuration differs: " + "; ".join(diffs))
        if state.get("vocab_size") != self.corpus.vocab_size:
            raise ckpt.CheckpointError(
                f"cannot resume from {str(path)!r}: vocab_size {state.get('vocab_size')} vs {self.corpus.vocab_size}")
        ckpt.load_model_weights(path, self.model)
        ckpt.load_optimizer(path, self.optimizer, state)
        ranks = state.get("rng_ranks")
        if self.dist.enabled and isinstance(ranks, list) and len(ranks) == self.dist.world_size:
            ckpt.set_rng_state(ranks[self.dist.rank])  # each rank continues its own dropout stream exactly
        elif self.dist.rank == 0:
            ckpt.set_rng_state(state["rng"])
        else:  # a checkpoint of another world size: rank 0's stream is restored, the others restart
            torch.manual_seed(self.config.seed + 7919 * (self.dist.rank + 1) + state["step"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.resumed_from = self.step
        self.log(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------------------------------------------------

    def evaluate(self, split: str = "val") -> EvalResult:
        tokens = getattr(self.corpus, split)
        if tokens is None:
            raise ValueError(f"the corpus has no {split!r} split")
        bs = self.config.eval_batch_size or self.micro
        return evaluate(self.model, tokens, split=split, block_size=self.config.model.block_size, batch_size=bs,
                        device=self.device, autocast_dtype=self.autocast_dtype, char_level=self.char_level,
                        dist_info=self.dist)

    def _batch(self, offsets: torch.Tensor, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = ddp.rank_rows(offsets, micro_step=micro_step, rank=self.dist.rank,
                             world_size=self.dist.world_size, micro=self.micro)
        x, y = ddp.gather_windows(self.corpus.train, rows, self.config.model.block_size)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fit(self) -> TrainResult:
        """Train to ``config.steps``; evaluate on the whole validation (and test) split at the end."""
        cfg = self.config
        T = cfg.model.block_size
        A = cfg.grad_accum
        train_losses: list[tuple[int, float]] = []
        eval_history: list[tuple[int, float]] = []
        compute_s = eval_s = ckpt_s = 0.0
        ckpt_every = cfg.checkpoint_interval or cfg.eval_interval
        last_val: EvalResult | None = None
        pending: list[tuple[int, torch.Tensor]] = []
        start_step = self.step
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        ema_tps = None
        self.model.train()
        wall0 = time.perf_counter()
        with PeakMemory(self.device) as mem:
            while self.step < cfg.steps:
                s = self.step
                t_step = time.perf_counter()
                lr = lr_at(s, peak=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                           total_steps=cfg.optim.decay_steps or cfg.steps, min_ratio=cfg.optim.min_lr_ratio)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                offsets = ddp.batch_offsets(s, seed=cfg.seed, n_tokens=len(self.corpus.train), block_size=T,
                                            batch_size=cfg.batch_size)
                loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
                data_s = 0.0
                for m in range(A):
                    t0 = time.perf_counter()
                    x, y = self._batch(offsets, m)
                    data_s += time.perf_counter() - t0
                    sync_ctx = (self.ddp.no_sync() if self.ddp is not None and m < A - 1  # type: ignore[operator]
                                else contextlib.nullcontext())
                    with sync_ctx:
                        with _autocast(self.device, self.autocast_dtype):
                            _, loss = self.forward_model(x, targets=y)
                        (loss / A).backward()
                    loss_sum += loss.detach().double()
                grad_norm = None
                if cfg.optim.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self._sync()
                compute_s += time.perf_counter() - t_step - data_s
                self.step += 1
                self.tokens_seen += cfg.batch_size * T
                pending.append((self.step, loss_sum / A))

                step_time = time.perf_counter() - t_step
                tps = cfg.batch_size * T / max(step_time, 1e-9)
                ema_tps = tps if ema_tps is None else 0.9 * ema_tps + 0.1 * tps
                if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                    losses = torch.stack([l for _, l in pending])
                    if self.dist.enabled:
                        torch_dist.all_reduce(losses)
                        losses /= self.dist.world_size
                    vals = losses.tolist()
                    train_losses.extend((st, v) for (st, _), v in zip(pending, vals))
                    pending.clear()
                    rec = {"kind": "train", "step": self.step, "tokens": self.tokens_seen, "loss": vals[-1],
                           "lr": lr, "tokens_per_s": ema_tps, "elapsed_s": time.perf_counter() - wall0}
                    if grad_norm is not None:
                        rec["grad_norm"] = float(grad_norm)
                    self.metrics.log(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{vals[-1]:.4f}", tok_s=f"{ema_tps:,.0f}", refresh=False)
                if bar is not None:
                    bar.update(1)

                at_end = self.step == cfg.steps
                if self.step % cfg.eval_interval == 0 or at_end:
                    t0 = time.perf_counter()
                    last_val = self.evaluate("val")
                    eval_s += time.perf_counter() - t0
                    eval_history.append((self.step, last_val.loss))
                    rec = {"kind": "eval", "step": self.step, "tokens": self.tokens_seen, "split": "val",
                           "loss": last_val.loss, "ppl": last_val.ppl, "bpc": last_val.bits_per_char,
                           "elapsed_s": time.perf_counter() - wall0}
                    self.metrics.log(rec)
                    if bar is not None:
                        bar.write(f"step {self.step}: val loss {last_val.loss:.4f}"
                                  + (f" ({last_val.bits_per_char:.4f} bpc)" if last_val.bits_per_char else
                                     f" (ppl {last_val.ppl:.2f})"))
                if self.step % ckpt_every == 0 or at_end:
                    t0 = time.perf_counter()
                    self.save()
                    ckpt_s += time.perf_counter() - t0
        wall = time.perf_counter() - wall0
        if bar is not None:
            bar.close()
        if last_val is None:  # nothing left to train (resumed a finished run): evaluate anyway
            t0 = time.perf_counter()
            last_val = self.evaluate("val")
            eval_s += time.perf_counter() - t0
        test = None
        if getattr(self.corpus, "test", None) is not None:
            t0 = time.perf_counter()
            test = self.evaluate("test")
            eval_s += time.perf_counter() - t0
        train_time = wall - eval_s - ckpt_s
        steps_run = self.step - start_step
        result = TrainResult(
            steps=self.step, tokens=self.tokens_seen, n_params=self.n_params, val=last_val, test=test,
            train_losses=train_losses, eval_history=eval_history,
            tokens_per_s=steps_run * cfg.batch_size * T / train_time if steps_run and train_time > 0 else 0.0,
            wall_s=wall, train_time_s=train_time, compute_time_s=compute_s, eval_time_s=eval_s,
            checkpoint_time_s=ckpt_s,
            overhead_fraction=max(0.0, 1.0 - compute_s / train_time) if train_time > 0 and steps_run else 0.0,
            peak_memory_bytes=mem.peak_bytes, memory_kind=mem.kind, resumed_from=self.resumed_from,
        )
        if test is not None:
            self.metrics.log({"kind": "eval", "step": self.step, "tokens": self.tokens_seen, "split": "test",
                              "loss": test.loss, "ppl": test.ppl, "bpc": test.bits_per_char})
        self.metrics.close()
        if self.dist.is_main and self.out_dir is not None:
            import json

            from attnlab.train.outdir import atomic_write_text

            d = result.to_dict()
            d.pop("train_losses")
            atomic_write_text(self.out_dir / "result.json", json.dumps(d, indent=1))  # "finished" marker
        msg = f"done: {self.step} steps, val loss {last_val.loss:.4f}"
        msg += f", {last_val.bits_per_char:.4f} bpc" if last_val.bits_per_char else f", ppl {last_val.ppl:.2f}"
        if test is not None:
            msg += f"; test loss {test.loss:.4f}, ppl {test.ppl:.2f}"
        msg += f"; {result.tokens_per_s:,.0f} tok/s, trainer overhead {100 * result.overhead_fraction:.1f}%"
        self.log(msg)
        return result


def train(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """``Trainer(config, **kwargs).fit()``."""
    return Trainer(config, **kwargs).fit()
