"""Influence maps of the future-aware masks (spec future_mask.md §7 E2, ``attnlab vlm influence``): each mask opens
exactly its future pairs at layer 1, causal stays lower-triangular at every layer, the checks can fail, the command
writes its files and refuses bad options naming them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnlab.bench.influence import QUICK, InfluenceConfig, influence_checks, influence_maps
from attnlab.cli import main


@pytest.fixture(scope="module")
def maps():
    return influence_maps(QUICK)


def _future(m: torch.Tensor) -> torch.Tensor:
    L = m.shape[0]
    return (m > 0) & torch.ones(L, L, dtype=torch.bool).triu(1)  # (L, L): opened pairs j > i


def test_causal_is_lower_triangular_at_every_layer(maps) -> None:
    for m in maps["c"]:
        assert not _future(m).any()  # text and visual rows alike: exact zeros above the diagonal
        assert (m.diagonal() > 0).all()


def test_each_mask_opens_exactly_its_future_columns_at_layer_1(maps) -> None:
    vis = QUICK.is_visual
    upper = torch.ones(len(vis), len(vis), dtype=torch.bool).triu(1)
    rows, cols = vis[:, None], vis[None, :]
    assert torch.equal(_future(maps["f"][0]), rows & upper)  # visual rows: every later column; text rows: none
    assert torch.equal(_future(maps["v2v"][0]), rows & cols & upper)
    assert torch.equal(_future(maps["v2t"][0]), rows & ~cols & upper)
    light = _future(maps["light"][0])
    assert light.any() and not (light & ~(rows & upper)).any()


def test_checks_pass_and_can_fail(maps) -> None:
    checks = influence_checks(QUICK, maps)
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    swapped = {**maps, "c": maps["f"], "v2t": maps["v2v"]}
    failed = {c["kind"] for c in influence_checks(QUICK, swapped) if not c["ok"]}
    assert failed == {"c", "v2t"}


def test_cli_quick_writes_one_png_per_kind_and_a_gallery(tmp_path, capsys) -> None:
    out = tmp_path / "infl"
    assert main(["vlm", "influence", "--quick", "--kinds", "c,f,light", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"influence-c.png", "influence-f.png", "influence-light.png", "influence-gallery.png",
                     "influence.md", "influence.pt"}
    assert "--kinds=c,f,light" in (out / "influence.md").read_text()
    saved = torch.load(out / "influence.pt")
    assert set(saved["maps"]) == {"c", "f", "light"}


@pytest.mark.parametrize("argv, flag", [(["--length", "8"], "--length"), (["--kinds", "c,zz"], "--kinds"),
                                        (["--n-heads", "3"], "--n-heads"), (["--light-mu", "c"], "--light-mu"),
                                        (["--eps", "0"], "--eps"), (["--n-layers", "1"], "--n-layers")])
def test_bad_options_are_refused_naming_the_flag(argv, flag, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    assert main(["vlm", "influence", "--quick", *argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"attnlab: error: {flag}")
    assert not out.exists()


def test_config_refuses_lengths_beyond_the_picture() -> None:
    with pytest.raises(ValueError, match="length must be <= 512"):
        dataclasses.replace(InfluenceConfig(), length=513)
