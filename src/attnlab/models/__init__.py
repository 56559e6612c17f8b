"""Models built from the attention registry: the decoder-only language model :class:`LM` and its config."""

from attnlab.models.config import SCHEDULES, LMConfig, swiglu_hidden
from attnlab.models.lm import IGNORE_INDEX, LM, Block, SwiGLU

__all__ = ["IGNORE_INDEX", "LM", "LMConfig", "SCHEDULES", "Block", "SwiGLU", "swiglu_hidden"]
