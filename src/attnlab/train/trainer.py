"""The training loop over a task: one readable function's worth of steps, with evaluation, checkpoints and metrics.

The trainer knows tasks (:class:`attnlab.tasks.Task`), not models. Per optimizer step ``s``:

1. set the learning rate from :func:`~attnlab.train.schedule.lr_at` (warmup, cosine to ``min_lr_ratio``);
2. ask the task for the rows of the global batch of step ``s`` (a function of ``(seed, s)``) and their number of
   loss targets ``N``; deal the rows out as ``[micro-step][rank][row]`` (:func:`~attnlab.train.distributed.rank_rows`);
3. for each of ``grad_accum`` micro-steps: the task's micro-batch and :class:`~attnlab.tasks.Loss`, forward under
   autocast, ``backward(total * world_size * n_i / N)`` where ``n_i`` is the micro-batch's number of targets (DDP
   averages gradients over ranks, so the update is the gradient of the mean over all ``N`` targets, the same for
   any split over micro-steps and ranks; DDP gradient sync only on the last micro-step; ``fsdp=True`` shards the
   model with FSDP2 instead, :mod:`attnlab.train.fsdp`);
4. clip the gradient norm, ``optimizer.step()``, ``zero_grad``;
5. every ``log_interval`` steps log the loss terms; every ``eval_interval`` steps (and at the end) evaluate on the
   *whole* validation split; checkpoint at each evaluation (or every ``checkpoint_interval``).

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
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as torch_dist
from torch import nn

from attnlab.tasks import EvalContext, EvalResult, Task
from attnlab.tasks.base import autocast
from attnlab.train import checkpoint as ckpt
from attnlab.train import distributed as ddp
from attnlab.train.config import ConfigError, TrainConfig, config_diff, config_to_dict, upgrade_config_dict
from attnlab.train.distributed import resolve_device
from attnlab.train.fsdp import Sharding, plain_tensor
from attnlab.train.loading import load_required_checkpoints
from attnlab.train.metrics import MetricsWriter, PeakMemory
from attnlab.train.outdir import refuse_used_out_dir, run_lock
from attnlab.train.schedule import lr_at, make_optimizer

__all__ = ["Trainer", "TrainResult", "NonFiniteError", "make_task", "resolve_device", "train"]


class NonFiniteError(RuntimeError):
    """A training step produced a non-finite loss or gradient norm (and ``skip_nonfinite`` is off)."""


@dataclass(kw_only=True)
class TrainResult:
    """What a run produced (on every rank; only rank 0's files exist). ``tokens`` counts loss targets.

    ``steps``, ``tokens`` and ``run_wall_s`` cover the whole run across resumes (``run_wall_s``: the wall time of
    every segment up to its last checkpoint, plus this one); ``wall_s`` and the other times, and
    ``tokens_per_s``, describe this process's segment only.
    """

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
    skipped_steps: int = 0
    run_wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["val"] = self.val.to_dict() if self.val else None
        d["test"] = self.test.to_dict() if self.test else None
        return d


def make_task(config: TrainConfig, *, data: Any = None, progress: bool = False) -> Task:
    """The task of a run config (``data``: already loaded data for it, e.g. a Corpus for ``"lm"``)."""
    cls = config.task_class
    kwargs: dict[str, Any] = {"progress": progress}
    if data is not None:
        kwargs[getattr(cls, "data_argument", "corpus")] = data
    return cls(config.model, config.data, seed=config.seed, options=config.options, **kwargs)


class Trainer:
    """Train the model of a task as described by a :class:`TrainConfig`.

    Args:
        config: the run.
        out_dir: where checkpoints, metrics and ``result.json`` go (``None``: nothing is written).
        task: the task to train (default: ``make_task(config, data=data)``).
        data: already loaded data for the default task (e.g. an :class:`attnlab.data.Corpus` for ``"lm"``).
        model: a model to train instead of ``task.build_model()`` (tests).
        resume: continue from the newest checkpoint in ``out_dir`` if there is one.
        log: where one-line messages go (rank 0 only).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        task: Task | None = None,
        data: Any = None,
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
        self._lock = None
        if self.out_dir is not None and self.dist.is_main:  # one run per output directory
            self._lock = run_lock(self.out_dir).acquire()
            if self._lock.took_over:
                self.log(f"took over the lock of {self.out_dir} left by a run that ended without releasing it "
                         f"({self._lock.took_over})")
        try:
            self._setup(config, task=task, data=data, model=model, resume=resume)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the output directory (done at the end of :meth:`fit`; call it if you never fit)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _setup(self, config: TrainConfig, *, task: Task | None, data: Any, model: nn.Module | None,
               resume: bool) -> None:
        if not resume and self.out_dir is not None and self.dist.is_main:
            refuse_used_out_dir(self.out_dir)
        self.micro = config.micro_batch_size(self.dist.world_size)

        self.task = task if task is not None else make_task(config, data=data,
                                                             progress=config.progress and self.dist.is_main)
        try:
            self.task.check_data(self.micro)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        load_required_checkpoints(self.task)  # e.g. a frozen teacher, before the model is built

        # Precision.
        self.param_dtype = torch.float64 if config.precision == "float64" else torch.float32
        if config.precision == "bfloat16" or (config.precision == "auto" and self.device.type == "cuda"
                                                and torch.cuda.is_bf16_supported()):
            self.autocast_dtype: torch.dtype | None = torch.bfloat16
        else:
            self.autocast_dtype = None

        o = config.optim
        opt = functools.partial(make_optimizer, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        torch.manual_seed(config.seed)
        self.sharding: Sharding | None = None
        if config.fsdp and self.dist.enabled:  # built and sharded without a whole model on the device (fsdp.py)
            self.sharding = Sharding.build(model if model is not None else self.task.build_model,
                                           is_main=self.dist.is_main, device=self.device, dtype=self.param_dtype,
                                           make_optimizer=opt)
            self.model = self.sharding.model
        else:
            self.model = model if model is not None else self.task.build_model()
            self.model.to(device=self.device, dtype=self.param_dtype)
        if self.task.teacher is not None:  # frozen: never trained, never checkpointed
            self.task.teacher.to(device=self.device, dtype=self.param_dtype).eval().requires_grad_(False)
        self.n_params = sum(p.numel() for p in self.model.parameters())  # (a DTensor's numel is the global one)
        self.optimizer = opt(self.model)  # (after sharding: FSDP2 replaces the parameters)
        # Dropout draws from the global RNG: a per-rank stream derived from the seed.
        torch.manual_seed(config.seed + 7919 * (self.dist.rank + 1))

        self.step = 0
        self.tokens_seen = 0
        self.skipped_steps = 0  # non-finite steps skipped (skip_nonfinite)
        self.elapsed_before = 0.0  # wall time of earlier segments of this run, up to the checkpoint resumed from
        self._wall0: float | None = None  # when this segment's training loop started
        self.last_saved: int | None = None
        self.resumed_from: int | None = None
        latest = ckpt.latest_checkpoint(self.out_dir) if resume and self.out_dir is not None else None
        if latest is not None:  # (a damaged newest checkpoint is an error, never a silent restart)
            self._resume(latest)
        if self.sharding is not None and config.fsdp_checkpoint == "sharded":
            self.sharding.release_template()  # rank 0's CPU copy of the model: only full checkpoints need it

        # DDP first, then compile the wrapper (the order PyTorch supports: DDPOptimizer splits the graph at
        # gradient buckets). ``self.ddp`` keeps the wrapper for ``no_sync``.
        self.forward_model: nn.Module = self.model
        self.ddp: nn.Module | None = None
        if self.dist.enabled and self.sharding is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            self.forward_model = self.ddp
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)  # type: ignore[assignment]
        self.metrics = MetricsWriter(self.out_dir, enabled=self.dist.is_main, tensorboard=config.tensorboard)
        if self.out_dir is not None and hasattr(self.task, "set_output_dir"):
            self.task.set_output_dir(self.out_dir)
        if resume:  # forget records written after the checkpoint we continue from (all, if there was none)
            torn = self.metrics.truncate_after(self.resumed_from or 0)
            if torn is not None:
                self.log(f"{self.metrics.jsonl_path} ended with a torn line (a crash mid-write); kept the complete "
                         f"records and saved the torn line to {torn}")

    # ------------------------------------------------------------------------------------------------------------

    def _state(self, rng_ranks: list[Any] | None = None) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.config),
            "task": self.config.task,
            "task_state": self.task.state(),
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "elapsed_s": self.elapsed_s(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "world_size": self.dist.world_size,
            "rng": ckpt.rng_state(),
            # under DDP every rank's dropout stream (index = rank), so that each rank resumes its own exactly
            "rng_ranks": rng_ranks,
            "data": {"order": "per-step seeded global batch (Task.global_batch(step))",
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
        if self.sharding is not None and self.out_dir is not None and self.config.fsdp_checkpoint == "sharded":
            path = self.sharding.save_sharded(self.out_dir, step=self.step, model=self.model,
                                              optimizer=self.optimizer, keep=self.config.keep_checkpoints,
                                              state=self._state(rng_ranks) if self.dist.is_main else None)
            self.last_saved = self.step
            return path
        model, opt = (self.sharding.gather(self.model, self.optimizer) if self.sharding is not None and
                      self.out_dir is not None else (self.model, self.optimizer))  # FSDP: every rank gathers
        if self.dist.is_main and self.out_dir is not None:
            path = ckpt.save_checkpoint(self.out_dir, step=self.step, model=model, optimizer=opt,
                                        state=self._state(rng_ranks), keep=self.config.keep_checkpoints)
        self.last_saved = self.step
        if self.dist.enabled:
            torch_dist.barrier()
        return path

    def _resume(self, path: Path) -> None:
        state = ckpt.read_state(path)
        ckpt.check_resume_state(path, state)  # every key resuming needs, before anything is loaded
        saved = upgrade_config_dict(state.get("config", {}))  # options added since the checkpoint: their defaults
        now = config_to_dict(self.config)
        diffs = []
        for k in ("task", "model", "data", "seed", "batch_size"):
            diffs += config_diff(saved.get(k), now[k], f"{k}.")
        diffs += self.task.resume_diffs(state.get("task_state", {}))  # e.g. another teacher behind the same path
        if diffs:
            raise ckpt.CheckpointError(f"cannot resume from {str(path)!r}: the configuration differs: " + "; ".join(diffs))
        if ckpt.is_sharded(path) and self.sharding is None:
            raise ckpt.CheckpointError(f"cannot resume from {str(path)!r}: it is a sharded FSDP checkpoint, which only "
                                       "an FSDP run (fsdp=true under torchrun) resumes")
        if self.sharding is not None:
            self.sharding.load(path, self.model, self.optimizer, state)
        else:
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
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.last_saved = self.step
        self.resumed_from = self.step
        self.log(f"resumed from {path} at step {self.step}")

    def elapsed_s(self) -> float:
        """Wall time of the run so far: earlier segments (up to the checkpoint resumed from) plus this one."""
        return self.elapsed_before + (time.perf_counter() - self._wall0 if self._wall0 is not None else 0.0)

    # ------------------------------------------------------------------------------------------------------------

    def eval_context(self, *, full: bool = True) -> EvalContext:
        sharded = self.sharding is not None  # FSDP: every rank runs the same forwards over the whole split
        return EvalContext(device=self.device, batch_size=self.config.eval_batch_size or self.micro,
                           autocast_dtype=self.autocast_dtype, rank=0 if sharded else self.dist.rank,
                           world_size=1 if sharded else self.dist.world_size, full=full)

    def evaluate(self, split: str = "val", *, full: bool = True) -> EvalResult:
        """The task's metrics over the whole ``split`` (``full=False``: skip costly extras such as decoding for
        BLEU, as during training)."""
        if hasattr(self.task, "step_label"):
            self.task.step_label = f"-step{self.step}"
        return self.task.evaluate(self.model, split, self.eval_context(full=full))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self) -> tuple[float, dict[str, torch.Tensor], int, torch.Tensor | None, float]:
        """One optimizer step: returns (learning rate, this rank's weighted loss terms, the step's global number of
        targets, the gradient norm before clipping or ``None``, seconds spent making batches)."""
        cfg = self.config
        s = self.step
        lr = lr_at(s, peak=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                   total_steps=cfg.optim.decay_steps or cfg.steps, min_ratio=cfg.optim.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        self.task.step_progress = (s, cfg.steps)
        rows = self.task.global_batch(s, cfg.batch_size)
        n_global = self.task.count_targets(rows)
        data_s = time.perf_counter() - t0
        A, W = cfg.grad_accum, self.dist.world_size
        terms: dict[str, torch.Tensor] = {}
        for m in range(A):
            t0 = time.perf_counter()
            batch = self.task.make_batch(ddp.rank_rows(rows, micro_step=m, rank=self.dist.rank, world_size=W,
                                                       micro=self.micro), self.device)
            data_s += time.perf_counter() - t0
            weight = batch.n_targets / n_global
            sync_ctx = (self.ddp.no_sync() if self.ddp is not None and m < A - 1  # type: ignore[operator]
                        else self.sharding.sync(self.model, last=m == A - 1) if self.sharding is not None
                        else contextlib.nullcontext())
            with sync_ctx:
                with autocast(self.device, self.autocast_dtype):
                    loss = self.task.loss(self.forward_model, batch)
                (loss.total * (weight * W)).backward()
            for k, v in loss.terms().items():
                w = v.detach().double() * weight
                terms[k] = terms[k] + w if k in terms else w
        # the gradient norm before clipping (max_norm=inf: measured, never clipped), which also tells a non-finite
        # gradient; one host sync per step
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
        grad_norm = plain_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        total = sum(terms.values())
        if self.dist.enabled:
            torch_dist.all_reduce(total)
        if not (bool(torch.isfinite(total)) and bool(torch.isfinite(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            what = f"loss {float(total)}" if not bool(torch.isfinite(total)) else f"gradient norm {float(grad_norm)}"
            if not cfg.skip_nonfinite:
                raise NonFiniteError(
                    f"step {s + 1}: non-finite {what}; the run stops here, before the optimizer step, so the newest "
                    f"checkpoint (step {self.last_saved if self.last_saved is not None else 'none yet'}) holds finite "
                    "weights (lower optim.lr, set optim.grad_clip, or skip_nonfinite=true to skip such steps)")
            self.skipped_steps += 1
            return lr, terms, n_global, grad_norm, data_s
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, terms, n_global, grad_norm, data_s

    def fit(self) -> TrainResult:
        """Train to ``config.steps``; evaluate on the whole validation (and test) split at the end. The output
        directory's lock is released at the end, whatever happens."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> TrainResult:
        cfg = self.config
        train_losses: list[tuple[int, float]] = []
        eval_history: list[tuple[int, float]] = []
        compute_s = eval_s = ckpt_s = 0.0
        ckpt_every = cfg.checkpoint_interval or cfg.eval_interval
        last_val: EvalResult | None = None
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        start_step = self.step
        tokens_run = 0
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        ema_tps = None
        self.model.train()
        wall0 = self._wall0 = time.perf_counter()
        with PeakMemory(self.device) as mem:
            while self.step < cfg.steps:
                t_step = time.perf_counter()
                lr, terms, n_global, grad_norm, data_s = self.train_step()
                self._sync()
                compute_s += time.perf_counter() - t_step - data_s
                self.step += 1
                self.tokens_seen += n_global
                tokens_run += n_global
                pending.append((self.step, terms))

                step_time = time.perf_counter() - t_step
                tps = n_global / max(step_time, 1e-9)
                ema_tps = tps if ema_tps is None else 0.9 * ema_tps + 0.1 * tps
                if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                    names = list(pending[-1][1])
                    stacked = torch.stack([torch.stack([t[k] for k in names]) for _, t in pending])  # (steps, terms)
                    if self.dist.enabled:  # each rank holds its share of the global mean: sum them
                        torch_dist.all_reduce(stacked)
                    vals = stacked.tolist()
                    train_losses.extend((st, sum(v)) for (st, _), v in zip(pending, vals))
                    pending.clear()
                    last = dict(zip(names, vals[-1]))
                    rec = {"kind": "train", "step": self.step, "tokens": self.tokens_seen, "loss": sum(vals[-1]),
                           "lr": lr, "tokens_per_s": ema_tps, "elapsed_s": self.elapsed_s()}
                    if len(names) > 1:
                        rec.update({f"loss.{k}": v for k, v in last.items()})
                    if grad_norm is not None:
                        rec["grad_norm"] = float(grad_norm)
                    self.metrics.log(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{ema_tps:,.0f}", refresh=False)
                if bar is not None:
                    bar.update(1)

                at_end = self.step == cfg.steps
                if self.step % cfg.eval_interval == 0 or at_end:
                    t0 = time.perf_counter()
                    last_val = self.evaluate("val", full=at_end)
                    eval_s += time.perf_counter() - t0
                    eval_history.append((self.step, last_val.loss))
                    self._log_eval(last_val, elapsed_s=self.elapsed_s())
                    if bar is not None:
                        bar.write(f"step {self.step}: {last_val.summary()}")
                if self.step % ckpt_every == 0 or at_end:
                    t0 = time.perf_counter()
                    self.save()
                    ckpt_s += time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if last_val is None:  # nothing left to train (resumed a finished run): evaluate anyway
            t0 = time.perf_counter()
            last_val = self.evaluate("val")
            eval_s += time.perf_counter() - t0
        test = None
        if "test" in self.task.splits:
            t0 = time.perf_counter()
            test = self.evaluate("test")
            eval_s += time.perf_counter() - t0
        # wall time after the closing evaluations, which eval_s counts: training time is what is left (a wall taken
        # before them made it negative, and tokens/s 0, whenever the test evaluation outlasted the training steps)
        wall = time.perf_counter() - wall0
        train_time = wall - eval_s - ckpt_s
        steps_run = self.step - start_step
        result = TrainResult(
            steps=self.step, tokens=self.tokens_seen, n_params=self.n_params, val=last_val, test=test,
            train_losses=train_losses, eval_history=eval_history,
            tokens_per_s=tokens_run / train_time if steps_run and train_time > 0 else 0.0,
            wall_s=wall, train_time_s=train_time, compute_time_s=compute_s, eval_time_s=eval_s,
            checkpoint_time_s=ckpt_s,
            overhead_fraction=max(0.0, 1.0 - compute_s / train_time) if train_time > 0 and steps_run else 0.0,
            peak_memory_bytes=mem.peak_bytes, memory_kind=mem.kind, resumed_from=self.resumed_from,
            skipped_steps=self.skipped_steps, run_wall_s=self.elapsed_before + wall,
        )
        if test is not None:
            self._log_eval(test)
        self.metrics.close()
        if self.dist.is_main and self.out_dir is not None:
            import json

            from attnlab.train.outdir import atomic_write_text

            d = result.to_dict()
            d.pop("train_losses")
            d["task"] = cfg.task
            atomic_write_text(self.out_dir / "result.json", json.dumps(d, indent=1))  # "finished" marker
        msg = f"done: {self.step} steps, {last_val.summary()}"
        if test is not None:
            msg += f"; {test.summary()}"
        msg += f"; {result.tokens_per_s:,.0f} tok/s, trainer overhead {100 * result.overhead_fraction:.1f}%"
        self.log(msg)
        return result

    def _log_eval(self, r: EvalResult, **extra: Any) -> None:
        rec = {"kind": "eval", "step": self.step, "tokens": self.tokens_seen, "split": r.split, "loss": r.loss,
               "ppl": r.ppl, "bpc": r.bits_per_char, **r.metrics, **extra}
        self.metrics.log(rec)


def train(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """``Trainer(config, **kwargs).fit()``."""
    return Trainer(config, **kwargs).fit()
