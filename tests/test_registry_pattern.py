"""attnlab.registry.Registry: unique names, lookups that list the valid names, registration order, lazy loading."""

from __future__ import annotations

import pytest

from attnlab.registry import Registry


def test_register_get_names_items_in_registration_order() -> None:
    reg: Registry[int] = Registry("widget")
    assert reg.register("b", 2) == 2
    reg.register("a", 1)
    reg.register("c", 3)
    assert reg.names() == ["b", "a", "c"] and reg.items() == [2, 1, 3]
    assert reg.get("a") == 1 and "c" in reg and "z" not in reg and len(reg) == 3


def test_duplicates_and_unknown_names_are_refused_with_the_valid_names() -> None:
    reg: Registry[int] = Registry("widget")
    for i, n in enumerate(["c", "a", "b"]):
        reg.register(n, i)
    with pytest.raises(ValueError, match=r"^widget 'a' is already registered$"):
        reg.register("a", 9)
    assert reg.get("a") == 1  # the refused item did not replace the first
    with pytest.raises(ValueError, match=r"^unknown widget 'foo'; registered: a, b, c$"):
        reg.get("foo")
    assert reg.get_all(["b", "c"]) == [2, 0]
    with pytest.raises(ValueError, match=r"^unknown widget 'foo'; registered: a, b, c$"):
        reg.get_all(["a", "foo"])
    with pytest.raises(ValueError, match=r"^unknown widgets 'foo', 'bar'; registered: a, b, c$"):
        reg.get_all(["foo", "a", "bar"])  # every unknown name at once


def test_the_loader_runs_once_before_the_first_read_and_not_on_register() -> None:
    calls = []

    def load() -> None:
        calls.append(1)
        reg.register("builtin", 0)
        assert "builtin" in reg.names()  # reading while loading does not load again

    reg: Registry[int] = Registry("widget", load=load)
    reg.register("plugin", 1)
    assert calls == []
    assert reg.names() == ["plugin", "builtin"] and calls == [1]
    reg.get("builtin"), reg.items(), "x" in reg
    assert calls == [1]


def test_a_failed_load_is_retried() -> None:
    calls = []

    def load() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("boom")

    reg: Registry[int] = Registry("widget", load=load)
    with pytest.raises(ImportError, match="boom"):
        reg.names()
    assert reg.names() == [] and calls == [1, 1]


def test_the_three_registries_of_attnlab_are_registries() -> None:
    from attnlab.bench.core import SUITES
    from attnlab.layers.registry import MECHANISMS
    from attnlab.verify.core import CHECKS

    for reg, name in ((MECHANISMS, "standard"), (SUITES, "mechanisms"), (CHECKS, "causality-gradient")):
        assert isinstance(reg, Registry) and name in reg.names()
    with pytest.raises(ValueError, match=r"^unknown benchmark suite 'nope'; registered: castle, deconstructed, forecast, future, mechanisms, objectives"):
        SUITES.get("nope")


def test_a_loader_may_be_a_module_name(monkeypatch) -> None:
    import sys
    import types

    reg: Registry[int] = Registry("widget", load="attnlab_test_plugin_widgets")
    plugin = types.ModuleType("attnlab_test_plugin_widgets")
    monkeypatch.setitem(sys.modules, "attnlab_test_plugin_widgets", plugin)  # "imported": registers nothing
    reg.register("a", 1)
    assert reg.names() == ["a"]
    with pytest.raises(ModuleNotFoundError):
        Registry("widget", load="attnlab_no_such_module").names()
