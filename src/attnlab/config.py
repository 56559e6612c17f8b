"""Typed configuration trees: nested dataclasses read from plain values (TOML, JSON, ``--set``) and written back.

Every component owns a ``@dataclass(kw_only=True)`` config that validates its own values in ``__post_init__``
(raising ``ValueError``). A run's config holds those objects as fields. This module only moves plain values in
and out of such trees:

* :func:`from_dict` checks every key (an unknown key names itself and lists the valid ones; a key an older
  version used names its new spelling, from the class's ``RENAMED`` map), checks every value against the field's
  annotation (converting only losslessly: ``int -> float``, ``list -> tuple``), builds nested dataclasses
  recursively and prefixes an owner's ``ValueError`` with the dotted path of the section that raised it;
* :func:`to_dict` is its inverse (``from_dict(type(c), to_dict(c)) == c``);
* :func:`apply_overrides` applies dotted keys (``{"model.n_layers": 2}``, the form of ``--set``);
* :func:`load_toml`, :func:`parse_set` and :func:`merge` read files and command-line values.

Nothing here imports torch: configs are checked before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "PlainConfig",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_toml",
    "dump_toml",
    "parse_value",
    "parse_set",
    "merge",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return f"a table ({tp.__name__})"
    return str(tp).replace("typing.", "")


def check_type(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp`` where lossless, a nested dataclass built from a table; else ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, prefix=f"{key}.")
        raise ConfigError(f"{key} must be a table of keys, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        tables = [a for a in args if dataclasses.is_dataclass(a)]
        if tables and isinstance(value, Mapping):  # a table: the nested config's own errors are the useful ones
            return check_type(key, value, tables[0])
        for a in args:
            try:
                return check_type(key, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected None, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(check_type(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ConfigError(f"{key}: expected a table/dict, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type[T], values: Mapping[str, Any], *, prefix: str = "",
              field_types: Mapping[str, Any] | None = None) -> T:
    """Build the dataclass ``cls`` from plain ``values``, checking every key and value (see the module docstring).

    Args:
        cls: a ``@dataclass`` config class; its optional class attribute ``RENAMED`` maps old keys to new ones.
        values: plain values, nested tables for nested dataclass fields.
        prefix: the dotted path of this table in the whole tree (``"model."``), used in every message.
        field_types: annotations to use instead of ``cls``'s for some fields (a run config whose ``model``
            section's class depends on its task).

    Raises:
        ConfigError: an unknown or renamed key, a value of the wrong type, or the owner's own ``ValueError``
            prefixed with the section's path.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    if field_types:
        hints.update(field_types)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    kwargs: dict[str, Any] = {}
    for k, v in values.items():
        if k not in valid:
            if k in renamed:
                raise ConfigError(f"config key '{prefix}{k}' was renamed '{prefix}{renamed[k]}'; "
                                  f"update the config file (or --set {prefix}{renamed[k]}=...)")
            where = f"in [{prefix.rstrip('.')}]" if prefix else "at the top level"
            raise ConfigError(f"unknown config key '{prefix}{k}'; valid keys {where}: {', '.join(valid)}")
        kwargs[k] = check_type(f"{prefix}{k}", v, hints[k])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        if not prefix:
            raise ConfigError(str(e)) from None
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from None


def _plain(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x) if f.init}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain values (tuples become lists) that :func:`from_dict` turns back into ``cfg``."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


class PlainConfig:
    """Mixin of a dataclass config: :meth:`to_dict` and :meth:`from_dict` through this module (checked keys and
    types, renamed keys named)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``type(c).from_dict(c.to_dict()) == c``."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """The config of plain values ``d``; unknown or renamed keys are errors that name the key."""
        return from_dict(cls, d)

    def with_vocab_size(self, vocab_size: int) -> Any:
        """A copy with ``vocab_size`` set (a task's tokenizer decides it), without validating the rest again: the
        mechanisms resolved when this config was made are shared, not looked up a second time."""
        import copy

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        new = copy.copy(self)
        new.vocab_size = vocab_size  # type: ignore[attr-defined]
        return new


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``d["a"]["b"]["c"] = value`` for ``key="a.b.c"``, creating tables on the way (validated later)."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"invalid config key {key!r}")
    node = d
    for i, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a table, so {key!r} cannot be set")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(cfg: T, overrides: Mapping[str, Any], *, rebuild: Any = None) -> T:
    """A new config with dotted-key ``overrides`` applied, validated like a file (``rebuild(dict)`` builds it;
    default: the class's own ``from_dict`` classmethod if it has one, else :func:`from_dict`)."""
    d = to_dict(cfg)
    for key, value in overrides.items():
        set_dotted(d, key, value)
    if rebuild is None:
        rebuild = getattr(type(cfg), "from_dict", None) or (lambda v: from_dict(type(cfg), v))
    return rebuild(d)


def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        if any(x is None for x in v):
            raise ConfigError(f"cannot write {list(v)!r} as TOML: a list holds None (TOML has no null)")
        return [_drop_none(x) for x in v]
    return v


def dump_toml(d: Mapping[str, Any]) -> str:
    """TOML text of the plain values ``d`` (written with ``tomli_w``). TOML has no null: keys whose value is
    ``None`` are left out and take the value of the preset the file is merged over (the commands pick the preset of
    the file's ``task``); ``attnlab train --print-config`` output is tested to read back unchanged for every preset.
    A list holding ``None`` cannot be written (:class:`ConfigError`)."""
    import tomli_w

    return tomli_w.dumps(_drop_none(dict(d)))


def load_toml(path: str | Path) -> dict[str, Any]:
    """The plain values of a TOML file (ConfigError when missing or invalid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax when it parses (``4``, ``1e-3``, ``true``, ``["a", "b"]``), else the
    raw string (so ``--set model.attention=castle`` needs no quotes)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["model.n_layers=2", "steps=10"]`` -> ``{"model.n_layers": 2, "steps": 10}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base`` (tables merge, values replace)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
