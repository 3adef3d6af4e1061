"""One notation for numbers across a report: format.number is the only way a number reaches markdown, HTML, the
terminal, JUnit and the patch, and it writes what the detectors' messages write (5e-4, not 0.0005 or 5e-04)."""

from __future__ import annotations

import json
import re

import pytest

from analyzer.findings import Confidence, Diagnosis, Finding, Recommendation, RunSummary, Severity
from analyzer.report import format as fmt
from analyzer.report import markdown, html, terminal_summary
from analyzer.report.model import build_report

# Python's own notations that must not reach a report: 3e-05, 1e+04, 0.0005 (a plain decimal under 1e-3).
PYTHON_EXPONENT = re.compile(r"\d[eE][-+]0\d|\d[eE]\+\d")
PLAIN_UNDER_A_THOUSANDTH = re.compile(r"(?<![\d.])0\.000\d")


def small_numbers_diagnosis() -> Diagnosis:
    """mlm-lr-too-low's shape: lr 5e-4 too low, x2 suggested, small hparams beside it (min_lr, eps, betas)."""
    f = Finding("O001", "lr-too-low", Severity.WARNING, Confidence.HIGH,
                "lr 5.00e-4 (4.75e-4 effective after warmup) is too low", 131, 330,
                {"peak_lr": 5e-4, "effective_lr": 0.000475, "update_ratio": 0.002138, "loss_noise": 0.0002424},
                (Recommendation("lr", 5e-4, 1e-3, "x2.0 from the data"),
                 Recommendation("weight_decay", 0.0, 1e-5, "a little decay"),
                 Recommendation("warmup_ratio", 0.1, 0.06, "RoBERTa uses 6%")))
    hparams = {"lr": 5e-4, "min_lr": 6e-5, "eps": 1e-8, "betas": [0.9, 0.999], "weight_decay": 0.0,
               "warmup_ratio": 0.1, "init_loss_scale": 65536.0}
    summary = RunSummary("/runs/r", "r", ("postmortem-run",), 0, 599, 600, ("loss", "lr"), hparams, (),
                         status="completed")
    return Diagnosis(summary, (f,), ("lr-too-low",))


@pytest.mark.parametrize("value, text", [
    (5e-4, "5e-4"), (0.000475, "4.75e-4"), (6e-5, "6e-5"), (1e-8, "1e-8"), (0.001, "0.001"), (0.002138, "0.002138"),
    (0.5, "0.5"), (1234.5, "1234"), (16040.17, "1.604e4"), (65536.0, "65536.0"), (1.2e7, "1.2e7"), (-4e-4, "-4e-4"),
    (0.0, "0.0"),
])
def test_below_a_thousandth_and_for_fractions_from_ten_thousand_numbers_are_in_e_notation(value, text):
    # The detectors' messages switch at the same magnitudes (stats.fmt_num): "lr 5.00e-4" beside a table that
    # said `lr` 0.0005 read as two different numbers.
    assert fmt.number(value) == text


@pytest.mark.parametrize("before, after, texts", [
    (5e-4, 1e-3, ("5e-4", "1e-3")),  # was "5e-4 -> 0.001"
    (1.5e-3, 7.5e-4, ("1.5e-3", "7.5e-4")),
    (0.3, 0.15, ("0.3", "0.15")),
    (8, 32, ("8", "32")),
    ("fp16", "bf16", ("fp16", "bf16")),
    (None, 1e-3, ("-", "0.001")),
])
def test_a_change_writes_its_two_values_in_one_notation(before, after, texts):
    assert fmt.number_pair(before, after) == texts


def test_the_markdown_report_has_no_python_or_mixed_notation():
    text = markdown(build_report(small_numbers_diagnosis(), figures=False))
    assert not PYTHON_EXPONENT.search(text) and not PLAIN_UNDER_A_THOUSANDTH.search(text)
    assert "`lr 5e-4 -> 1e-3`" in text and "| `min_lr` | `6e-5` |" in text and "| `eps` | `1e-8` |" in text
    assert "`effective_lr` 4.75e-4" in text


def test_the_html_report_has_no_python_or_mixed_notation():
    text = html(build_report(small_numbers_diagnosis(), figures=False))
    assert not PYTHON_EXPONENT.search(text) and not PLAIN_UNDER_A_THOUSANDTH.search(text)
    assert "lr 5e-4 -&gt; 1e-3" in text


def test_the_terminal_fix_line_uses_the_report_notation():
    text = terminal_summary(small_numbers_diagnosis(), color=False)
    assert "fix: lr 5e-4 -> 1e-3; weight_decay 0.0 -> 1e-5; warmup_ratio 0.1 -> 0.06" in text


def test_the_patch_is_valid_json_written_in_the_report_notation():
    patch = build_report(small_numbers_diagnosis(), figures=False).patch
    assert '"lr": 1e-3' not in patch.json and '"lr": 0.001' in patch.json  # one value: plain from 1e-3 up
    assert '"weight_decay": 1e-5' in patch.json and "e-05" not in patch.json
    assert json.loads(patch.json) == {"lr": 0.001, "weight_decay": 1e-5, "warmup_ratio": 0.06}
    assert "--set weight_decay=1e-5" in patch.overrides


def test_json_text_keeps_strings_lists_and_nested_objects_valid():
    value = {"a": [0.9, 1e-8], "b": {"c": "x\"y", "d": None, "e": True}, "f": {}, "g": 3}
    assert json.loads(fmt.json_text(value)) == value


def test_the_run_overview_writes_hparams_in_the_report_notation():
    # "hparams: lr=3e-05" on the terminal above a report that writes 3e-5.
    from analyzer.cli import run_overview
    from tests.conftest import make_run

    run = make_run({"loss": [1.0, 2.0]}, hparams={"learning_rate": 3e-5, "adam_epsilon": 1e-8})
    assert "lr=3e-5" in run_overview(run) and "e-05" not in run_overview(run)


def test_counts_have_thousands_separators_as_the_messages_write_them():
    # lightning_nan: "holds 1,154 non-finite values" above a checkpoint table that said 1154.
    assert fmt.count(1154) == "1,154" and fmt.count(12) == "12"
