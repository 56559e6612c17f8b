"""attnlab compare: leaderboard, plots and HTML from a tiny preset; output-directory protection; the noise rule."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from attnlab.compare import run_compare
from attnlab.train.outdir import OutputDirError
from attnlab.compare import CompareConfig
from attnlab.compare.presets import tiny
from attnlab.compare.report import _far_off, markdown_inline, significance, welch_p



@pytest.fixture
def small_cfg(tmp_path: Path) -> CompareConfig:
    src = tmp_path / "small.txt"
    src.write_text(_text())
    cfg = tiny()
    base = replace(cfg.base, data=replace(cfg.base.data, source=str(src), cache_dir=str(tmp_path / "cache")))
    return replace(cfg, base=base)


def _text() -> str:
    from attnlab.data import read_bundled_text

    return read_bundled_text("tinyshakespeare")[:6000]


def _git_head() -> str | None:
    """The full commit at HEAD of the checkout attnlab is imported from, or ``None`` when it is not a git checkout
    (the source tree the report's provenance line describes)."""
    import subprocess

    import attnlab

    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(attnlab.__file__).resolve().parent,
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def test_compare_writes_leaderboard_plots_and_html(tmp_path: Path, small_cfg: CompareConfig) -> None:
    from attnlab.compare.report import _git_commit

    out = tmp_path / "cmp"
    _git_commit.cache_clear()  # the commit of now, not of an earlier report in this process
    head_before = _git_head()
    res = run_compare(small_cfg, out, log=lambda s: None)
    heads = {h for h in (head_before, _git_head()) if h}  # both, in case a commit lands while the runs train
    assert set(res.runs) == {(m, s) for m in small_cfg.variants for s in (0, 1)}
    md = (out / "leaderboard.md").read_text()
    for m in small_cfg.variants:
        assert f"`{m}`" in md
    assert "beyond seed noise" in md and "Welch" in md and "baseline" in md
    # provenance: the command line, the date and the machine that produced the leaderboard
    assert "- command: `" in md and "- date: " in md and "- machine: " in md and "cores, torch" in md
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert [r["mechanism"] for r in rows] == small_cfg.variants
    base = rows[0]
    assert base["beyond_noise"] == "baseline" and float(base["delta_vs_baseline"]) == 0.0
    for r in rows:
        losses = [json.loads((small_cfg.run_dir(out, r["mechanism"], s) / "result.json").read_text())["val"]["loss"]
                  for s in (0, 1)]
        assert float(r["val_loss_mean"]) == pytest.approx(sum(losses) / 2, rel=1e-12)
        assert float(r["val_loss_std"]) == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2), rel=1e-9)
        assert float(r["val_bpc"]) == pytest.approx(float(r["val_loss_mean"]) / math.log(2), rel=1e-9)
        assert int(r["params"]) > 0 and float(r["tokens_per_s"]) > 0 and float(r["wall_s"]) > 0
    # parity: CASTLE's parameter count is close to the baseline's (the 4/7 head rule), not double it
    params = {r["mechanism"]: int(r["params"]) for r in rows}
    assert abs(params["castle"] - params["standard"]) / params["standard"] < 0.1
    for png in ("loss_curves.png", "final_loss.png", "cost.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the loss curves of these runs: token ticks with units, a ±1 std band per mechanism (2 seeds each)
    import html as html_mod

    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from attnlab.compare.curves import format_tokens, loss_curves_figure
    from attnlab.compare.report import _curves

    fig, caption = loss_curves_figure(_curves(out, small_cfg), ylabel="loss", plt=plt)
    try:
        assert len(fig.axes) == (6 if caption else 3)  # a full-range row only with a far-off mechanism
        for ax in fig.axes[:2]:
            assert ax.xaxis.get_major_formatter().func is format_tokens and ax.get_xlabel() == "tokens"
        # the token panels (train, validation); the wall-clock panel has a band only where the seeds' time windows
        # overlap, which the tiny runs (validation points milliseconds apart) do not guarantee
        assert all(sum(isinstance(c, PolyCollection) for c in ax.collections) == len(small_cfg.variants)
                   for ax in fig.axes[:2])
        assert sum(isinstance(c, PolyCollection) for c in fig.axes[2].collections) <= len(small_cfg.variants)
    finally:
        plt.close(fig)
    page = (out / "report.html").read_text()
    assert (html_mod.escape(caption) in page) if caption else "class='caption'" not in page
    assert "<table>" in page and "data:image/png;base64," in page and "castle-swl" in page
    # notes rendered, not raw Markdown; provenance with the attnlab version; links to every run's files
    import re

    text = re.sub(r"<[^>]+>", "", page)
    assert "`" not in text and "**" not in text and "<code>standard</code>" in page
    assert "attnlab: " in page and "Welch p" in page
    from attnlab import __version__

    assert f"- attnlab: {__version__}" in md and f"attnlab: {html_mod.escape(__version__)}" in page
    # the git commit of the source tree (12 hex digits of HEAD, "+dirty" with local changes) when it is a checkout
    written = re.search(r"attnlab: [^,<\n]+, git commit ([0-9a-f]+)(\+dirty)?</li>", page)
    if heads:
        assert written is not None, "no git commit in the report's provenance"
        assert len(written.group(1)) == 12 and any(h.startswith(written.group(1)) for h in heads), (written, heads)
        assert written.group(0)[:-5].split("attnlab: ", 1)[1] in md
    else:
        assert written is None and "git commit" not in page
    assert page.count("no TensorBoard log") == 10  # the tiny preset writes none (a link when it does: below)
    for m in small_cfg.variants:
        for s in (0, 1):
            assert f'href="runs/{m}/seed{s}/"' in page and f'href="runs/{m}/seed{s}/metrics.csv"' in page
    assert page.count("checkpoint 6</a>") == 10  # each run's newest checkpoint (step 6)
    assert "peak mem (MiB)" in md and "not reported on CPU" in md  # the RSS figure is dropped, with the reason

    # ---- output directory protection
    with pytest.raises(OutputDirError, match="already holds results; pass --resume .* or --force"):
        run_compare(small_cfg, out, log=lambda s: None)
    stamp = (small_cfg.run_dir(out, "castle", 1) / "result.json").stat().st_mtime_ns
    logs: list[str] = []
    run_compare(small_cfg, out, resume=True, log=logs.append)  # finished runs are kept, not retrained
    assert (small_cfg.run_dir(out, "castle", 1) / "result.json").stat().st_mtime_ns == stamp
    assert sum("finished earlier, kept" in l for l in logs) == 10
    meta = json.loads((out / "compare.json").read_text())  # as an earlier attnlab wrote it, before rope_base existed
    assert meta["base"]["model"].pop("rope_base") == small_cfg.base.model.rope_base
    (out / "compare.json").write_text(json.dumps(meta))
    run_compare(small_cfg, out, resume=True, log=lambda s: None)  # the same comparison: accepted
    other = replace(small_cfg, seeds=[0])
    with pytest.raises(OutputDirError, match=r"holds a different comparison \(differs in: seeds\)"):
        run_compare(other, out, resume=True, log=lambda s: None)
    md_before_force = (out / "leaderboard.md").read_text()  # re-written by the resume: new provenance lines,
    assert md_before_force.split("\n\n", 2)[2] == md.split("\n\n", 2)[2]  # the same table and notes
    run_compare(other, out, force=True, log=lambda s: None)
    backups = list(tmp_path.glob("cmp.old-*"))
    assert len(backups) == 1 and (backups[0] / "leaderboard.md").read_text() == md_before_force  # nothing lost
    assert json.loads((out / "compare.json").read_text())["seeds"] == [0]


def test_report_links_each_runs_tensorboard_logs(tmp_path: Path, small_cfg: CompareConfig) -> None:
    """With TensorBoard on, each run's row links its ``tensorboard/`` directory and gives the ``--logdir`` command."""
    import html as html_mod

    cfg = replace(small_cfg, base=replace(small_cfg.base, tensorboard=True, steps=3), variants=["standard"],
                  seeds=[0])
    out = tmp_path / "cmp"
    run_compare(cfg, out, log=lambda s: None)
    tb = cfg.run_dir(out, "standard", 0) / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*")), "no TensorBoard event file in the run directory"
    page = (out / "report.html").read_text()
    assert '<a href="runs/standard/seed0/tensorboard/">TensorBoard</a>' in page
    assert f"<code>tensorboard --logdir {html_mod.escape(str(tb))}</code>" in page
    assert "no TensorBoard log" not in page


def test_unfinished_run_is_resumed(tmp_path: Path, small_cfg: CompareConfig) -> None:
    cfg = replace(small_cfg, variants=["standard", "linear"], seeds=[0])
    out = tmp_path / "cmp"
    run_compare(cfg, out, log=lambda s: None)
    first = json.loads((small_cfg.run_dir(out, "linear", 0) / "result.json").read_text())
    (small_cfg.run_dir(out, "linear", 0) / "result.json").unlink()  # as if it had crashed after its last checkpoint
    run_compare(cfg, out, resume=True, log=lambda s: None)
    again = json.loads((small_cfg.run_dir(out, "linear", 0) / "result.json").read_text())
    assert again["resumed_from"] == cfg.base.steps and again["val"]["loss"] == first["val"]["loss"]


def test_significance_rule() -> None:
    assert significance([1.0], [2.0])[0].startswith("unknown")
    # means 1.0 vs 2.0, sample variance 0.02 each, n = 2: se = sqrt(0.02/2 + 0.02/2) = 0.1414; |diff| = 1 > 0.283
    verdict, se = significance([0.9, 1.1], [1.9, 2.1])
    assert verdict == "yes: better" and se == pytest.approx(math.sqrt(0.02), rel=1e-9)
    assert significance([1.9, 2.1], [0.9, 1.1])[0] == "yes: worse"
    # diff 0.1 < 2 * se = 0.283: within noise
    assert significance([1.0, 1.2], [0.9, 1.1])[0] == "no"


def test_compare_config_errors() -> None:
    from attnlab.config import ConfigError

    base = tiny().base
    with pytest.raises(ConfigError, match="duplicates"):
        CompareConfig(base=base, variants=["standard", "standard"])
    with pytest.raises(ConfigError, match="baseline='castle' is not among"):
        CompareConfig(base=base, variants=["standard"], baseline="castle")
    with pytest.raises(ConfigError, match="unknown mechanism 'nope'"):
        CompareConfig(base=base, variants=["standard", "nope"])
    with pytest.raises(ConfigError, match=r"options given for \['lineer'\], which are not mechanisms; valid: standard, "):
        CompareConfig(base=base, variants=["standard"], options={"lineer": {}})
    # options of registered mechanisms that are not compared are dropped
    assert CompareConfig(base=base, variants=["standard"], options={"linear": {}}).options == {}


def test_verdict_between_one_and_two_standard_errors() -> None:
    """A difference of 1.5 Welch standard errors is within noise under the 2-SE rule (a rule with 1 SE would call
    it beyond noise); 2.5 SE is beyond it, in the right direction for a loss and for BLEU."""
    a, b = [1.0, 1.2], [0.9, 1.1]  # sample variance 0.02 each, n = 2: se = sqrt(0.02/2 + 0.02/2) = 0.1414
    se = math.sqrt(0.02)
    shift = lambda xs, d: [x + d for x in xs]  # noqa: E731
    assert significance(shift(b, 1.5 * se), b)[0] == "no"  # mean diff 1.5 se: above 1 se, below 2 se
    assert significance(shift(b, 2.5 * se), b)[0] == "yes: worse"
    assert significance(shift(b, -2.5 * se), b)[0] == "yes: better"
    assert significance(shift(b, 2.5 * se), b, lower_is_better=False)[0] == "yes: better"
    assert significance(a, b)[1] == pytest.approx(se)


def test_welch_p_matches_scipy_and_edge_cases() -> None:
    from scipy.stats import ttest_ind

    a, b = [1.0, 1.2, 0.9], [1.5, 1.7, 1.4, 1.6]
    assert welch_p(a, b) == pytest.approx(float(ttest_ind(a, b, equal_var=False).pvalue))
    assert welch_p([1.0], b) is None
    assert welch_p([2.0, 2.0], [2.0, 2.0]) == 1.0 and welch_p([2.0, 2.0], [3.0, 3.0]) == 0.0
    # by hand: t = -4.73, df = 3.96 (Welch-Satterthwaite), two-sided p about 0.0094
    assert welch_p(a, b) == pytest.approx(0.0099, abs=0.002)


def test_far_off_and_markdown_inline() -> None:
    assert _far_off([1.50, 1.52, 1.49, 3.9]) == [False, False, False, True]
    assert _far_off([1.50, 1.52, 1.49, 1.55]) == [False] * 4
    assert _far_off([1.0, 2.0]) == [False, False]  # nothing to compare with
    assert markdown_inline("use `x < y` and **bold**, [docs](https://a.b/c)") == (
        'use <code>x &lt; y</code> and <strong>bold</strong>, <a href="https://a.b/c">docs</a>')
    # a URL's & is escaped once (it was escaped twice: &amp;amp;), its quotes too
    assert markdown_inline('[q](https://a.b/?x=1&y="2")') == '<a href="https://a.b/?x=1&amp;y=&quot;2&quot;">q</a>'
