"""``attnlab vlm digits`` (future_mask.md E4): the train x evaluation mask report and the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.study.digits import digits_compare, mask_matrix, write_mask_report

MASKS = ("c", "f", "v2v", "v2t")


def _runs(acc: dict[tuple[str, str], list[float]], seeds: list[int]) -> dict[tuple[str, int], dict]:
    runs = {}
    for t in MASKS:
        for i, s in enumerate(seeds):
            m = {f"acc_{e}": acc[(t, e)][i] for e in MASKS}
            m.update(acc_same=50.0 + i, acc_larger=60.0, acc_sum=10.0)
            runs[(t, s)] = {"test": {"metrics": m}, "val": {"metrics": m}}
    return runs


def test_matrix_means_deltas_and_verdicts() -> None:
    cfg = digits_compare("quick", seeds=[0, 1, 2])
    acc = {(t, e): [90.0, 91.0, 92.0] for t in MASKS for e in MASKS}
    acc[("c", "f")] = [80.0, 81.0, 82.0]  # a clear drop
    acc[("f", "f")] = [91.0, 90.0, 92.5]  # within noise
    acc[("v2t", "c")] = [95.0, 96.0, 97.0]  # a clear gain
    rows = {(r["train_mask"], r["eval_mask"]): r for r in mask_matrix(cfg, _runs(acc, cfg.seeds))}
    assert rows[("c", "c")]["beyond_noise"] == "baseline"
    assert rows[("c", "f")]["mean"] == pytest.approx(81.0) and rows[("c", "f")]["delta"] == pytest.approx(-10.0)
    assert rows[("c", "f")]["beyond_noise"] == "yes: worse"
    assert rows[("f", "f")]["beyond_noise"] == "no"
    assert rows[("v2t", "c")]["beyond_noise"] == "yes: better"
    assert rows[("c", "f")]["std"] == pytest.approx(1.0)


def test_report_files(tmp_path: Path) -> None:
    cfg = digits_compare("quick", seeds=[0, 1])
    acc = {(t, e): [70.0 + MASKS.index(t), 71.0 + MASKS.index(e)] for t in MASKS for e in MASKS}
    paths = write_mask_report(tmp_path, cfg, _runs(acc, cfg.seeds))
    assert [p.name for p in paths] == ["masks.md", "masks.csv", "masks.png"]
    md = paths[0].read_text()
    assert "| causal M^c | **70.50 ± 0.71** | 71.00 ± 1.41 |" in md  # the diagonal in bold; (70, 71) and (70, 72)
    assert "| c | f | 71.00 ± 1.41 | +0.50 | no | 70.00, 72.00 |" in md
    lines = paths[1].read_text().splitlines()
    assert lines[0].startswith("train_mask,eval_mask,mean") and len(lines) == 17
    assert paths[2].stat().st_size > 1000


def test_command_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (attnlab[digits], dev extra)")
    out = tmp_path / "d"
    assert main(["vlm", "digits", "--preset", "quick", "--seeds", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "masks.md") in printed
    md = (out / "masks.md").read_text()
    assert "| trained \\ evaluated |" in md and "unknown (needs >= 2 seeds)" in md
    for t in MASKS:
        assert (out / "runs" / t / "seed0" / "result.json").is_file()
    before = (out / "runs" / "c" / "seed0" / "result.json").read_text()
    assert main(["vlm", "digits", "--preset", "quick", "--seeds", "0", "--out", str(out)]) == 0  # resumes
    assert "finished earlier, kept" in capsys.readouterr().out
    assert (out / "runs" / "c" / "seed0" / "result.json").read_text() == before
    # another comparison in the same directory is refused, nothing is lost
    assert main(["vlm", "digits", "--preset", "quick", "--seeds", "1", "--out", str(out)]) == 2
    assert "holds a different comparison" in capsys.readouterr().err
    assert (out / "runs" / "c" / "seed0" / "result.json").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["--seeds", "1,1"], "--seeds must be distinct integers"),
    (["--length", "32"], "--length is an option of 'attnlab vlm influence'"),
    (["--quick"], "--quick is an option of 'attnlab vlm influence'"),
])
def test_digits_refuses_bad_options(args: list[str], message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vlm", "digits", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_influence_refuses_digits_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vlm", "influence", "--quick", "--preset", "full", "--out", str(tmp_path / "x")]) == 2
    assert "--preset is an option of 'attnlab vlm digits'" in capsys.readouterr().err
