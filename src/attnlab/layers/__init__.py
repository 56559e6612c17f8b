"""Attention layers (``nn.Module``), one file per mechanism, each registering itself on import.

Importing this package loads every module in it, so that :mod:`attnlab.layers.registry` knows every
built-in mechanism; a new mechanism only needs a new file here that calls ``registry.register``.
"""

import importlib
import pkgutil

# The classic family registers first so that listings start with "standard"; the rest follow by file name.
for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "classic", m.name)):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

from attnlab.layers.castle import CastleAttention, CastleAttentionConfig, CastleConfig  # noqa: E402
from attnlab.layers.future_light import LightFutureAttention, LightFutureConfig  # noqa: E402
from attnlab.layers.linear import LinearAttention, LinearAttentionConfig  # noqa: E402
from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig  # noqa: E402
from attnlab.layers.registry import MechanismSpec, all_specs, build, get, names, register  # noqa: E402

__all__ = ["MechanismSpec", "all_specs", "build", "get", "names", "register", "MultiHeadAttention",
           "MultiHeadAttentionConfig", "CastleAttention", "CastleConfig",
           "CastleAttentionConfig", "LinearAttention", "LinearAttentionConfig",
           "LightFutureAttention", "LightFutureConfig"]
