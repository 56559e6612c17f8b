"""Errors of ``attnlab masks``, ``attnlab bench`` and ``attnlab verify`` go to stderr as ``attnlab: error: ...`` with
exit status 2, like the other commands (``commands._config_args.fail``); stdout stays empty."""

from __future__ import annotations

import pytest

from attnlab.cli import main


@pytest.mark.parametrize("argv, message", [
    (["masks", "--length", "2"], "--length must be between 4 and 1024"),
    (["bench", "no-such-suite", "--no-progress"], "unknown benchmark suite 'no-such-suite'"),
    (["bench", "mechanisms", "--mechanisms", "no-such-mechanism", "--no-progress"], "no-such-mechanism"),
    (["verify", "no-such-mechanism", "--no-progress"], "no-such-mechanism"),
    (["verify", "standard", "--check", "no-such-check", "--no-progress"], "no-such-check"),
])
def test_command_errors_go_to_stderr_with_status_2(argv: list[str], message: str, tmp_path, capsys) -> None:
    if argv[0] in ("masks", "bench"):
        argv = argv + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "", cap.out
    assert cap.err.startswith("attnlab: error: "), cap.err
    assert message in cap.err, cap.err
    assert not (tmp_path / "out").exists()


def test_bench_refuses_to_overwrite_results_on_stderr(tmp_path, capsys, monkeypatch) -> None:
    """Results that exist already (without --force): the runner's FileExistsError, reported on stderr."""
    import attnlab.bench.runner as runner

    def exists(*args, **kwargs):
        raise FileExistsError(f"{tmp_path}/mechanisms-cpu.md exists; pass --force to overwrite")

    monkeypatch.setattr(runner, "run_suites", exists)
    assert main(["bench", "mechanisms", "--out", str(tmp_path), "--no-progress"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("attnlab: error: ") and "--force" in cap.err
