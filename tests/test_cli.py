"""The command line: exit codes, one-line errors, help for every command (no report rendering here)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from analyzer.cli import diagnose_command, postmortem, reproduce_command
from analyzer.detectors import DETECTORS


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_dir_is_exit_2_naming_it(runner, tmp_path):
    line = _one_line_error(runner.invoke(diagnose_command, [str(tmp_path / "nope")]))
    assert "nope" in line and "no such file" in line


def test_empty_dir_is_exit_2(runner, tmp_path):
    line = _one_line_error(runner.invoke(diagnose_command, [str(tmp_path)]))
    assert "empty" in line


def test_dir_without_known_format_is_exit_2(runner, tmp_path):
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01\x02 not a log")
    line = _one_line_error(runner.invoke(diagnose_command, [str(tmp_path)]))
    assert str(tmp_path) in line and "no training log" in line


@pytest.mark.parametrize("args, fragment", [
    (["--format", "pdf"], "unknown format"),
    (["--select", "no-such-detector"], "unknown detector"),
    (["--set", "loss-spike.no_such_param=3"], "no parameter"),
    (["--set", "justakey"], "expected NAME.PARAM=VALUE"),
])
def test_usage_errors_are_exit_2_before_reading(runner, tmp_path, args, fragment):
    line = _one_line_error(runner.invoke(diagnose_command, [*args, str(tmp_path)]))
    assert fragment in line


def test_fail_on_choice_is_validated(runner, tmp_path):
    result = runner.invoke(diagnose_command, ["--fail-on", "sometimes", str(tmp_path)])
    assert result.exit_code == 2


@pytest.mark.parametrize("command", [["diagnose"], ["reproduce-run"], ["explain"], ["detectors"], ["formats"]])
def test_every_command_has_help(runner, command):
    result = runner.invoke(postmortem, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_detectors_lists_every_code(runner):
    result = runner.invoke(postmortem, ["detectors"])
    assert result.exit_code == 0
    for code, det in DETECTORS.items():
        assert code in result.output and det.name in result.output


@pytest.mark.parametrize("columns", [60, 80, 100])
def test_detectors_fit_the_terminal(runner, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = runner.invoke(postmortem, ["detectors"]).output.splitlines()
    assert max(map(len, lines)) <= columns and sum(line.startswith("L001") for line in lines) == 1


@pytest.mark.parametrize("key", ["L001", "l001", "loss-spike"])
def test_explain_by_code_or_name(runner, key):
    result = runner.invoke(postmortem, ["explain", key])
    assert result.exit_code == 0
    assert result.output.startswith("L001 loss-spike")
    assert "What it detects" in result.output


def test_explain_unknown_is_exit_2(runner):
    _one_line_error(runner.invoke(postmortem, ["explain", "Z999"]))


def test_reproduce_run_missing_dir_is_exit_2(runner, tmp_path):
    _one_line_error(runner.invoke(reproduce_command, [str(tmp_path / "nope")]))


def test_json_prints_schema_document(runner, tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss\n" + "".join(f"{i},{3 - i * 0.01}\n" for i in range(50)))
    result = runner.invoke(diagnose_command, ["--json", str(tmp_path)])
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "postmortem.findings/1"
    assert doc["run"]["last_step"] == 49
    assert list(tmp_path.iterdir()) == [tmp_path / "metrics.csv"]  # --json writes nothing


def test_hydra_config_is_read(runner, tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("optimizer:\n  lr: 0.0003\ntrainer:\n  max_steps: 1000\n")
    (tmp_path / "metrics.csv").write_text("step,loss\n0,3.0\n1,2.9\n")
    doc = json.loads(runner.invoke(diagnose_command, ["--json", str(tmp_path)]).output)
    assert doc["run"]["hparams"]["lr"] == 0.0003 and doc["run"]["hparams"]["max_steps"] == 1000


def test_the_run_overview_says_where_a_point_count_adds_up_several_ranks():
    from pathlib import Path

    import pandas as pd

    from analyzer.cli import run_overview
    from analyzer.run import Ingested, build_run

    piece = Ingested("text")
    piece.add_frame("train.log", pd.DataFrame({"step": [0, 0, 10, 10, 0], "name": ["loss"] * 4 + ["lr"],
                                               "value": [4.0, 4.1, 3.0, 3.1, 1e-3], "line": [1, 2, 3, 4, 5],
                                               "rank": [0, 1, 0, 1, 0]}))
    overview = run_overview(build_run(Path("/r"), [piece]))
    assert "metrics: loss (4 over 2 ranks), lr (1)" in overview


def test_the_run_overview_never_passes_log_text_to_the_terminal_raw():
    # a run.json status or a metric name holding an escape sequence (set the window title, clear the screen) or a
    # right-to-left override must not drive the terminal
    from pathlib import Path

    import pandas as pd

    from analyzer.cli import run_overview
    from analyzer.run import Ingested, build_run

    piece = Ingested("text")
    piece.add_frame("train.log", pd.DataFrame({"step": [0, 10], "name": ["loss\x1b[2J\u202e", "loss\x1b[2J\u202e"],
                                               "value": [4.0, 3.0], "line": [1, 2]}))
    overview = run_overview(build_run(Path("/r"), [piece], status="diverged \x1b]0;pwned\x07"))
    assert "\x1b" not in overview and "\x07" not in overview and "\u202e" not in overview
    assert "status diverged ]0;pwned" in overview and "{U+202E}" in overview
    assert overview.splitlines()[1].startswith("  metrics: ")  # the indent is kept


@pytest.mark.parametrize("command, args, message", [
    (diagnose_command, ["--jobs", "0", "run"], "error: Invalid value for '--jobs': 0 is not in the range 1<=x<=64."),
    (diagnose_command, ["--no-such-option", "run"], "error: No such option '--no-such-option'."),
    (diagnose_command, [], "error: Missing argument 'RUN_DIRS...'."),
    (reproduce_command, [], "error: Missing argument 'RUN_DIR'."),
    (reproduce_command, ["--nproc", "99", "run"],
     "error: Invalid value for '--nproc': 99 is not in the range 1<=x<=16."),
    (postmortem, ["no-such-command"], "error: No such command 'no-such-command'."),
    (postmortem, ["--no-such-option"], "error: No such option '--no-such-option'."),
    (postmortem, ["diagnose", "--jobs", "0", "run"],
     "error: Invalid value for '--jobs': 0 is not in the range 1<=x<=64."),
    (postmortem, ["explain"], "error: Missing argument 'NAME|CODE'."),
])
def test_click_usage_errors_are_one_line_without_the_usage_block(runner, command, args, message):
    assert _one_line_error(runner.invoke(command, args)) == message


def test_a_bare_postmortem_still_shows_its_help(runner):
    result = runner.invoke(postmortem, [])
    assert "Usage:" in result.output and "Commands:" in result.output
