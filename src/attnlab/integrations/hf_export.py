"""Export a trained attnlab LM to Hugging Face ``transformers`` (``attnlab export --format hf``).

A language model whose every layer is softmax attention with the scaled dot-product score, RoPE, the plain causal
mask and no projection biases (``standard``, ``gqa``, ``mqa``) is architecturally a Llama: RMSNorm before
attention and before the SwiGLU MLP, rotate-half RoPE, an untied or tied output head. Such a checkpoint becomes a
``LlamaForCausalLM`` directory (``config.json``, ``model.safetensors``, ``generation_config.json``) that any
``transformers`` user loads with ``AutoModelForCausalLM.from_pretrained(path)``, with no attnlab installed.

The weight map (attnlab -> Llama), per layer ``i``::

    blocks.i.attn_norm.weight          -> model.layers.i.input_layernorm.weight
    blocks.i.attn.in_proj.weight rows  -> q_proj (H D rows) | k_proj (H_kv D) | v_proj (H_kv D)
    blocks.i.attn.out_proj.weight      -> model.layers.i.self_attn.o_proj.weight
    blocks.i.mlp_norm.weight           -> model.layers.i.post_attention_layernorm.weight
    blocks.i.mlp.gate_up.weight rows   -> gate_proj (F rows) | up_proj (F rows)
    blocks.i.mlp.down.weight           -> model.layers.i.mlp.down_proj.weight
    tok_emb.weight -> model.embed_tokens.weight; norm_f.weight -> model.norm.weight; lm_head.weight -> lm_head.weight

attnlab's RoPE pairs dimension ``i`` with ``i + D/2`` (rotate half), as Llama's does, so no permutation is needed.
Every other mechanism (CASTLE, linear, sparse, the deconstructed variants) has no Llama form; such a model is
exported as an :class:`~attnlab.integrations.hf_model.AttnlabForCausalLM` directory instead (``model_type =
"attnlab"``), which ``AutoModelForCausalLM.from_pretrained`` loads after ``import attnlab.integrations.hf`` and which
decodes with each mechanism's own cache. ``arch="attnlab"`` exports a standard model that way too.

``transformers`` is imported here only (``pip install 'attnlab[hf]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["llama_config", "llama_state_dict", "lm_to_llama", "check_llama_compatible", "export_hf", "LLAMA_MECHANISMS"]

#: the mechanisms whose layers are exactly Llama attention (with the LM's defaults: RoPE, no bias, scaled_dot)
LLAMA_MECHANISMS = ("standard", "gqa", "mqa")


def check_llama_compatible(lm: nn.Module) -> None:
    """Raise ``ValueError`` naming the first layer that Llama cannot express."""
    from attnlab.layers.mha import MultiHeadAttention
    from attnlab.models.lm import LM

    if not isinstance(lm, LM):
        raise ValueError(f"only attnlab's decoder-only LM exports to a Llama, got {type(lm).__name__}")
    heads = {(b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim) for b in lm.blocks
             if isinstance(b.attn, MultiHeadAttention)}
    for i, (block, name) in enumerate(zip(lm.blocks, lm.mechanisms), start=1):
        a = block.attn
        why = None
        if type(a) is not MultiHeadAttention:
            why = f"its {type(a).__name__} has no Llama form"
        elif a.score != "scaled_dot":
            why = f"its score is {a.score!r} (Llama: scaled dot product)"
        elif not a.rope:
            why = "it has no RoPE"
        elif a.mask is None or not a.mask.plain_causal:
            why = f"its mask is {a.mask} (Llama: plain causal)"
        elif a.in_proj.bias is not None:
            why = "its projections have biases"
        elif float(a.rope_base) != float(lm.config.rope_base):
            why = f"its RoPE base {a.rope_base} differs from the model's rope_base={lm.config.rope_base} (Llama has one)"
        elif len(heads) != 1:
            why = "the layers have different head layouts"
        if why is not None:
            raise ValueError(f"layer {i} ({name!r}) cannot be exported as a Llama: {why}; only LMs whose every layer "
                             f"is one of {', '.join(LLAMA_MECHANISMS)} export to LlamaForCausalLM (export it as an "
                             "AttnlabForCausalLM: arch='attnlab', --as attnlab)")


def llama_config(lm: nn.Module, *, check: bool = True, **extra: Any) -> Any:
    """The ``LlamaConfig`` of an exportable attnlab LM (:func:`check_llama_compatible`; ``check=False`` skips it, e.g.
    for a sparse-mask LM whose Llama twin runs with an ``attnlab-*`` attention implementation)."""
    from transformers import LlamaConfig

    if check:
        check_llama_compatible(lm)
    c = lm.config
    a = lm.blocks[0].attn
    return LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.resolved_ffn_hidden,
        num_hidden_layers=c.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
        head_dim=a.head_dim, max_position_embeddings=c.context_len, rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(c.rope_base)},
        tie_word_embeddings=bool(c.tie_embeddings), attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra,
    )


def llama_state_dict(lm: nn.Module) -> dict[str, torch.Tensor]:
    """attnlab's parameters under Llama's names (see the module docstring)."""
    a = lm.blocks[0].attn
    H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
    F = lm.config.resolved_ffn_hidden
    out = {"model.embed_tokens.weight": lm.tok_emb.weight, "model.norm.weight": lm.norm_f.weight}
    if not lm.config.tie_embeddings:
        out["lm_head.weight"] = lm.lm_head.weight
    for i, b in enumerate(lm.blocks):
        p = f"model.layers.{i}."
        q, k, v = b.attn.in_proj.weight.split((H * D, Hkv * D, Hkv * D))
        gate, up = b.mlp.gate_up.weight.split((F, F))
        out.update({
            p + "input_layernorm.weight": b.attn_norm.weight, p + "post_attention_layernorm.weight": b.mlp_norm.weight,
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": b.attn.out_proj.weight,
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": b.mlp.down.weight,
        })
    return {k: t.detach().clone().contiguous() for k, t in out.items()}


def lm_to_llama(lm: nn.Module, *, attn_implementation: str = "eager", check: bool = True) -> Any:
    """A ``LlamaForCausalLM`` (float32, eval mode) holding ``lm``'s weights; its logits equal attnlab's. With
    ``check=False`` and an ``attnlab-*`` ``attn_implementation`` (:mod:`attnlab.integrations.hf_masks`) a sparse-mask
    LM gets its Llama twin."""
    from transformers import LlamaForCausalLM

    cfg = llama_config(lm, check=check)
    cfg._attn_implementation = attn_implementation
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(llama_state_dict(lm), strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:  # pragma: no cover - a transformers release that renamed Llama's modules
        raise RuntimeError(f"the Llama of this transformers release has other parameter names: missing {missing}, "
                           f"unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.to(torch.float32).eval()


def export_hf(checkpoint: str | Path, out: str | Path, *, arch: str = "auto", force: bool = False) -> tuple[Path, str]:
    """Write the checkpoint (or run directory) ``checkpoint`` as a transformers model directory ``out``; returns it
    and the class written.

    ``arch``: ``"auto"`` (``LlamaForCausalLM`` when every layer has a Llama form, else ``AttnlabForCausalLM``),
    ``"llama"`` (refused, naming the layer, when one has none) or ``"attnlab"``.

    ``out`` must not exist (or be empty), unless ``force`` moves it aside to ``out.old-<time>`` (nothing written is
    ever deleted). The tokenizer is written in its Hugging Face form where it has one (``char`` and ``gpt2``:
    :mod:`attnlab.integrations.hf_tokenizer`), so that ``AutoTokenizer.from_pretrained(out)`` encodes as attnlab
    does. Besides the transformers files, ``attnlab_export.json`` records the source checkpoint, its run config,
    the attnlab tokenizer and whether the Hugging Face tokenizer files were written.
    """
    from attnlab.train.loading import load_trained
    from attnlab.train.outdir import prepare_out_dir

    if arch not in ("auto", "llama", "attnlab"):
        raise ValueError(f"arch must be 'auto', 'llama' or 'attnlab', got {arch!r}")
    trained = load_trained(checkpoint, device="cpu", task="lm")
    if arch == "auto":
        try:
            check_llama_compatible(trained.model)
            arch = "llama"
        except ValueError:
            arch = "attnlab"
    if arch == "llama":
        model = lm_to_llama(trained.model)  # refuses a mechanism without a Llama form before anything is written
    else:
        from attnlab.integrations.hf_model import lm_to_hf

        model = lm_to_hf(trained.model)
    from attnlab.integrations.hf_tokenizer import hf_tokenizer

    hf_tok = hf_tokenizer(trained.tokenizer)  # (built before anything is written: a failure leaves no half export)
    out = Path(out)
    prepare_out_dir(out, resume=False, force=force)
    model.save_pretrained(out)
    kind = type(model).__name__
    if hf_tok is not None:
        hf_tok.save_pretrained(out)
    meta = {"source_checkpoint": str(trained.path), "format": kind, "run_config": trained.config.to_dict(),
            "tokenizer": trained.state.get("task_state", {}).get("tokenizer"),  # as stored: no data is read
            "hf_tokenizer": hf_tok is not None}
    (out / "attnlab_export.json").write_text(json.dumps(meta, indent=1))
    return out, kind
