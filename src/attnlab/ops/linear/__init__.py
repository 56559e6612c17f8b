"""attnlab.ops.linear."""
