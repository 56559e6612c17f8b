"""attnlab.ops.castle."""
