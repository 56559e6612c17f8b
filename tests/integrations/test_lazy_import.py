"""The hf integration is optional: importing attnlab (core, masks, ops, models, integrations) never imports
transformers, whether or not it is installed."""

from __future__ import annotations

import subprocess
import sys


def test_importing_attnlab_does_not_import_transformers() -> None:
    code = ("import sys, attnlab, attnlab.integrations, attnlab.masks, attnlab.ops.future, attnlab.models.lm, "
            "attnlab.cli; assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
