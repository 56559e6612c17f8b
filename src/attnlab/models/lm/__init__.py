"""The decoder-only language model: :class:`LMConfig`, :class:`LM` and cached generation."""

from attnlab.models.lm.config import LMConfig
from attnlab.models.lm.generate import GenerateOptions, generate, generate_with_logits, sample_next
from attnlab.models.lm.model import LM

__all__ = ["LM", "LMConfig", "GenerateOptions", "generate", "generate_with_logits", "sample_next"]
