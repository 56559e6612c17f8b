"""benchmarks/gpu/linear_fla.py on the CPU: the dry run end to end (JSONL rows, Markdown, CSV, the table printed
last), the deadline, ``--render`` from the JSONL alone, and the ratio / crossover arithmetic on made-up rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def lf(benchmark_script):
    return benchmark_script("gpu/linear_fla.py")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "linear-fla.jsonl").read_text().splitlines()]


def test_dry_run_writes_rows_markdown_and_csv(lf, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert lf.main(["--dry-run", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "env" and kinds.count("env") == 1
    checks = [r for r in rows if r["kind"] == "check"]
    speed = [r for r in rows if r["kind"] == "speed"]
    # D=16: fla and chunked, float32 then bfloat16; 2 lengths x 3 methods
    assert [(r["impl"], r["dtype"]) for r in checks] == [("fla", "float32"), ("chunked", "float32"),
                                                         ("fla", "bfloat16"), ("chunked", "bfloat16")]
    assert [(r["T"], r["method"]) for r in speed] == [(T, m) for T in (64, 128) for m in ("sdpa", "chunked", "fla")]
    for r in checks:
        if r["impl"] == "fla":  # fla needs CUDA: said, not measured
            assert r["status"] == "skipped: dry run on the CPU (fla needs CUDA)" and "err out" not in r
        else:  # the chunked form against the float64 recurrent form: output rounding of the dtype only
            assert r["status"] == "ok" and max(r[f"err {n}"] for n in ("out", "q", "k", "v")) <= r["tol"]
            assert r["err out"] < (1e-6 if r["dtype"] == "float32" else 5e-3)
    for r in speed:
        if r["method"] == "fla":
            assert r["status"].startswith("skipped: dry run")
        else:
            assert r["status"] == "ok" and r["fwd ms"] > 0 and r["fwd+bwd ms"] > 0 and r["fwd MiB"] is None
    md = (tmp_path / "linear-fla-cuda.md").read_text()
    assert "(CPU dry run)" in md and "## Correctness against the float64 recurrent form" in md
    assert "| chunked | float32 | 16 | 40 |" in md and "## Speed and memory, float32, D = 16, B = 1, H = 2" in md
    assert "**fla's float32 check at D = 16: skipped: dry run on the CPU (fla needs CUDA). Its times" in md
    with open(tmp_path / "linear-fla-cuda.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["T"]) for r in table] == [64, 128]
    assert all(float(r["sdpa fwd ms"]) > 0 and float(r["chunked fwd+bwd ms"]) > 0 and r["fla fwd ms"] == ""
               for r in table)
    printed = capsys.readouterr().out.rstrip().splitlines()
    assert printed[-1] == "fla: skipped: dry run on the CPU (fla needs CUDA)"
    assert any(line.startswith("| 64 | ") for line in printed[-8:])  # the short table comes last
    # --render rebuilds the same report from the JSONL alone (what is done after the files come back)
    (tmp_path / "linear-fla-cuda.md").unlink()
    assert lf.main(["--render", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "linear-fla-cuda.md").read_text() == md


def test_past_the_deadline_every_case_is_recorded_as_skipped(lf, tmp_path: Path) -> None:
    assert lf.main(["--dry-run", "--max-seconds", "0", "--out", str(tmp_path)]) == 0
    rows = [r for r in _rows(tmp_path) if r["kind"] != "env"]
    assert len(rows) == 10 and all(r["status"].startswith("skipped") for r in rows)
    assert {r["status"] for r in rows if r["method" if r["kind"] == "speed" else "impl"] != "fla"} == {
        "skipped: deadline"}


def _speed(method: str, T: int, fwd: float, fb: float, D: int = 64) -> dict:
    return {"kind": "speed", "method": method, "D": D, "T": T, "B": 1, "H": 16, "dtype": "bfloat16", "fwd ms": fwd,
            "fwd+bwd ms": fb, "fwd MiB": 1.0, "fwd+bwd MiB": 2.0, "status": "ok"}


def test_ratios_and_crossover(lf) -> None:
    rows = []
    # fwd: fla slower at 1k, faster from 2k on; fwd+bwd: faster at 2k, slower again at 4k (no crossover)
    cases = ((1024, (1.0, 3.0), (2.0, 4.0)), (2048, (2.0, 6.0), (1.5, 5.0)), (4096, (4.0, 9.0), (3.0, 12.0)))
    for T, sdpa, fla in cases:  # (fwd ms, fwd+bwd ms)
        rows += [_speed("sdpa", T, *sdpa), _speed("chunked", T, 8.0, 16.0), _speed("fla", T, *fla)]
    wide = lf.speed_table(rows)[64]
    assert [w["T"] for w in wide] == [1024, 2048, 4096]
    assert wide[0]["fla/sdpa fwd"] == 2.0 and wide[1]["fla/chunked fwd+bwd"] == 5.0 / 16.0
    assert lf.crossover(wide, "fwd") == 2048
    assert lf.crossover(wide, "fwd+bwd") is None
    assert lf.crossover_line(wide, "fwd") == (
        "fwd: fla is faster than SDPA from T = 2048 on (at every measured T >= 2048)")
    assert lf.crossover_line(wide, "fwd+bwd") == "fwd+bwd: fla is not faster than SDPA at the longest measured T"
    # a failed measurement leaves a hole, not a ratio
    rows.append(dict(_speed("fla", 4096, 0.0, 0.0), status="error: OutOfMemoryError: boom"))
    wide = lf.speed_table(rows)[64]
    assert wide[2]["fla fwd ms"] is None and wide[2]["fla/sdpa fwd"] is None and wide[2]["fla status"].startswith("err")
    assert lf.crossover(wide, "fwd") == 2048  # the longest T with both times decides


def test_a_failed_fla_check_is_printed_above_its_times(lf, tmp_path: Path) -> None:
    check = {"kind": "check", "impl": "fla", "dtype": "bfloat16", "B": 1, "H": 16, "T": 1000, "D": 64, "tol": 0.02,
             "fla configs": "small",
             "err out": 0.5, "err q": 0.4, "err k": 0.3, "err v": 0.2, "status": "FAILED"}
    rows = [{"kind": "env", "torch": "x", "python": "3", "fla autotune": "small", "dry run": False, "gpu": "GPU",
             "sms": 1, "memory_gib": 1.0, "capability": "9.0"}, check, _speed("sdpa", 1024, 1.0, 2.0),
            _speed("chunked", 1024, 3.0, 4.0), _speed("fla", 1024, 0.5, 1.0)]
    (tmp_path / "linear-fla.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths, summary = lf.render(tmp_path)
    md = paths[0].read_text()
    assert "**fla's bfloat16 check at D = 64: FAILED. Its times below are not results.**" in md
    assert "| fla | bfloat16 | 64 | 1000 | 0.5 | 0.4 | 0.3 | 0.2 | 0.02 | small |  | FAILED |" in md
    assert "fwd: fla is faster than SDPA from T = 1024 on (at every measured T >= 1024)" in summary
