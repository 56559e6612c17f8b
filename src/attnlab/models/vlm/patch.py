"""A small vision-language model: square image patches become visual tokens in front of attnlab's LM.

``PatchVLM(ids, pixels, mask="f")``: ``ids (B, L)`` are the text token ids of a fixed layout whose visual positions
(:attr:`PatchVLM.is_visual`, ``(L,)``) hold a placeholder id; ``pixels (B, n_images, S, S)`` are the images. Each
image is cut into ``(S / patch_size)^2`` row-major patches, each patch linearly embedded (``Linear(patch_size^2,
d_model)``) plus a learned per-patch position (shared by the images; the LM's RoPE orders the whole sequence), and
the patch embeddings replace the placeholder embeddings at the visual positions, image 1 first. The LM then runs
every layer under the future-aware mask ``mask`` (spec future_mask.md §2.1, semantics P over the whole sequence:
:class:`attnlab.masks.TokenTypes`); ``"c"`` is the LM's own causal path. The mask is chosen per call, so one trained
model is evaluated under every mask (the paper's inference-only protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
from torch import Tensor, nn

from attnlab._validation import check_int
from attnlab.config import PlainConfig
from attnlab.masks.vlm import FUTURE_KINDS, FutureKind, TokenTypes
from attnlab.models.lm import LMConfig

__all__ = ["PatchVLMConfig", "PatchVLM"]


def _default_lm() -> LMConfig:
    return LMConfig(n_layers=4, d_model=64, n_heads=4, context_len=64)


@dataclass(kw_only=True)
class PatchVLMConfig(PlainConfig):
    """A :class:`PatchVLM`.

    Attributes:
        lm: the language model (any causal softmax mechanism that takes per-call masks, or ``future-light``);
            ``vocab_size`` is set by the task, ``context_len`` must hold the layout.
        patch_size: side of a square patch in pixels; must divide the image side.
        image_size: side of the (square) images.
        n_images: images per sequence.
    """

    lm: LMConfig = field(default_factory=_default_lm)
    patch_size: int = 4
    image_size: int = 8
    n_images: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.lm, LMConfig):
            raise ValueError(f"lm must be an LMConfig, got {type(self.lm).__name__}")
        check_int("patch_size", self.patch_size, 1)
        check_int("image_size", self.image_size, 1)
        check_int("n_images", self.n_images, 1)
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}")

    @property
    def patches_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def build(self, *, vocab_size: int, is_visual: Tensor) -> "PatchVLM":
        """The model for a vocabulary and a layout ``is_visual (L,)`` with ``n_images * patches_per_image``
        visual positions."""
        return PatchVLM(self, vocab_size=vocab_size, is_visual=is_visual)


class PatchVLM(nn.Module):
    """See the module docstring."""

    def __init__(self, config: PatchVLMConfig, *, vocab_size: int, is_visual: Tensor) -> None:
        super().__init__()
        t = torch.as_tensor(is_visual, device="cpu")
        if t.dtype != torch.bool or t.ndim != 1:
            raise ValueError(f"is_visual must be a 1-d torch.bool layout, got {t.dtype} of shape {tuple(t.shape)}")
        flags = [bool(v) for v in t.tolist()]  # plain values: the model may be built on the meta device
        want = config.n_images * config.patches_per_image
        if sum(flags) != want:
            raise ValueError(f"is_visual has {sum(flags)} visual positions; {config.n_images} images of "
                             f"{config.patches_per_image} patches need {want}")
        if len(flags) > config.lm.context_len:
            raise ValueError(f"the layout has {len(flags)} positions but lm.context_len={config.lm.context_len}")
        self.config = config
        self.lm = config.lm.with_vocab_size(vocab_size).build()
        p = config.patch_size
        self.patch_emb = nn.Linear(p * p, config.lm.d_model)
        self.patch_pos = nn.Parameter(torch.zeros(config.patches_per_image, config.lm.d_model))
        nn.init.normal_(self.patch_pos, std=0.02)
        self.register_buffer("is_visual", torch.tensor(flags, dtype=torch.bool), persistent=False)
        self._types: dict[FutureKind, TokenTypes] = {}

    def token_types(self, mask: FutureKind) -> TokenTypes | None:
        """The per-call token types of ``mask`` (``None`` for ``"c"``: the LM's own causal path), built once."""
        if mask not in FUTURE_KINDS:
            raise ValueError(f"mask must be one of {', '.join(FUTURE_KINDS)}, got {mask!r}")
        if mask == "c":
            return None
        if mask not in self._types or self._types[mask].is_visual.device != self.is_visual.device:
            self._types[mask] = TokenTypes(is_visual=self.is_visual, kind=mask)
        return self._types[mask]

    def embed(self, ids: Tensor, pixels: Tensor) -> Tensor:
        """Input embeddings ``(B, L, d_model)``: token embeddings with the visual positions replaced by patches."""
        B, L = ids.shape
        c = self.config
        if L != self.is_visual.shape[0]:
            raise ValueError(f"ids must have the layout's length {self.is_visual.shape[0]}, got shape {tuple(ids.shape)}")
        S, p = c.image_size, c.patch_size
        if pixels.shape != (B, c.n_images, S, S):
            raise ValueError(f"pixels must have shape (B={B}, n_images={c.n_images}, {S}, {S}), got "
                             f"{tuple(pixels.shape)}")
        x = pixels.to(self.patch_emb.weight.dtype)
        x = x.unfold(2, p, p).unfold(3, p, p)  # (B, n, S/p, S/p, p, p)
        x = x.reshape(B, c.n_images, c.patches_per_image, p * p)  # row-major patches
        patches = self.patch_emb(x) + self.patch_pos  # (B, n, P, C)
        e = self.lm.embed(ids)  # (B, L, C)
        e = e.clone()
        e[:, self.is_visual] = patches.reshape(B, -1, e.shape[-1]).to(e.dtype)
        return e

    def forward(self, ids: Tensor, pixels: Tensor, *, mask: FutureKind = "c") -> Tensor:
        """Logits ``(B, L, V)`` of the next token at every position under ``mask``."""
        return self.lm(inputs_embeds=self.embed(ids, pixels), token_types=self.token_types(mask))

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.n_images} images of {c.image_size}x{c.image_size}, patches {c.patch_size}x{c.patch_size}"

