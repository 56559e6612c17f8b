"""The ``lm_eval.models`` entry point of the installed package: lm-eval releases with entry-point plugins (upstream
PR #4013, after 0.4.13) resolve ``--model attnlab`` through it. Checked here on the installed metadata and on the
installed lm-eval's own :class:`~lm_eval.api.registry.Registry`, holding the entry point as a lazy placeholder the way
the harness does."""

from __future__ import annotations

import importlib.metadata as md

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (attnlab[eval], dev extra)")

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import Registry  # noqa: E402
from lm_eval.models import MODEL_MAPPING  # noqa: E402

from attnlab.integrations.lm_eval import AttnlabEvalLM  # noqa: E402

TARGET = "attnlab.integrations.lm_eval:AttnlabEvalLM"


def _entry_point() -> md.EntryPoint:
    """The installed ``attnlab`` entry point of the ``lm_eval.models`` group (exactly one)."""
    eps = [ep for ep in md.entry_points(group="lm_eval.models") if ep.name == "attnlab"]
    assert len(eps) == 1, f"expected one lm_eval.models entry point named attnlab, found {eps}"
    return eps[0]


def test_lm_eval_entry_point_is_installed_and_loads_the_adapter() -> None:
    ep = _entry_point()
    assert ep.value == TARGET
    assert ep.load() is AttnlabEvalLM
    assert issubclass(ep.load(), LM)
    # built-in names take precedence over plugins: no lm-eval model of this name may shadow ours
    assert "attnlab" not in MODEL_MAPPING


def test_lm_eval_registry_resolves_the_entry_point_placeholder() -> None:
    ep = _entry_point()
    reg: Registry[type[LM]] = Registry("model", base_cls=LM)
    reg.register("attnlab", target=ep)
    assert isinstance(dict(reg.items())["attnlab"], md.EntryPoint)  # lazy until looked up
    assert reg.get("attnlab") is AttnlabEvalLM
    reg.register("attnlab")(AttnlabEvalLM)  # the decorator once more, after the lookup: the same class, no clash
    assert reg.get("attnlab") is AttnlabEvalLM
    # The decorator's upgrade of a placeholder needs "module:attr" to name the class. With the string placeholder
    # lm-eval 0.4.13 upgrades it; PR #4013 does the same for an unresolved EntryPoint (0.4.13 cannot compare an
    # EntryPoint with a class, so that case is not asserted here).
    assert f"{ep.module}:{ep.attr}" == f"{AttnlabEvalLM.__module__}:{AttnlabEvalLM.__name__}"
    by_path: Registry[type[LM]] = Registry("model", base_cls=LM)
    by_path.register("attnlab", target=f"{ep.module}:{ep.attr}")
    by_path.register("attnlab")(AttnlabEvalLM)
    assert dict(by_path.items())["attnlab"] is AttnlabEvalLM
