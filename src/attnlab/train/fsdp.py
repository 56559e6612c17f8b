"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the trainer: ``TrainConfig(fsdp=True)`` under ``torchrun``.

Each residual block (:class:`attnlab.models.common.ResidualBlock`) becomes its own FSDP unit, then the whole model
(embeddings, output head, anything outside the blocks), on a 1-D device mesh of the trainer's device type.

Initialisation never puts a whole model on a device, and only rank 0 holds one in host memory
(:meth:`Sharding.build`): rank 0 builds the model on the CPU with the run's seed (the same values a single process
or DDP starts from); that copy is the checkpoint template below. Every rank then builds the model again on the
``meta`` device (no memory), shards it, allocates only its own shards on the device (``to_empty``) and receives the
values from rank 0 (``set_model_state_dict(..., broadcast_from_rank0=True)``, then a broadcast of every buffer, which
also covers non-persistent ones). A model whose construction needs real values (it raises on ``meta``, or keeps a
plain tensor attribute, which ``to_empty`` would not allocate) is built on the CPU instead on every rank
(:func:`build_on_meta` decides, the same way on every rank) and ``fully_shard`` moves each unit to the device as it
shards it, so the device still holds at most one unsharded unit at a time. A model passed in built takes that CPU
route too. Parameters, gradients and optimizer state are sharded over
the ranks; a forward all-gathers each unit's parameters in turn. Gradients are averaged over the ranks as DDP does,
so the trainer's loss scaling is the same and a run equals the DDP run with the same global batch (tested with 2
CPU processes over gloo).

Checkpoints (``TrainConfig.fsdp_checkpoint``):

* ``"sharded"``: distributed checkpoints. Every rank saves its own shards of the model and optimizer state with
  ``torch.distributed.checkpoint`` (nothing is gathered at a save), rank 0 adds ``state.json`` and renames the
  directory atomically; a resume with FSDP reads them back exactly (tested at the same world size;
  ``torch.distributed.checkpoint`` reshards for another). ``attnlab consolidate`` writes the ``model.safetensors``
  that ``eval``, ``generate`` and ``export`` read.
* ``"full"`` (the default): attnlab's ordinary format (``model.safetensors``, ``optimizer.safetensors``,
  ``state.json``), read by ``attnlab eval``, ``generate``, ``export`` and by a DDP or single-process resume alike.
  At a save every rank joins the gathering of the full model and optimizer state
  (``torch.distributed.checkpoint.state_dict``, offloaded to the CPU on rank 0); rank 0 loads it into its CPU copy
  of the unsharded model (:attr:`Sharding.template`) and writes that; a resume reads the checkpoint into the copy
  on rank 0 and broadcasts it into the shards. Saving costs rank 0 the host memory of the optimizer state besides
  the copy. (With ``"sharded"`` the copy is freed once the run has started: :meth:`Sharding.release_template`.)

Evaluation: every rank evaluates the whole split (a sharded forward is a collective, so the ranks must run the same
calls), and each gets the same metrics.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from attnlab.train import checkpoint as ckpt

__all__ = ["Sharding", "shard", "plain_tensor", "build_on_meta", "device_mesh"]


