"""Golden reports: report.md for every sample run (and the inline seed cases), report.html for two, compared as text.

Figures are drawn empty (their bytes change with matplotlib's version); the image references stay in the text.
Regenerate with: python -m pytest tests/report/test_golden.py --update-golden
Mismatches are written to tests/artifacts/actual/ for a diff.
"""

from __future__ import annotations

import re

import pytest

from analyzer.report import html, markdown
from analyzer.report.model import build_report
from tests.conftest import ROOT, SAMPLE_RUNS
from tests.report.cases import CASES

GOLDEN = ROOT / "tests" / "golden"
ACTUAL = ROOT / "tests" / "artifacts" / "actual"
VERSION = "VERSION"  # goldens do not change with the analyzer's version
# The two sample runs whose HTML is kept: the seed-002 incident (most sections) and a healthy control.
HTML_SAMPLE_RUNS = ("kd-temperature-blowup", "kd-temperature-blowup-fixed")
HTML_INLINE = ("inline_seed002",)


def sample_runs() -> list[str]:
    if not SAMPLE_RUNS.is_dir():
        return []
    return sorted(p.name for p in SAMPLE_RUNS.iterdir() if p.is_dir() and not p.name.startswith("."))


def load(case: str):
    if case in CASES:
        return CASES[case]()
    from analyzer.diagnose import diagnose_run
    from analyzer.ingest import read_run

    run = read_run(SAMPLE_RUNS / case)
    return run, diagnose_run(run)


def normalise(text: str) -> str:
    """Machine-independent text: the checkout's path and inlined images replaced by placeholders."""
    text = text.replace(str(ROOT), "<ROOT>")
    return re.sub(r"data:image/svg\+xml;base64,[A-Za-z0-9+/=]*", "data:image/svg+xml;base64,IMAGE", text)


def check(case: str, name: str, text: str, update: bool) -> None:
    golden = GOLDEN / case / name
    if update:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
        return
    actual = ACTUAL / case / name
    if not golden.is_file():
        actual.parent.mkdir(parents=True, exist_ok=True)
        actual.write_text(text, encoding="utf-8")
        pytest.fail(f"no golden {golden.relative_to(ROOT)}; output written to {actual.relative_to(ROOT)}. "
                    "Regenerate with: python -m pytest tests/report/test_golden.py --update-golden")
    expected = golden.read_text(encoding="utf-8")
    if text != expected:
        actual.parent.mkdir(parents=True, exist_ok=True)
        actual.write_text(text, encoding="utf-8")
        pytest.fail(f"{golden.relative_to(ROOT)} differs; see diff -u {golden.relative_to(ROOT)} "
                    f"{actual.relative_to(ROOT)}. If the change is intended: "
                    "python -m pytest tests/report/test_golden.py --update-golden")
    elif actual.exists():
        actual.unlink()


def report_of(case: str):
    run, diagnosis = load(case)
    if diagnosis.errors:  # a crashed detector is a bug to fix, never an expected output to record
        pytest.fail(f"{case}: detectors crashed: " + "; ".join(f"{e.name}: {e.error}" for e in diagnosis.errors))
    return build_report(diagnosis, run, version=VERSION, draw=False)


@pytest.mark.parametrize("case", [*CASES, *sample_runs()])
def test_markdown_report_matches_golden(case, update_golden):
    check(case, "report.md", normalise(markdown(report_of(case))), update_golden)


@pytest.mark.parametrize("case", [*HTML_INLINE, *(c for c in HTML_SAMPLE_RUNS if c in sample_runs())])
def test_html_report_matches_golden(case, update_golden):
    check(case, "report.html", normalise(html(report_of(case))), update_golden)


def test_every_golden_has_a_case():
    """A golden left behind by a removed sample run is stale: delete it."""
    cases = {*CASES, *sample_runs()}
    stale = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and p.name not in cases) if GOLDEN.is_dir() else []
    assert not stale, f"goldens without a case: {stale}"
