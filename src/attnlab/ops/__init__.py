"""attnlab.ops."""