def device_mesh(device: torch.device) -> Any:
    """The 1-D mesh of every rank of the default process group, on ``device``'s type (``cuda`` with NCCL, ``cpu``
    with gloo), so that FSDP2 follows the trainer's device rather than whichever accelerator the machine has."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard(model: nn.Module, mesh: Any = None) -> nn.Module:
    """``fully_shard`` every residual block, then the model (in place, on ``mesh``, by default FSDP2's own);
    returns the model. Parameters not yet on the mesh's device are moved there one unit at a time."""
    from torch.distributed.fsdp import fully_shard

    from attnlab.models.common import ResidualBlock

    for m in model.modules():
        if isinstance(m, ResidualBlock):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module | None:
    """``build()`` on the ``meta`` device, or ``None`` when the model cannot be built that way: the build raised
    (it needs real values, e.g. a ``.tolist()``), or a module keeps a plain tensor attribute (not a parameter or a
    buffer; also one inside a list, tuple, set or dict attribute), which ``to_empty`` would leave on ``meta``. The
    same build gives the same answer on every rank."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # a build that needs real values; it is built on the CPU instead (and raises there if broken)
        return None
    for m in model.modules():
        if any(_holds_tensor(v) for k, v in vars(m).items() if k not in _MODULE_STATE):
            return None
    return model


#: nn.Module's own registries (parameters and buffers are allocated by ``to_empty``; submodules are visited).
_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules"})


def _holds_tensor(value: Any) -> bool:
    """Whether a module attribute is a tensor or a list, tuple, set or dict holding one (not looking further)."""
    if isinstance(value, torch.Tensor):
        return True
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple, set)) else ()
    return any(isinstance(v, torch.Tensor) for v in items)


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's shards of the model and optimizer state, as ``torch.distributed.checkpoint`` saves and loads."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. the gradient norm of sharded parameters); any other tensor unchanged."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


class Sharding:
    """The FSDP2 state of one trainer (module docstring). Make it with :meth:`build` before the optimizer (sharding
    replaces the parameters); ``model`` is the sharded model.

    Attributes:
        model: the sharded model (every rank).
        template: rank 0's unsharded CPU copy, used for full checkpoints (``None`` on the other ranks, and after
            :meth:`release_template`).
        tied: the model's tied-weight groups (:func:`attnlab.train.checkpoint.tied_names`; rank 0), for a sharded
            checkpoint's ``state.json``.
        built_on: ``"meta"`` or ``"cpu"``: how this rank built the model it sharded.
    """

    def __init__(self, model: nn.Module, template: nn.Module | None, *, is_main: bool, built_on: str,
                 make_optimizer: Callable[[nn.Module], Any]) -> None:
        self.model = model
        self.template = template
        self.tied = ckpt.tied_names(template) if template is not None else []
        self.is_main = is_main
        self.built_on = built_on
        self._make_optimizer = make_optimizer

    @classmethod
    def build(cls, source: nn.Module | Callable[[], nn.Module], *, is_main: bool, device: torch.device,
              dtype: torch.dtype, make_optimizer: Callable[[nn.Module], Any]) -> "Sharding":
        """Collective: build, shard and initialise the model on every rank (module docstring).

        Args:
            source: a callable that builds the model (the global RNG seeded alike on every rank), or a built model
                (sharded in place; rank 0 keeps a CPU copy).
            is_main: rank 0, which keeps the unsharded CPU copy (the checkpoint template).
            device: the trainer's device; each rank's shards go there.
            dtype: the parameter dtype.
            make_optimizer: the trainer's optimizer factory, for the copy's optimizer at a checkpoint.
        """
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             set_model_state_dict)

        if isinstance(source, nn.Module):
            model: nn.Module | None = source
            template = None
            if is_main:  # through the CPU, so that the device never holds two full copies
                where = next(source.parameters()).device
                template = copy.deepcopy(source.to("cpu")).to(dtype=dtype)
                source.to(where)
            meta = None
        else:
            template = source().to(dtype=dtype) if is_main else None  # the run's initial values (seeded build)
            meta = build_on_meta(source)
            model = meta if meta is not None else source()
        assert model is not None
        model.to(dtype=dtype)
        built_on = "meta" if meta is not None else "cpu"
        # every rank must take the same route: the meta build is deterministic, but check rather than hang
        flags = [None] * dist.get_world_size()
        dist.all_gather_object(flags, built_on)
        if len(set(flags)) != 1:
            raise RuntimeError(f"FSDP: the ranks built the model differently ({flags}); the build must not depend on "
                               "the rank")
        shard(model, device_mesh(device))
        if meta is not None:
            model.to_empty(device=device)
        # rank 0's values into every rank's shards, then every buffer (non-persistent ones are not in a state dict)
        state = get_model_state_dict(template, options=StateDictOptions(full_state_dict=True)) if is_main else {}
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        own = dict(template.named_buffers()) if template is not None else {}
        for name, buf in sorted(model.named_buffers()):
            if is_main:  # rank 0's sharded model may be a meta build too: its buffers come from the template
                buf.copy_(own[name])
            dist.broadcast(buf, src=0)
        return cls(model, template, is_main=is_main, built_on=built_on, make_optimizer=make_optimizer)

    def release_template(self) -> None:
        """Free rank 0's CPU copy (one whole model of host memory) once nothing will need it: a run that writes
        sharded checkpoints, after its resume (if any). Full saves and loading an ordinary checkpoint need it."""
        self.template = None

    @contextlib.contextmanager
    def sync(self, model: nn.Module, *, last: bool) -> Iterator[None]:
        """Reduce gradients only on the last micro-step (the counterpart of DDP's ``no_sync``)."""
        model.set_requires_gradient_sync(last)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]

    def gather(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module | None, Any]:
        """Collective: the full model and optimizer state, loaded into the CPU copy and its optimizer on rank 0
        (``(None, None)`` elsewhere), ready for :func:`attnlab.train.checkpoint.save_checkpoint`."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(model, options=opts)
        optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
        if not self.is_main:
            return None, None
        assert self.template is not None, "a full checkpoint needs rank 0's template (released for sharded runs)"
        self.template.load_state_dict(model_sd)
        opt = self._make_optimizer(self.template)
        for g_copy, g in zip(opt.param_groups, optimizer.param_groups):
            g_copy["lr"] = g["lr"]
        set_optimizer_state_dict(self.template, opt, optim_sd, options=StateDictOptions(full_state_dict=True))
        return self.template, opt

    def save_sharded(self, run_dir: Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any] | None, keep: int) -> Path | None:
        """Collective: checkpoint ``step`` as a sharded (distributed) checkpoint: every rank writes its own shards
        of the model and optimizer state with ``torch.distributed.checkpoint`` into ``run_dir``'s temporary
        directory, nothing is gathered; then rank 0 adds ``state.json`` (its ``state``) and renames the directory
        atomically (:func:`attnlab.train.checkpoint.save_checkpoint`). The ranks must share ``run_dir``'s file
        system. Every rank returns or raises together: a failure anywhere (creating the directory, writing a
        shard, the rename) is a :class:`~attnlab.train.checkpoint.CheckpointError` on every rank, the previous
        checkpoints intact. Returns the checkpoint directory on rank 0 (``None`` elsewhere)."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        def agree(msg: str | None, *, src_only: bool = False) -> None:
            """Raise on every rank if ``msg`` (rank 0's, or any rank's) is an error."""
            if src_only:
                box = [msg]
                dist.broadcast_object_list(box, src=0)
                errors = [box[0]] if box[0] else []
            else:
                every: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(every, msg)
                errors = [f"rank {r}: {m}" for r, m in enumerate(every) if m]
            if errors:
                if self.is_main and tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise ckpt.CheckpointError(f"could not write the sharded checkpoint of step {step} in "
                                           f"{str(run_dir)!r}: " + "; ".join(errors))

        tmp: Path | None = None
        made: list[Any] = [None, None]  # rank 0's temporary directory name, or its error
        if self.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                ckpt.remove_stale_temporaries(run_dir)
                tmp = ckpt.temporary_dir(run_dir, step)
                tmp.mkdir()
                made[0] = tmp.name
            except OSError as e:
                made[1] = f"cannot create its temporary directory: {e}"
        dist.broadcast_object_list(made, src=0)
        if made[1]:
            raise ckpt.CheckpointError(f"could not write the sharded checkpoint of step {step} in {str(run_dir)!r}: "
                                       f"{made[1]}")
        tmp = run_dir / str(made[0])
        err = None
        try:
            dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(tmp / ckpt.SHARDS))  # rank 0: index last
        except Exception as e:  # DCP reports a failed write on every rank; each says what it saw
            err = f"{type(e).__name__}: {str(e)[:500]}"
        agree(err)
        path, err = None, None
        if self.is_main:
            assert state is not None
            try:
                path = ckpt.save_checkpoint(run_dir, step=step, model=None, optimizer=None, keep=keep, tmp=tmp,
                                            state={**state, "tied": self.tied})
            except ckpt.CheckpointError as e:  # (save_checkpoint removed the temporary directory)
                err = str(e)
        tmp = None
        agree(err, src_only=True)
        return path

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Collective: the checkpoint ``path`` into the shards: a sharded checkpoint is read shard by shard by every
        rank (``torch.distributed.checkpoint``, which reshards for another world size); an ordinary one is read by
        rank 0 and broadcast."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict)

        if ckpt.is_sharded(path):
            import torch.distributed.checkpoint as dcp

            sd = _sharded_state(model, optimizer)
            dcp.load(sd, checkpoint_id=str(path / ckpt.SHARDS))
            set_model_state_dict(model, sd["model"])
            set_optimizer_state_dict(model, optimizer, sd["optim"])
            return
        model_sd: dict[str, Any] = {}
        optim_sd: dict[str, Any] = {}
        if self.is_main:
            assert self.template is not None, "loading a full checkpoint needs rank 0's template"
            ckpt.load_model_weights(path, self.template)
            opt = self._make_optimizer(self.template)
            ckpt.load_optimizer(path, opt, state)
            full = StateDictOptions(full_state_dict=True)
            model_sd = get_model_state_dict(self.template, options=full)
            optim_sd = get_optimizer_state_dict(self.template, opt, options=full)
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, model_sd, options=opts)
        set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)
