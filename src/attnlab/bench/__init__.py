"""attnlab.bench."""
