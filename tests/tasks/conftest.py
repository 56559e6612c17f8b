"""Task tests: the stand-in model and corpus of tests/train (one intra-op thread per test: tests/conftest.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))  # the stand-in model and corpus
