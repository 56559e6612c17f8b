"""Vision-language models built on attnlab's LM: :class:`PatchVLM` (image patches as visual tokens)."""

from attnlab.models.vlm.patch import PatchVLM, PatchVLMConfig

__all__ = ["PatchVLM", "PatchVLMConfig"]
