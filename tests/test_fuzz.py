"""Property-based tests: the CLI and the public API meet generated bad arguments with a clear refusal.

The contract (issue 8, section 8): a bad argument ends in exit code 2 (the CLI) or a ``ValueError`` /
``TypeError`` (the API) whose message names the argument; never another exception type, and never a
non-finite result without an error. A generated value that happens to be valid must give a valid, finite
result. Hypothesis generates the values; each property runs a bounded number of examples so the module stays
within a few tens of seconds on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnlab.cli import main
from attnlab.train.presets import get_preset

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# values that are wrong for almost every numeric setting, and random numbers of every kind
BAD_WORDS = ["nan", "inf", "-inf", "NaN", "1e400", "-1e400", "abc", "", "[1, 2]", "{}", "0x1G", "1/2", "None",
             "\"3\"", "-0.0", "true"]
NUMBERS = st.one_of(
    st.sampled_from(BAD_WORDS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _numeric_keys(preset: str) -> list[str]:
    flat = _flatten(get_preset(preset).to_dict())
    return sorted(k for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr); an argparse exit counts as its code."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refuses with SystemExit(2)
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def _all_finite(x: Any) -> bool:
    if isinstance(x, dict):
        return all(_all_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_all_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


@pytest.mark.parametrize("preset", ["shakespeare-char-cpu", "multi30k-quick"])
def test_train_set_refuses_bad_numbers_naming_the_key(preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = _numeric_keys(preset)
    assert len(keys) >= 15, keys

    @FUZZ
    @given(key=st.sampled_from(keys), value=NUMBERS)
    def prop(key: str, value: str) -> None:
        rc, out, err = _run_cli(["train", "--preset", preset, "--set", f"{key}={value}", "--print-config", "json"],
                                capsys)
        if rc == 0:  # the value was valid: the resolved config holds it, finite
            cfg = json.loads(out)
            assert _all_finite(cfg), (key, value)
        else:
            assert rc == 2, (key, value, rc, err)
            assert "error" in err and key.rsplit(".", 1)[-1] in err, (key, value, err)
            assert "Traceback" not in err

    prop()


@FUZZ
@given(option=st.sampled_from(["--steps", "--batch-size"]), value=NUMBERS)
def test_train_int_options_refuse_bad_values(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run_cli(["train", "--preset", "shakespeare-char-cpu", option, value, "--print-config"], capsys)
    if rc == 0:
        assert int(value) >= 1
    else:
        assert rc == 2 and "error" in err
        name = option.lstrip("-").replace("-", "_")
        assert option in err or name in err, (option, value, err)


@FUZZ
@given(seeds=st.text(alphabet="0123456789,- .ax", max_size=12),
       variants=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_, ", max_size=16))
def test_compare_seeds_and_variants(seeds: str, variants: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--preset", "tiny", "--seeds", seeds, "--mechanisms", variants, "--print-config", "json"]
    rc, out, err = _run_cli(argv, capsys)
    if rc == 0:
        cfg = json.loads(out)
        assert cfg["seeds"] and all(isinstance(s, int) and s >= 0 for s in cfg["seeds"])
        assert cfg["variants"]
    else:
        assert rc == 2 and "error" in err and ("--seeds" in err or "--mechanisms" in err
                                               or "seed" in err or "mechanism" in err), (seeds, variants, err)


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step character LM run (seconds) for the commands that need a checkpoint."""
    from attnlab.data import read_bundled_text

    tmp = tmp_path_factory.mktemp("fuzz")
    text = tmp / "small.txt"
    text.write_text(read_bundled_text("tinyshakespeare")[:4000])
    out = tmp / "run"
    rc = main(["train", "--preset", "shakespeare-char-cpu", "--out", str(out), "--set", f"data.source={text}",
               "--set", f"data.cache_dir={tmp / 'cache'}", "--set", "model.n_layers=1", "--set",
               "model.d_model=16", "--set", "model.n_heads=2", "--set", "model.context_len=16", "--set",
               "eval_interval=2", "--set", "tensorboard=false", "--steps", "2", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    return out


@settings(FUZZ, max_examples=12)  # each example loads the checkpoint: a second or two
@given(option=st.sampled_from(["--temperature", "--top-k", "--top-p", "--max-new-tokens", "--num-samples", "--seed"]),
       value=NUMBERS)
def test_generate_refuses_bad_options(option: str, value: str, lm_checkpoint: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--checkpoint", str(lm_checkpoint), "--prompt", "ab", option, value]
    if option != "--max-new-tokens":
        argv += ["--max-new-tokens", "3"]
    try:
        as_number = float(value)
    except ValueError:
        as_number = math.nan
    if option in ("--max-new-tokens", "--num-samples") and math.isfinite(as_number) and as_number > 50:
        return  # a valid but long generation (or a huge batch of them): not what this property is about
    rc, out, err = _run_cli(argv, capsys)
    if rc != 0:
        assert rc == 2 and "error" in err, (option, value, err)
        name = option.lstrip("-").replace("-", "_")
        assert option in err or name in err or option.lstrip("-") in err, (option, value, err)
        assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ the API
ARGS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
)


@FUZZ
@given(name=st.sampled_from(["scale", "q_offset", "dropout_p", "score", "impl"]), value=ARGS)
def test_softmax_attention_refuses_or_stays_finite(name: str, value: Any) -> None:
    from attnlab.ops.softmax import softmax_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    kwargs: dict[str, Any] = {name: value}
    if name == "q_offset":
        from attnlab.masks import causal

        kwargs["mask"] = causal()
    try:
        out = softmax_attention(q, k, v, **kwargs)
    except (ValueError, TypeError) as e:
        assert name in str(e), (name, value, str(e))
        return
    if name == "scale" and isinstance(value, (int, float)) and abs(value) > 1e300:
        pass  # an enormous finite scale is allowed; rows then become one-hot, still finite below
    assert torch.isfinite(out).all(), (name, value)


@FUZZ
@given(name=st.sampled_from(["chunk_size", "eps", "impl", "feature_map", "causal"]), value=ARGS)
def test_linear_attention_refuses_or_stays_finite(name: str, value: Any) -> None:
    from attnlab.ops.linear import linear_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    try:
        out, state = linear_attention(q, k, v, **{name: value})
    except (ValueError, TypeError) as e:
        assert name in str(e), (name, value, str(e))
        return
    if name == "eps" and value == 0:
        return  # eps = 0 is allowed: the normaliser of positive features is positive, but may underflow
    assert torch.isfinite(out).all() and torch.isfinite(state.kv).all(), (name, value)


@FUZZ
@given(name=st.sampled_from(["n_layers", "d_model", "n_heads", "context_len", "dropout", "vocab_size",
                             "head_dim", "ffn_hidden", "rope_base", "norm_eps"]), value=ARGS)
def test_lm_config_refuses_bad_fields_by_name(name: str, value: Any) -> None:
    from attnlab.models import LMConfig

    base = {"vocab_size": 11, "n_layers": 1, "d_model": 16, "n_heads": 2, "context_len": 8}
    try:
        LMConfig(**{**base, name: value})
    except (ValueError, TypeError) as e:
        assert name in str(e), (name, value, str(e))


@FUZZ
@given(name=st.sampled_from(["window", "stride", "block"]), value=ARGS)
def test_mask_constructors_refuse_bad_sizes_by_name(name: str, value: Any) -> None:
    from attnlab import masks

    make = {"window": masks.sliding_window, "stride": masks.strided, "block": masks.fixed}[name]
    try:
        m = make(value)
    except (ValueError, TypeError) as e:
        assert name in str(e), (name, value, str(e))
        return
    d = masks.dense(m, 6, 6)
    assert d.dtype == torch.bool and d.shape == (6, 6)


BAD_SIZES = st.one_of(st.sampled_from(BAD_WORDS), st.integers(max_value=0).map(str))


@settings(FUZZ, max_examples=25)
@given(option=st.sampled_from(["--seq-len", "--batch-size", "--d-model", "--n-heads", "--seed"]), value=BAD_SIZES)
def test_verify_refuses_bad_sizes(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    if option == "--seed" and value.lstrip("-").isdigit() and int(value) == 0:
        return  # seed 0 is valid (and would run every check)
    rc, _, err = _run_cli(["verify", "standard", "--no-progress", option, value], capsys)
    assert rc == 2 and "error" in err, (option, value, err)
    assert option in err or option.lstrip("-").replace("-", "_") in err, (option, value, err)


@settings(FUZZ, max_examples=25)
@given(option=st.sampled_from(["--lengths", "--batch-size", "--d-model", "--n-heads", "--repeats", "--budget"]),
       value=BAD_SIZES)
def test_bench_refuses_bad_sizes(option: str, value: str, tmp_path_factory: pytest.TempPathFactory,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path_factory.mktemp("bench")
    rc, _, err = _run_cli(["bench", "--no-progress", "--quick", "--out", str(out), option, value], capsys)
    assert rc == 2 and "error" in err, (option, value, err)
    names = {"--budget": "budget", "--lengths": "lengths"}
    assert option in err or names.get(option, option.lstrip("-").replace("-", "_")) in err, (option, value, err)
    assert not any(out.iterdir()), "a refused benchmark wrote results"
