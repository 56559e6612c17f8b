"""Decoding caches behind one interface (:class:`AttentionCache`)."""

from attnlab.cache.base import AttentionCache

__all__ = ["AttentionCache"]
