"""Bridges to other libraries, each imported on demand and never by the core.

* :mod:`attnlab.integrations.hf`: the future-aware vision-language masks and the light "+merge" variant on
  Hugging Face transformers VLMs (``pip install 'attnlab[hf]'``).
* :mod:`attnlab.integrations.hf_export`: a standard-attention attnlab LM as a ``LlamaForCausalLM`` directory
  (``attnlab export --format hf``).

This package imports nothing itself, so ``import attnlab.integrations`` stays cheap and needs no extra.
"""
