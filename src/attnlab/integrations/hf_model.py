"""Any attnlab language model inside Hugging Face ``transformers``: :class:`AttnlabForCausalLM`.

A ``PreTrainedModel`` + ``GenerationMixin`` that holds an attnlab :class:`~attnlab.models.lm.LM` (any mechanism:
CASTLE, linear, sparse, sliding window, the deconstructed variants, standard), with its config in
:class:`AttnlabConfig` (``model_type = "attnlab"``). Importing this module (or :mod:`attnlab.integrations.hf`)
registers both with ``AutoConfig`` and ``AutoModelForCausalLM``, so that ``AutoModelForCausalLM.from_pretrained(path)``
loads an ``attnlab export`` directory and ``generate()`` works.

Decoding uses each mechanism's own cache (KV, sliding KV, UQ-KV, recurrent state), wrapped in :class:`AttnlabCache`:
``generate()`` hands it back at every step and :meth:`AttnlabForCausalLM.prepare_inputs_for_generation` feeds only
the tokens the cache has not seen. A model with a mechanism that has no cache recomputes the whole sequence per token.
Padding is not supported (attnlab's LM has no padding mask on its generic path): an ``attention_mask`` with a zero
is refused.

``transformers`` is imported here (``pip install 'attnlab[hf]'``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from attnlab.layers import registry
from attnlab.models.lm import LMConfig

__all__ = ["AttnlabConfig", "AttnlabForCausalLM", "AttnlabCache", "lm_to_hf", "CACHE_FIELD"]


class AttnlabConfig(PretrainedConfig):
    """The transformers config of an attnlab LM: ``lm_config`` is :meth:`LMConfig.to_dict` (plain values)."""

    model_type = "attnlab"

    def __init__(self, lm_config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.lm_config = dict(lm_config or {})
        if self.lm_config:
            lm = LMConfig.from_dict(self.lm_config)  # validated here: a bad file fails at load, naming the key
            kwargs.setdefault("vocab_size", lm.vocab_size)
            kwargs.setdefault("tie_word_embeddings", lm.tie_embeddings)
        super().__init__(**kwargs)

    def lm(self) -> LMConfig:
        return LMConfig.from_dict(self.lm_config)


class AttnlabCache:
    """The per-layer attnlab caches of one ``generate()`` call, and how many positions they hold."""

    def __init__(self, caches: list[Any]) -> None:
        self.caches = caches

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.caches[0].seq_len) if self.caches else 0


#: what this transformers release calls the cache in model outputs and calls (``cache``; ``past_key_values`` before)
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class AttnlabForCausalLM(PreTrainedModel, GenerationMixin):
    """An attnlab LM as a transformers causal LM (module docstring)."""

    config_class = AttnlabConfig
    base_model_prefix = "lm"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm.lm_head.weight": "lm.tok_emb.weight"}

    def __init__(self, config: AttnlabConfig) -> None:
        super().__init__(config)
        self.lm = config.lm().build()
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: attnlab's LM initialises itself (GPT-2 init) and ``from_pretrained`` loads the weights."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # attnlab caches, made in prepare_inputs_for_generation
        return False

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.lm.tok_emb

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm.lm_head

    @property
    def cacheable(self) -> bool:
        """Whether every layer has a decoding cache."""
        return all(registry.get(m).cache is not None for m in self.lm.mechanisms)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                cache: AttnlabCache | None = None, past_key_values: AttnlabCache | None = None,
                use_cache: bool | None = None, labels: Tensor | None = None, inputs_embeds: Tensor | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits of ``input_ids`` ``(B, T)`` (the tokens after what ``cache`` holds, if given)."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("attention_mask has zeros: padded batches are not supported by AttnlabForCausalLM "
                             "(attnlab's LM has no padding mask on its generic path); generate one prompt at a time "
                             "or prompts of equal length")
        state = cache if cache is not None else past_key_values
        if state is None and use_cache and self.cacheable:
            B = (input_ids if input_ids is not None else inputs_embeds).shape[0]  # type: ignore[union-attr]
            p = next(self.parameters())
            state = AttnlabCache(self.lm.new_caches(B, device=p.device, dtype=p.dtype))
        logits = self.lm(input_ids, inputs_embeds=inputs_embeds, caches=state.caches if state is not None else None)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here; -100 is ignored
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: state})

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``generate``; beam search is refused (:class:`AttnlabCache` cannot reorder its caches)."""
        cfg = kwargs.get("generation_config") or self.generation_config
        beams = kwargs.get("num_beams", getattr(cfg, "num_beams", 1)) or 1
        if int(beams) > 1:
            raise ValueError(f"num_beams={beams}: beam search is not supported by AttnlabForCausalLM (its mechanisms' "
                             "caches cannot be reordered yet); use greedy or sampled decoding")
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: Tensor, cache: AttnlabCache | None = None,
                                      past_key_values: AttnlabCache | None = None,
                                      attention_mask: Tensor | None = None, use_cache: bool | None = None,
                                      **kwargs: Any) -> dict[str, Any]:
        """The tokens the cache has not seen yet (all of them without a cache), and the cache."""
        state = cache if cache is not None else past_key_values
        if state is not None:
            input_ids = input_ids[:, state.get_seq_length():]
        return {"input_ids": input_ids, CACHE_FIELD: state, "attention_mask": attention_mask,
                "use_cache": use_cache if use_cache is not None else True}


def lm_to_hf(lm: torch.nn.Module) -> AttnlabForCausalLM:
    """An :class:`AttnlabForCausalLM` (eval mode) holding attnlab LM ``lm``'s weights and buffers."""
    model = AttnlabForCausalLM(AttnlabConfig(lm_config=lm.config.to_dict()))
    model.lm.load_state_dict(lm.state_dict())
    return model.eval()


AutoConfig.register("attnlab", AttnlabConfig, exist_ok=True)
AutoModelForCausalLM.register(AttnlabConfig, AttnlabForCausalLM, exist_ok=True)
