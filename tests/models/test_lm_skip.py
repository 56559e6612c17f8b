"""Hybrid-SKIP (spec 4.1; oracle 16 of spec 9): removing layers of a trained LM, and the bad input it refuses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from attnlab.cli import main
from attnlab.models.lm import LMConfig
from attnlab.models.lm.skip import resolve_skip_layers

VARIANTS = ["decon_mlp", "decon_approx", "decon_nonapprox", "decon_rndembqk", "decon_fixedseqqk", "decon_staticembqk"]


def _hybrid(variant: str, n_layers: int = 4, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=13, n_layers=n_layers, d_model=24, n_heads=2, context_len=16, attention=variant,
                   schedule="alternate", **kw)
    return cfg.build().double().eval()


def _make_identity(block: torch.nn.Module, part: str) -> None:
    """Zero the residual branches of ``block`` so that it is the identity (``part="block"``) or keeps only its
    FFN branch (``part="mixer"``)."""
    with torch.no_grad():
        block.attn.out_proj.weight.zero_() if hasattr(block.attn, "out_proj") else None
        if part == "block":
            for p in block.mlp.parameters():
                p.zero_()


@pytest.mark.parametrize("variant", VARIANTS)
def test_skip_equals_the_reduced_model(variant: str) -> None:
    """Oracle 16: SKIP of the variant layers == the model of the Standard layers alone (same weights)."""
    full = _hybrid(variant)
    reduced = LMConfig(vocab_size=13, n_layers=2, d_model=24, n_heads=2, context_len=16).build().double().eval()
    sd = {k: v for k, v in full.state_dict().items() if not k.startswith("blocks.") and not k.startswith("fixed_")}
    for j, i in enumerate((1, 3)):  # layers 2 and 4 (from 1) are the standard ones
        sd.update({k.replace(f"blocks.{i}.", f"blocks.{j}.", 1): v for k, v in full.state_dict().items()
                   if k.startswith(f"blocks.{i}.")})
    reduced.load_state_dict(sd)
    x = torch.randint(13, (3, 11))
    with full.skipping("variant") as layers:
        assert layers == [1, 3]
        got = full(x)
    torch.testing.assert_close(got, reduced(x), rtol=0, atol=1e-10)
    assert full._skip == (frozenset(), "block")  # restored after the block


@pytest.mark.parametrize("variant", ["decon_rndembqk", "decon_nonapprox", "decon_staticembqk"])
@pytest.mark.parametrize("part", ["block", "mixer"])
def test_skip_equals_identity_layers(variant: str, part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing a layer == making it the identity on the residual stream (the block; or the mixer only), and SKIP
    needs no fixed stream when every layer that reads it is removed."""
    model = _hybrid(variant)
    x = torch.randint(13, (2, 9))
    with model.skipping("variant", part=part):
        if part == "block" and model.fixed_stream is not None:
            monkeypatch.setattr(type(model.fixed_stream), "hidden_states",
                                lambda *a, **k: pytest.fail("SKIP ran the fixed stream"))
        got = model(x)
        monkeypatch.undo()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for i in (0, 2):
        _make_identity(model.blocks[i], part)
    torch.testing.assert_close(got, model(x), rtol=0, atol=1e-10)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # the zeroing did something


def test_skip_standard_layers_keeps_the_fixed_stream_consistent() -> None:
    """Skipping a standard layer of a RndEmbQK hybrid: the fixed stream runs through the kept blocks only, as in a
    model built without that layer (here: layer 2 made the identity changes nothing else)."""
    model = _hybrid("decon_rndembqk")
    x = torch.randint(13, (2, 7))
    with model.skipping([2]):
        got = model(x)
    _make_identity(model.blocks[1], "block")
    torch.testing.assert_close(got, model(x), rtol=0, atol=1e-10)


