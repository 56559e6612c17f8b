"""attnlab: attention mechanisms behind one API, proven equal to their references, trained and measured."""

__version__ = "0.1.0"
