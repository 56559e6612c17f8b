"""Helpers and fixtures of the integration tests (the fixtures are re-exported by this folder's conftest.py).

Tiny randomly initialised transformers VLMs (no weights are downloaded): LLaVA (CLIP vision tower, Llama LM) and
Qwen2-VL (its vision transformer, M-RoPE LM), float64, 2 decoder layers, hidden 32, 4 query / 2 key-value heads.

``tiny(family, attn)`` builds a model once per process; ``Tiny.inputs(*layouts)`` turns layout strings
(``"TT VVVV T VVVV TTT"``: T a text token, each run of 4 V one image) into model inputs, left-padding a batch.
Qwen2-VL wraps each image in its ``<|vision_start|>``/``<|vision_end|>`` tokens (text, spec §1.2)."""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

try:
    import transformers

    from attnlab.integrations.hf import _cache_kwarg
except ImportError:  # the test modules skip themselves, with the reason below
    transformers = None
NO_TRANSFORMERS = "transformers is not installed (the hf extra: pip install 'attnlab[hf]'; make test installs it)"

FAMILIES = ("llava", "qwen2_vl")
#: The name transformers gives a model call's cache argument and output field (``cache``; ``past_key_values``
#: before its 5.2x rename); the integration accepts both.
CACHE = _cache_kwarg() if transformers is not None else "cache"
ATTNS = ("eager", "sdpa")
PAD, BOS = 0, 1
IMAGE_TOKENS = 4  # per image: LLaVA 8x8 pixels in 4x4 patches; Qwen2-VL 4x4 patches merged 2x2
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=64, max_position_embeddings=128, bos_token_id=BOS, eos_token_id=2, pad_token_id=PAD)


def _llava(attn: str) -> torch.nn.Module:
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=8, patch_size=4, projection_dim=16)
    config = transformers.LlavaConfig(vision_config=vision, text_config=transformers.LlamaConfig(**_TEXT),
                                      image_token_index=63, vision_feature_layer=-1)
    model = transformers.LlavaForConditionalGeneration(config)
    model.set_attn_implementation(attn)
    return model


def _qwen2_vl(attn: str, **text: object) -> torch.nn.Module:
    config = transformers.Qwen2VLConfig(
        text_config=dict(_TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, **text),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=60, video_token_id=61, vision_start_token_id=58, vision_end_token_id=59)
    model = transformers.Qwen2VLForConditionalGeneration(config)
    model.set_attn_implementation(attn)
    return model


@dataclass
class Tiny:
    family: str
    model: torch.nn.Module
    image_id: int

    def _pixels(self, image: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + image)
        shape = (1, 3, 8, 8) if self.family == "llava" else (16, 3 * 2 * 2 * 2)
        return torch.randn(shape, generator=g, dtype=torch.float64)

    def _ids(self, layout: str, first_image: int) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        images: list[int] = []
        t = 0
        for run in re.findall(r"V+|T+", layout.replace(" ", "")):
            if run[0] == "T":
                ids += [BOS if t + i == 0 else 3 + (7 * (t + i)) % 50 for i in range(len(run))]
                t += len(run)
                continue
            assert len(run) % IMAGE_TOKENS == 0, layout
            for _ in range(len(run) // IMAGE_TOKENS):
                wrap = self.family == "qwen2_vl"
                ids += ([58] if wrap else []) + [self.image_id] * IMAGE_TOKENS + ([59] if wrap else [])
                images.append(first_image + len(images))
        return ids, images

    def inputs(self, *layouts: str, images: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for ``layouts`` (a left-padded batch); image ``k`` of the batch (in reading order) gets the
        pixels of image number ``images[k]`` (default ``k``)."""
        rows, order = [], []
        for layout in layouts:
            ids, imgs = self._ids(layout, len(order))
            rows.append(ids)
            order += imgs
        order = order if images is None else images
        L = max(len(r) for r in rows)
        input_ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
        out = dict(input_ids=input_ids, attention_mask=mask)
        if order:
            out["pixel_values"] = torch.cat([self._pixels(k) for k in order])
        if self.family == "qwen2_vl":
            out["mm_token_type_ids"] = (input_ids == self.image_id).int()
            if order:
                out["image_grid_thw"] = torch.tensor([[1, 4, 4]] * len(order))
        return out

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model


def cache_of(output: object) -> object:
    """The cache of a model output, under either field name."""
    return getattr(output, CACHE)


def one_decode_step(t: Tiny, patch: Any, inputs: dict) -> tuple[object, list, object, object]:
    """Prefill ``inputs`` inside ``patch`` (a context manager), then take one greedy decoding step twice from the
    prefill's cache: inside the patch on the cache itself, and after leaving it on a copy. Returns the prefill
    output, the prefill's keys and values per layer (cloned before the step), and the two step outputs."""
    with patch:
        prefill = t.model(**inputs, use_cache=True)
        kv0 = [(layer.keys.clone(), layer.values.clone()) for layer in cache_of(prefill).layers]
        step: dict = dict(input_ids=prefill.logits[:, -1:].argmax(-1))
        if t.family == "qwen2_vl":  # text positions continue from its stored rope deltas
            step["mm_token_type_ids"] = torch.zeros(1, 1, dtype=torch.int)
        outside_cache = copy.deepcopy(cache_of(prefill))
        inside = t.model(**step, **{CACHE: cache_of(prefill)}, use_cache=True)
    outside = t.model(**step, **{CACHE: outside_cache}, use_cache=True)
    return prefill, kv0, inside, outside


@functools.lru_cache(maxsize=None)
def _build(family: str, attn: str) -> Tiny:
    torch.manual_seed(0)
    model = (_llava if family == "llava" else _qwen2_vl)(attn).eval().to(torch.float64)
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    model.generation_config.pad_token_id = PAD
    return Tiny(family=family, model=model, image_id=int(model.config.image_token_id))


@pytest.fixture(params=[(f, a) for f in FAMILIES for a in ATTNS], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request: pytest.FixtureRequest) -> Tiny:
    """Each family with each supported attention implementation."""
    return _build(*request.param)


@pytest.fixture(params=FAMILIES)
def tiny_sdpa(request: pytest.FixtureRequest) -> Tiny:
    return _build(request.param, "sdpa")


@pytest.fixture
def qwen2_vl_factory():
    return _qwen2_vl


@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only: no autograd graphs (faster, and caches can be deep-copied)."""
    with torch.no_grad():
        yield


def train_tiny_char_lm(tmp: Path, *, steps: int = 2, batch_size: int = 2, layers: int = 1,
                       attention: str = "standard") -> Path:
    """A tiny character LM run on the first 4,000 characters of Tiny Shakespeare (seconds), through the command
    line, for the tests that need a real checkpoint; returns its run directory. (Gradients on: this folder runs
    every test under no_grad.)"""
    from attnlab.cli import main
    from attnlab.data import read_bundled_text

    text = tmp / "small.txt"
    text.write_text(read_bundled_text("tinyshakespeare")[:4000])
    run = tmp / "run"
    with torch.enable_grad():
        rc = main(["train", "--preset", "shakespeare-char-cpu", "--out", str(run), "--set", f"data.source={text}",
                   "--set", f"data.cache_dir={tmp / 'cache'}", "--set", f"model.n_layers={layers}", "--set",
                   "model.d_model=16", "--set", "model.n_heads=2", "--set", "model.context_len=16", "--set",
                   f"model.attention={attention}", "--set", f"eval_interval={steps}", "--set", "tensorboard=false",
                   "--steps", str(steps), "--batch-size", str(batch_size), "--no-progress"])
    assert rc == 0
    return run
