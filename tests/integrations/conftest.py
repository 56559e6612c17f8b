"""The fixtures of the integration tests, defined in :mod:`hf_tiny` (a module of its own name, so that test files
import its helpers as ``from hf_tiny import ...``: ``from conftest import ...`` can resolve to another folder's
conftest under pytest-xdist)."""

from hf_tiny import _no_grad, qwen2_vl_factory, tiny, tiny_sdpa  # noqa: F401  (fixtures)
