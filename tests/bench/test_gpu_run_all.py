"""benchmarks/gpu/run_all.sh on the CPU with a stand-in interpreter: the budget, the summary, the {secs} deadlines,
re-running named parts, and never overwriting a finished run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run_all.sh"


def _run(tmp_path: Path, results: Path, budget: int, sleep: float, parts: str | None = None,
         python: str | None = None):
    stub = tmp_path / "stubpy"
    stub.write_text(f'#!/bin/sh\necho "stub: $*"\nsleep {sleep}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": python or str(stub)}
    env.pop("TRAIN_OUT", None)
    env.pop("TRAIN_MECHANISMS", None)
    env.pop("GPU_PARTS", None)
    if parts:
        env["GPU_PARTS"] = parts
    return subprocess.run(["bash", str(SCRIPT), str(results), str(budget)], env=env, capture_output=True, text=True,
                          timeout=300)


def _rows(results: Path) -> dict[str, list[str]]:
    lines = (results / "summary.md").read_text().splitlines()[2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_parts_run_in_order_within_the_budget_and_the_rest_are_listed_as_skipped(tmp_path: Path) -> None:
    res = tmp_path / "r"
    proc = _run(tmp_path, res, budget=30, sleep=4)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(res)
    assert list(rows) == ["env", "castle-checks", "castle-sweep", "castle-speed", "train", "bench-sparsity",
                          "linear-fla", "pytest", "flex-density", "bench-mechanisms", "bench-overhead", "bench-castle",
                          "bench-future"]
    # env gets its own 25 s; the next parts what is left of 30 s; below 20 s left a part is skipped
    assert rows["env"][0] == "0" and rows["env"][2] == "25"
    assert rows["castle-checks"][0] == "0" and 20 <= int(rows["castle-checks"][2]) <= 26
    assert all(rows[p][0] == "skipped: budget spent" for p in list(rows)[3:])
    # a script's own deadline is the part's limit less 10 s
    log = (res / "logs" / "castle-checks.log").read_text()
    limit = int(rows["castle-checks"][2])
    assert f"--phase checks --out {res}/castle --max-seconds {limit - 10}" in log


def test_a_finished_run_is_not_overwritten_and_named_parts_rerun(tmp_path: Path) -> None:
    res = tmp_path / "r"
    assert _run(tmp_path, res, budget=400, sleep=0).returncode == 0
    before = (res / "summary.md").read_text()
    proc = _run(tmp_path, res, budget=400, sleep=0)
    assert proc.returncode == 2 and "summary.md exists" in proc.stderr
    assert (res / "summary.md").read_text() == before
    proc = _run(tmp_path, res, budget=400, sleep=0, parts="pytest,bench-castle")
    assert proc.returncode == 0, proc.stderr
    after = (res / "summary.md").read_text()
    assert after.startswith(before)  # appended, not rewritten
    added = after[len(before):].splitlines()
    assert [line.split("|")[1].strip() for line in added] == ["pytest", "bench-castle"]
    assert "-m pytest -m gpu" in (res / "logs" / "pytest.log").read_text()


def test_the_train_part_never_forces_over_an_earlier_run(tmp_path: Path) -> None:
    """GPU_PARTS=train into a folder that holds an earlier train run: the script (the real one, on the CPU) refuses
    before anything is written, the part is listed with exit 2 and the earlier results are left as they were."""
    import sys

    res = tmp_path / "r"
    assert _run(tmp_path, res, budget=400, sleep=0, parts="train").returncode == 0
    assert "--force" not in (res / "logs" / "train.log").read_text()  # the stand-in saw the part's command
    train = res / "train"
    train.mkdir()
    earlier = {"train-throughput-cuda.json": '{"earlier": 1}', "train-throughput-cuda.md": "# earlier\n",
               "train-throughput-cuda-standard.json": '{"mechanism": "standard"}'}
    for name, text in earlier.items():
        (train / name).write_text(text)
    proc = _run(tmp_path, res, budget=400, sleep=0, parts="train", python=sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert _rows(res)["train"][0] == "2"
    log = (res / "logs" / "train.2.log").read_text()
    assert "already holds an earlier run's results" in log and str(train) in log and "--force" in log
    assert {p.name: p.read_text() for p in train.iterdir()} == earlier
