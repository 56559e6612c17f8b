"""Trainer tests: the stand-in model lives next to them (one intra-op thread per test: tests/conftest.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
