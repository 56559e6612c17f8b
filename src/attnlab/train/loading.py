"""Load a trained model with its task (tokenizer, configs) from a checkpoint, for evaluation or generation.

A checkpoint is data, never instructions. Loading one:

* follows no path stored in it: the run config in ``state.json`` keeps the data source and token-cache directory
  it was trained with, but a stored *path* is used only when the caller asks for it (``stored_data=True``; the
  CLI's ``--stored-data``, which prints it). Bundled corpus names (``tinyshakespeare``, ``wikitext2``,
  ``multi30k``, ``etth1``) are names, not paths, and are kept. The cache directory is the caller's (``cache_dir=``) or the
  environment's / default one, never the stored one. A task whose data would come from a stored path that was not
  followed raises a :class:`~attnlab.train.checkpoint.CheckpointError` saying how to choose the data, when (and
  only if) it needs its data;
* checks the model dimensions of ``state.json`` against the tensors of ``model.safetensors`` (their header only)
  before building the model: the model is first built on the ``meta`` device (no memory) and compared; a
  crafted config with absurd sizes (``d_model = 2**20``) is refused before anything is allocated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.tasks import Task
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import ConfigError, TrainConfig, config_from_dict
from attnlab.train.distributed import resolve_device

__all__ = ["Trained", "load_trained", "load_required_checkpoints", "BUNDLED_SOURCES", "MAX_CONFIG_INT"]

#: Data sources that are names of corpora shipped with attnlab, not paths (kept when a checkpoint is loaded).
BUNDLED_SOURCES = ("tinyshakespeare", "wikitext2", "multi30k", "etth1")
#: The largest integer a checkpoint's model config may hold (any dimension, length or count); larger is refused
#: as absurd before any module is built.
MAX_CONFIG_INT = 2**24


@dataclass
class Trained:
    """A checkpoint's model (eval mode), its task (rebuilt from the checkpoint, no data loaded), run config and
    JSON state.

    Attributes:
        data_source: the data source the task will read (a bundled name, the caller's ``data`` or, with
            ``stored_data=True``, the stored path); ``None`` when the stored source is a path that was not followed.
        stored_source: the data source stored in the checkpoint (shown to the user, never followed silently).
    """

    model: nn.Module
    task: Task
    config: TrainConfig
    state: dict[str, Any]
    path: Path
    data_source: str | None = None
    stored_source: str | None = None

    @property
    def tokenizer(self) -> Any:
        return getattr(self.task, "tokenizer", None)


class _UnfollowedData:
    """Stands in for a task's data when its source is a stored path that was not followed: any use is a
    :class:`CheckpointError` that says how to choose the data."""

    def __init__(self, message: str) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ckpt.CheckpointError(self._message)

    def __bool__(self) -> bool:
        raise ckpt.CheckpointError(self._message)


#: Where each task keeps its loaded data (``None`` until first use); a task not listed here gets no stand-in, so
#: a checkpoint of it with a stored path is refused at load time (tests check every task is listed).
_DATA_ATTRIBUTE = {"lm": "_corpus", "translation": "_data", "forecast": "_data", "digits-vqa": "_images",
                   "stg": "_examples", "arith-distractors": "_examples", "discovery": "_data"}
# (the last three read no path: their data are generated or in scikit-learn)


def _resolve_data(config: TrainConfig, cdir: Path, *, data: str | None, stored_data: bool,
                  cache_dir: str | None) -> tuple[Any, str | None, str | None]:
    """(the data config to use, the source that will be read or ``None``, the stored source)."""
    d = config.data
    stored = getattr(d, "source", None)
    changes: dict[str, Any] = {}
    if hasattr(d, "cache_dir"):
        changes["cache_dir"] = None if cache_dir is None else str(cache_dir)
    source: str | None = stored
    if data is not None:
        source = changes["source"] = str(data)
    elif stored is not None and stored not in BUNDLED_SOURCES and not stored_data:
        source = None
    try:
        d = dataclasses.replace(d, **changes) if changes else d
    except (TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"data={data!r}: {e}") from None
    return d, source, stored


def _unfollowed_message(cdir: Path, stored: str) -> str:
    return (f"checkpoint {str(cdir)!r} was trained on {stored!r}, a path stored in the checkpoint, which attnlab "
            f"does not follow on its own; name the data to use (attnlab eval --data PATH, or load_trained(..., "
            f"data=PATH)), or pass --stored-data (stored_data=True) to read {stored!r}")


def _check_config_ints(d: Any, where: Path, name: str = "model") -> None:
    """Refuse absurd integers anywhere in the stored model config ``d`` (plain JSON values), before the config is
    even built: a config may expand a count into per-layer lists, so ``n_layers = 2**30`` must stop here."""
    if isinstance(d, dict):
        for k, v in d.items():
            _check_config_ints(v, where, f"{name}.{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            _check_config_ints(v, where, f"{name}[{i}]")
    elif isinstance(d, int) and not isinstance(d, bool) and not -MAX_CONFIG_INT <= d <= MAX_CONFIG_INT:
        raise ckpt.CheckpointError(f"{where}: {name}={d} is absurd (at most {MAX_CONFIG_INT:,}); the file is damaged "
                                   "or crafted, so no model is built from it")


def _check_against_weights(task: Task, cdir: Path) -> None:
    """Build the model on the meta device (no memory) and compare its tensor names and shapes with the header of
    ``model.safetensors``. Registering more parameters than the file holds tensors stops the build early, so a
    crafted layer count cannot make it slow either."""
    path = ckpt.weights_file(cdir)  # (a sharded checkpoint not yet consolidated: an error that says how)
    header = ckpt.read_tensor_header(path)
    limit = 2 * len(header) + 16  # tied weights count twice; a small margin for registration order
    count = [0]

    class _TooMany(Exception):
        pass

    def hook(module: nn.Module, name: str, param: Any) -> None:
        count[0] += 1
        if count[0] > limit:
            raise _TooMany

    from torch.nn.modules.module import register_module_parameter_registration_hook

    handle = register_module_parameter_registration_hook(hook)
    try:
        with torch.device("meta"):
            meta_model = task.build_model()
    except ckpt.CheckpointError:
        raise
    except _TooMany:
        raise ckpt.CheckpointError(
            f"{cdir / 'state.json'}: its model config has more than {limit} parameter tensors but {path.name} holds "
            f"{len(header)}; the config and the weights do not belong together") from None
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{cdir / 'state.json'}: no model can be built from its config: {e}") from None
    finally:
        handle.remove()
    ckpt.check_model_shapes(path, meta_model, what=(
        f"checkpoint {str(cdir)!r}: the model config in state.json does not match the tensors in {path.name}"))


def load_trained(path: str | Path, *, device: str = "auto", task: str | None = None, data: str | None = None,
                 stored_data: bool = False, cache_dir: str | None = None) -> Trained:
    """The model of checkpoint (or run directory) ``path`` in eval mode on ``device``, with its task.

    Args:
        task: the task the caller needs (e.g. ``"lm"`` for generation); a checkpoint of another task is a
            ``CheckpointError`` that names both.
        data: the data source for the task (a bundled corpus name or a path) instead of the stored one.
        stored_data: read the data source stored in the checkpoint even when it is a path (see the module
            docstring; without it, a stored path is never followed).
        cache_dir: the token-cache directory (default: ``$ATTNLAB_CACHE_DIR`` or ``~/.cache/attnlab``; never the
            one stored in the checkpoint).

    Raises:
        CheckpointError: a missing, damaged or inconsistent checkpoint (the message names the file).
    """
    cdir = ckpt.find_checkpoint(path)
    state = ckpt.read_state(cdir)
    if "config" not in state:
        raise ckpt.CheckpointError(f"{cdir / 'state.json'}: the key 'config' is missing (expected an object, the run "
                                   "config)")
    _check_config_ints(state["config"].get("model"), cdir / "state.json")
    try:
        config = config_from_dict(state["config"])
    except (KeyError, ConfigError, TypeError, ValueError, AttributeError) as e:
        raise ckpt.CheckpointError(f"{cdir / 'state.json'}: the run config cannot be read ({e})") from None
    if task is not None and config.task != task:
        raise ckpt.CheckpointError(
            f"checkpoint {str(cdir)!r} is a {config.task!r} model, but this command needs a {task!r} model")
    data_cfg, source, stored = _resolve_data(config, cdir, data=data, stored_data=stored_data, cache_dir=cache_dir)
    config = dataclasses.replace(config, data=data_cfg)
    try:
        t = config.task_class.from_state(config.model, data_cfg, state.get("task_state", {}), seed=config.seed,
                                         options=config.options)
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{cdir / 'state.json'}: the task state cannot be read ({e})") from None
    if source is None and stored is not None:
        attr = _DATA_ATTRIBUTE.get(config.task)
        if attr is None or getattr(t, attr, None) is not None:
            raise ckpt.CheckpointError(_unfollowed_message(cdir, stored))
        setattr(t, attr, _UnfollowedData(_unfollowed_message(cdir, stored)))
    _check_against_weights(t, cdir)
    model = t.build_model()
    ckpt.load_model_weights(cdir, model)
    model.to(resolve_device(device)).eval()
    return Trained(model=model, task=t, config=config, state=state, path=cdir, data_source=source,
                   stored_source=stored)


def load_required_checkpoints(task: Task) -> None:
    """Load the runs ``task`` needs (:meth:`Task.required_checkpoints`, on the CPU) and attach them; a missing,
    damaged or unfitting run is a :class:`ConfigError` naming its role and path."""
    loaded: dict[str, Trained] = {}
    for role, path in task.required_checkpoints().items():
        try:
            loaded[role] = load_trained(path, device="cpu")
        except (ckpt.CheckpointError, OSError) as e:
            raise ConfigError(f"the {role} checkpoint {path!r} cannot be loaded: {e}") from None
    if loaded:
        try:
            task.attach_checkpoints(loaded)
        except ValueError as e:
            raise ConfigError(str(e)) from None
