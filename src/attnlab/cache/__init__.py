"""Decoding caches behind one interface (:class:`AttentionCache`).

* :class:`KVCache`: keys and values of every position (softmax attention);
* :class:`SlidingKVCache`: only the last ``window`` keys and values (sliding-window masks);
* :class:`RecurrentStateCache`: the fixed-size state of linear attention;
* :class:`UQKVCache`: CASTLE's U, Q^U, K^C, V^C (spec section 3).
"""

from attnlab.cache.base import AttentionCache
from attnlab.cache.kv import KVCache, SlidingKVCache
from attnlab.cache.recurrent import RecurrentStateCache
from attnlab.cache.uqkv import UQKVCache

__all__ = ["AttentionCache", "KVCache", "SlidingKVCache", "RecurrentStateCache", "UQKVCache"]
