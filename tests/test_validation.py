"""attnlab._validation: the shared argument checks, their messages and their equivalence with the inline checks
they replaced in the layers, caches and masks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab._validation import (
    check_bool,
    check_float,
    check_head_geometry,
    check_int,
    check_layer_context,
    check_layer_input,
    check_matches_param,
    resolve_device_dtype,
)

_VALUES = st.one_of(
    st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=2)
)


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_check_float_equals_the_replaced_inline_checks(v: object) -> None:
    number = not isinstance(v, bool) and isinstance(v, (int, float))
    cases = [  # (call, old inline predicate "is valid", old message)
        (lambda: check_float("dropout", v, low=0, high=1),
         number and 0 <= v < 1, f"dropout must be a float in [0, 1), got {v!r}"),  # type: ignore[operator]
        (lambda: check_float("rope_base", v, low=1, low_inclusive=False),
         number and v > 1, f"rope_base must be a number > 1, got {v!r}"),  # type: ignore[operator]
        (lambda: check_float("eps", v, low=0, high=math.inf),
         number and 0 <= v < math.inf, f"eps must be a finite float >= 0, got {v!r}"),  # type: ignore[operator]
    ]
    for call, valid, message in cases:
        if valid:
            assert call() is v
        else:
            with pytest.raises(ValueError) as info:
                call()
            assert str(info.value) == message


@settings(max_examples=100, deadline=None)
@given(_VALUES, st.integers(0, 2))
def test_check_int_and_bool(v: object, minimum: int) -> None:
    if not isinstance(v, bool) and isinstance(v, int) and v >= minimum:
        assert check_int("n", v, minimum) is v
    else:
        with pytest.raises(ValueError, match=rf"^n must be an int >= {minimum}, got "):
            check_int("n", v, minimum)
    if isinstance(v, bool):
        assert check_bool("flag", v) is v
    else:
        with pytest.raises(ValueError, match=r"^flag must be a bool, got "):
            check_bool("flag", v)


def test_check_float_interval_brackets() -> None:
    assert check_float("p", 1.0, low=0, high=1, high_inclusive=True) == 1.0
    with pytest.raises(ValueError, match=r"^p must be a float in \(0, 1\], got 0$"):
        check_float("p", 0, low=0, high=1, low_inclusive=False, high_inclusive=True)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 4, None), "d_model must be an int >= 1, got 0"),
        ((24, True, None), "n_heads must be an int >= 1, got True"),
        ((24, 5, None), "n_heads=5 must divide d_model=24 (or pass head_dim explicitly)"),
        ((24, 4, 0), "head_dim must be an int >= 1, got 0"),
        ((24, 4, None, 0), "n_kv_heads must be an int >= 1, got 0"),
        ((24, 4, None, 3), "n_kv_heads=3 must divide n_heads=4"),
    ],
)
def test_check_head_geometry_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_head_geometry(*args)
    assert str(info.value) == message


def test_check_head_geometry_accepts() -> None:
    check_head_geometry(24, 5, 8)  # explicit head_dim: no divisibility needed
    check_head_geometry(24, 4, None, 2)
    check_head_geometry(24, 4, None, None)


def test_check_layer_input_and_context() -> None:
    w = torch.zeros(3, 6, dtype=torch.float64)
    x = torch.zeros(2, 3, 6, dtype=torch.float64)
    assert check_layer_input(x, d_model=6, reference_param=w) is x
    for bad, message in [
        ([1.0], "x must be a torch.Tensor of shape (B, T, d_model=6), got list"),
        (torch.zeros(3, 6, dtype=torch.float64), "x must have shape (B, T, d_model=6), got (3, 6)"),
        (torch.zeros(2, 3, 5, dtype=torch.float64), "x must have shape (B, T, d_model=6), got (2, 3, 5)"),
        (torch.zeros(2, 0, 6, dtype=torch.float64), "x must have B >= 1 and T >= 1, got shape (2, 0, 6)"),
        (torch.zeros(2, 3, 6), "x dtype must be the layer's parameter dtype torch.float64, got torch.float32"),
        (torch.zeros(2, 3, 6, dtype=torch.float64, device="meta"),
         "x device must be the layer's parameter device cpu, got meta"),
    ]:
        with pytest.raises(ValueError) as info:
            check_layer_input(bad, d_model=6, reference_param=w)
        assert str(info.value) == message
    # without a reference parameter dtype and device are the caller's business
    assert check_layer_input(x.float(), d_model=6, reference_param=None).dtype == torch.float32
    with pytest.raises(ValueError, match=r"^context dtype must be the layer's parameter dtype torch.float64"):
        check_matches_param("context", x.float(), w)
    assert check_layer_context(x, d_model=6, batch_size=2) is x
    with pytest.raises(ValueError, match=r"^context must have shape \(B=1, S >= 1, d_model=6\), got \(2, 3, 6\)$"):
        check_layer_context(x, d_model=6, batch_size=1)
    with pytest.raises(ValueError, match=r"^context must be a torch.Tensor of shape \(B, S, d_model=6\), got int$"):
        check_layer_context(3, d_model=6, batch_size=2)


def test_resolve_device_dtype() -> None:
    assert resolve_device_dtype(None, None) == (torch.device("cpu"), torch.get_default_dtype())
    assert resolve_device_dtype("cpu", torch.float64) == (torch.device("cpu"), torch.float64)
    with pytest.raises(ValueError, match=r"^dtype must be a floating-point dtype, got torch.int64$"):
        resolve_device_dtype(None, torch.int64)