def test_skip_is_causal_and_mixer_differs_from_block() -> None:
    model = _hybrid("decon_nonapprox")
    x = torch.randint(13, (1, 10))
    y = x.clone()
    y[0, 6] = (y[0, 6] + 1) % 13
    for part in ("block", "mixer"):
        with model.skipping("variant", part=part):
            a, b = model(x), model(y)
        torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-12)
    with model.skipping("variant", part="block"):
        blk = model(x)
    with model.skipping("variant", part="mixer"):
        mix = model(x)
    assert not torch.allclose(blk, mix)


def test_resolve_skip_layers_and_bad_input() -> None:
    mechs = ["decon_mlp", "standard", "decon_mlp", "standard"]
    assert resolve_skip_layers("variant", mechs) == [1, 3]
    assert resolve_skip_layers("odd", mechs) == [1, 3]
    assert resolve_skip_layers("even", mechs) == [2, 4]
    assert resolve_skip_layers(" 4, 2 ", mechs) == [2, 4]
    assert resolve_skip_layers([3], mechs) == [3]
    with pytest.raises(ValueError, match=r"--skip-layers: layer 5 does not exist; this model has layers 1 to 4"):
        resolve_skip_layers("1,5", mechs, name="--skip-layers")
    with pytest.raises(ValueError, match=r"skip_layers: layers 0, 7 do not exist"):
        resolve_skip_layers([0, 7], mechs)
    with pytest.raises(ValueError, match="'variant', 'odd', 'even' or comma-separated"):
        resolve_skip_layers("middle", mechs)
    with pytest.raises(ValueError, match="twice"):
        resolve_skip_layers("2,2", mechs)
    with pytest.raises(ValueError, match="selects no layer"):
        resolve_skip_layers([], mechs)
    with pytest.raises(ValueError, match="no variant layer .* Standard-SKIP control use skip_layers=odd"):
        resolve_skip_layers("variant", ["standard"] * 4)
    model = _hybrid("decon_approx")
    with pytest.raises(ValueError, match="part must be one of"):
        with model.skipping("variant", part="ffn"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="cached decoding is not available while layers are skipped"):
        with model.skipping("variant"):
            model(torch.zeros(1, 2, dtype=torch.long), caches=model.new_caches(1))


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_eval_skip_layers_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    """`attnlab eval --skip-layers`: evaluates without changing the checkpoint; bad layers name the argument."""
    from attnlab.data import read_bundled_text

    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "cache"))
    text = tmp_path / "small.txt"
    text.write_text(read_bundled_text("tinyshakespeare")[:6000])
    out = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-char-cpu", "--mechanism", "decon_rndembqk", "--out", str(out),
                 "--set", f"data.source={text}", "--set", "model.n_layers=4", "--set", "model.schedule=alternate",
                 "--set", "model.d_model=16", "--set", "model.n_heads=2", "--set", "model.context_len=16",
                 "--set", "eval_interval=4", "--steps", "4", "--batch-size", "2", "--no-progress"]) == 0
    capsys.readouterr()
    before = _digest(out)
    assert main(["eval", "--checkpoint", str(out), "--json", "--data", str(text)]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(out), "--json", "--data", str(text), "--skip-layers", "variant"]) == 0
    skipped = json.loads(capsys.readouterr().out)
    assert skipped["skip"] == {"layers": [1, 3], "part": "block"}
    assert skipped["val"]["loss"] != full["val"]["loss"]
    assert main(["eval", "--checkpoint", str(out), "--json", "--data", str(text), "--skip-layers", "1",
                 "--skip-part", "mixer"]) == 0
    assert json.loads(capsys.readouterr().out)["skip"] == {"layers": [1], "part": "mixer"}
    assert _digest(out) == before  # no optimiser step, nothing written
    assert main(["eval", "--checkpoint", str(out), "--data", str(text), "--skip-layers", "2,9"]) == 2
    err = capsys.readouterr().err
    assert "--skip-layers: layer 9 does not exist; this model has layers 1 to 4" in err
