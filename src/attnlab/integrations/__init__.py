"""Bridges to other libraries, each imported on demand and never by the core.

* :mod:`attnlab.integrations.hf`: the future-aware vision-language masks and the light "+merge" variant on
  Hugging Face transformers VLMs (``pip install 'attnlab[hf]'``).
* :mod:`attnlab.integrations.hf_export`: an attnlab LM as a ``LlamaForCausalLM`` directory (standard attention) or an
  :class:`~attnlab.integrations.hf_model.AttnlabForCausalLM` one (any mechanism, with its own cache;
  :mod:`attnlab.integrations.hf_model`), ``attnlab export --format hf``.
* :mod:`attnlab.integrations.hf_masks`: attnlab masks in stock transformers models as
  ``attn_implementation="attnlab-<mechanism>"`` or ``"attnlab-documents"`` (packed sequences).
* :mod:`attnlab.integrations.lm_eval`: the lm-evaluation-harness model ``attnlab`` (``pip install 'attnlab[eval]'``).

This package imports nothing itself, so ``import attnlab.integrations`` stays cheap and needs no extra.
"""
