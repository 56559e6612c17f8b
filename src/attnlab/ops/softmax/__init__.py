"""attnlab.ops.softmax."""
