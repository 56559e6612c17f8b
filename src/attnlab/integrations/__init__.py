"""Bridges to other libraries, each imported on demand and never by the core.

* :mod:`attnlab.integrations.hf`: the future-aware vision-language masks and the light "+merge" variant on
  Hugging Face transformers VLMs (``pip install 'attnlab[hf]'``).

This package imports nothing itself, so ``import attnlab.integrations`` stays cheap and needs no extra.
"""
