"""What write_reports and the summaries produce: files, atomic writes, JUnit, escaping, terminal, CI summary, index."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from analyzer import __version__
from analyzer.findings import (
    Confidence, DetectorError, Evidence, Finding, Recommendation, Severity, Skipped, to_json,
)
from analyzer.cli import diagnose_command
from analyzer.report import (
    github_summary, index_page, index_page_html, own_figure_name, terminal_summary, write_atomic, write_index,
    write_reports,
)
from analyzer.report.model import build_report
from analyzer.report.render import autoescaped, template_dirs
from analyzer.run import Event
from tests.conftest import SAMPLE_RUNS, make_run
from tests.report.cases import diagnose_inline, healthy, seed002, seed002_findings

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def seed002_outputs(tmp_path_factory):
    run, d = seed002()
    out = tmp_path_factory.mktemp("seed002") / "deep" / "postmortem"
    paths = write_reports(run, d, out, ["md", "html", "json", "junit"], "critical")
    return out, paths, d


# --- files ------------------------------------------------------------------------------------------------------

def test_write_reports_creates_the_folder_and_returns_each_file(seed002_outputs):
    out, paths, _ = seed002_outputs
    assert [p.name for p in paths] == ["report.md", "report.html", "findings.json", "junit.xml"]
    assert all(p.is_file() and p.parent == out for p in paths)


def test_no_temporary_file_is_left_behind(seed002_outputs):
    out, _, _ = seed002_outputs
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_markdown_figures_are_files_beside_the_report_linked_relatively(seed002_outputs):
    out, _, _ = seed002_outputs
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert links and all(link.startswith("figures/") and (out / link).is_file() for link in links)
    assert all((out / link).read_text().startswith("<svg") for link in links)


def test_findings_json_is_the_schema_writer_output(seed002_outputs):
    out, _, d = seed002_outputs
    assert (out / "findings.json").read_text() == to_json(d, __version__)


def test_only_the_requested_formats_are_written(tmp_path):
    run, d = healthy()
    assert [p.name for p in write_reports(run, d, tmp_path, ["json"], "critical")] == ["findings.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["findings.json"]


def test_an_unknown_format_is_refused(tmp_path):
    run, d = healthy()
    with pytest.raises(ValueError, match="pdf"):
        write_reports(run, d, tmp_path, ["pdf"], "critical")


def test_write_atomic_replaces_a_file_and_keeps_normal_permissions(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    write_atomic(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o044 == 0o044


# --- re-running into a folder that holds an earlier report ------------------------------------------------------

FIRST_ONLY = ["00-overview.svg", "01-distill-temperature-blowup-kd.svg", "01-distill-temperature-blowup-loss.svg"]


def figure_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "figures").iterdir())


def local_links(out: Path) -> list[str]:
    """Every link target in report.md that is a path (figures, not anchors or web addresses)."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", (out / "report.md").read_text())
            if not t.startswith(("#", "http://", "https://"))]


def first_finding_only():
    run, _ = seed002()
    return run, diagnose_inline(run, seed002_findings()[:1])


@pytest.fixture
def earlier_report(seed002_outputs, tmp_path) -> Path:
    """A copy of the five-finding seed002 report (ten figures): the folder a second diagnose writes into."""
    out = tmp_path / "out"
    shutil.copytree(seed002_outputs[0], out)
    assert len(figure_names(out)) == 10
    return out


def test_a_rerun_with_fewer_findings_leaves_exactly_the_figures_its_report_links(earlier_report):
    run, d = first_finding_only()
    write_reports(run, d, earlier_report, ["md", "html", "json"], "critical")
    links = local_links(earlier_report)
    assert sorted(links) == [f"figures/{name}" for name in FIRST_ONLY]
    assert figure_names(earlier_report) == FIRST_ONLY
    assert all((earlier_report / link).is_file() for link in links)


def test_files_the_user_keeps_beside_the_figures_survive_a_rerun(earlier_report):
    mine = {"figures/notes.txt": "my notes", "figures/loss-by-hand.svg": "<svg/>", "figures/01-my-plot.svg": "<svg/>",
            "figures/02-grad-explosion-loss.svg.bak": "old", "figures/old/02-grad-explosion-loss.svg": "<svg/>",
            "02-grad-explosion-loss.svg": "<svg/>"}
    for name, text in mine.items():
        (earlier_report / name).parent.mkdir(exist_ok=True)
        (earlier_report / name).write_text(text)
    write_reports(*first_finding_only(), earlier_report, ["md"], "critical")
    assert {name: (earlier_report / name).read_text() for name in mine} == mine
    assert figure_names(earlier_report) == sorted(
        [*FIRST_ONLY, "01-my-plot.svg", "02-grad-explosion-loss.svg.bak", "loss-by-hand.svg", "notes.txt", "old"])


def test_a_report_without_figures_removes_the_earlier_figures_and_the_folder_it_emptied(earlier_report):
    _, d = seed002()
    write_reports(None, d, earlier_report, ["md"], "critical")  # no run: no plots
    assert not (earlier_report / "figures").exists()
    assert local_links(earlier_report) == []


def test_the_figures_folder_stays_while_it_holds_a_user_file(earlier_report):
    (earlier_report / "figures" / "notes.txt").write_text("mine")
    _, d = seed002()
    write_reports(None, d, earlier_report, ["md"], "critical")
    assert figure_names(earlier_report) == ["notes.txt"]


def test_an_empty_figures_folder_it_did_not_empty_is_left_alone(tmp_path):
    (tmp_path / "figures").mkdir()
    _, d = seed002()
    write_reports(None, d, tmp_path, ["md"], "critical")
    assert (tmp_path / "figures").is_dir()


def test_formats_without_markdown_leave_the_earlier_figures_for_the_earlier_report_md(earlier_report):
    write_reports(*first_finding_only(), earlier_report, ["html", "json"], "critical")
    assert len(figure_names(earlier_report)) == 10
    assert all((earlier_report / link).is_file() for link in local_links(earlier_report))


def test_a_link_named_like_a_figure_is_left_and_its_target_untouched(earlier_report, tmp_path):
    target = tmp_path / "elsewhere.svg"
    target.write_text("<svg/>")
    link = earlier_report / "figures" / "04-loss-oscillation-loss.svg"
    link.unlink()
    link.symlink_to(target)
    write_reports(*first_finding_only(), earlier_report, ["md"], "critical")
    assert link.is_symlink() and target.read_text() == "<svg/>"


def test_a_linked_figures_folder_is_not_cleaned(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "05-perplexity-misreport-loss.svg").write_text("<svg/>")
    out = tmp_path / "out"
    out.mkdir()
    (out / "figures").symlink_to(shared, target_is_directory=True)
    write_reports(*first_finding_only(), out, ["md"], "critical")
    assert (shared / "05-perplexity-misreport-loss.svg").read_text() == "<svg/>"


def test_a_file_the_run_was_read_from_is_never_removed_whatever_its_name(tmp_path):
    # `diagnose RUN --out RUN` makes the run dir the output folder.
    source = tmp_path / "figures" / "03-nonfinite-onset-loss.svg"
    source.parent.mkdir()
    source.write_text("<svg/>")
    run = dataclasses.replace(make_run({"loss": np.linspace(3, 2, 20)}, file="figures/03-nonfinite-onset-loss.svg"),
                              path=str(tmp_path))
    write_reports(run, diagnose_inline(run, ()), tmp_path, ["md"], "critical")
    assert source.read_text() == "<svg/>"


def test_diagnose_refuses_the_run_dir_as_output_folder_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(SAMPLE_RUNS / "kd-temperature-blowup-fixed", run_dir)
    (run_dir / "figures").mkdir()
    (run_dir / "figures" / "09-loss-spike-loss.svg").write_text("<svg/>")
    given = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = CliRunner().invoke(diagnose_command, [str(run_dir), "--out", str(run_dir), "--format", "md"])
    assert result.exit_code == 2
    assert "--out is the run directory itself" in result.output and len(result.output.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == given


def test_a_report_never_replaces_a_file_the_run_was_read_from(tmp_path):
    log = tmp_path / "findings.json"  # JSON lines that happen to carry the report's name
    log.write_text("".join(f'{{"step": {i}, "loss": {3 - i / 50}}}\n' for i in range(30)))
    given = log.read_bytes()
    result = CliRunner().invoke(diagnose_command, [str(log), "--out", str(tmp_path), "--format", "json"])
    assert result.exit_code == 2
    assert "findings.json" in result.output and "--out" in result.output
    assert log.read_bytes() == given


def test_every_figure_the_report_model_names_is_recognised_as_its_own():
    run, d = seed002()
    report = build_report(d, run, draw=False)
    names = [Path(f.file).name for f in (report.overview, *(g for v in report.findings for g in v.figures))]
    assert len(names) == 10 and all(own_figure_name(n) for n in names)
    assert own_figure_name("123-loss-spike-loss.svg")  # a hundred findings and more: three digits
    for foreign in ("01-my-plot.svg", "overview.svg", "00-overview.svg.bak", "1-loss-spike-loss.svg",
                    "01-loss-spike-loss.png", "01-loss-spike-loss-copy.svg", ".00-overview.svg.x1.tmp"):
        assert not own_figure_name(foreign), foreign


# --- html -------------------------------------------------------------------------------------------------------

def test_html_is_self_contained_with_a_content_security_policy(seed002_outputs):
    out, _, _ = seed002_outputs
    text = (out / "report.html").read_text()
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:;' in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "url(" not in text and "<script" not in text and "<link" not in text
    assert text.count('src="data:image/svg+xml;base64,') == 1 + 9  # overview + two plots per finding, less one


def test_html_shows_every_finding_and_the_recommended_change(seed002_outputs):
    out, _, d = seed002_outputs
    text = (out / "report.html").read_text()
    assert text.count('<article class="card') == len(d.findings)
    assert '<td class="num new">2.0</td>' in text and '&#34;temperature&#34;: 2.0' in text


def hostile():
    """A run whose metric name, hparam value, log line and finding message carry markup."""
    run = make_run({"loss": np.linspace(3, 2, 20), SCRIPT: np.ones(20)}, hparams={"optimizer": SCRIPT},
                   events=[Event("warning", 3, SCRIPT, "train.log", 4)])
    f = Finding("L001", "loss-spike", Severity.CRITICAL, Confidence.HIGH, f"spike in {SCRIPT}", 5, 6,
                metrics={"metric": SCRIPT}, recommendations=(Recommendation("lr", SCRIPT, 1e-4, SCRIPT),),
                evidence=(Evidence("train.log", 4, f"step 5 {SCRIPT} | `x`"),))
    return run, diagnose_inline(run, (f,), (Skipped("grad-explosion", SCRIPT),))


def test_every_string_from_a_log_is_escaped_in_html(tmp_path):
    run, d = hostile()
    text = (write_reports(run, d, tmp_path, ["html"], "critical")[0]).read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<dt>metrics</dt><dd>{escaped}, loss</dd>" in text  # a metric name
    assert f'<span class="v mono">{escaped}</span>' in text  # an hparam value
    assert f'<td class="line">step 5 {escaped} | `x`</td>' in text  # a log line
    assert f'<p class="message">spike in {escaped}</p>' in text


def test_every_string_from_a_log_is_inert_in_markdown(tmp_path):
    run, d = hostile()
    text = (write_reports(run, d, tmp_path, ["md"], "critical")[0]).read_text()
    outside_code = re.sub(r"(`+)[^`]*?\1|```[\s\S]*?```", "", text)
    assert "<script" not in outside_code
    assert "spike in &lt;script>alert(1)&lt;/script>" in text


def test_html_templates_autoescape_and_markdown_templates_do_not():
    names = [p.relative_to(d).as_posix() for d in template_dirs() for p in d.rglob("*.j2")]
    assert any(n.endswith(".html.j2") for n in names)
    for name in names:
        assert autoescaped(name) is name.endswith(".html.j2"), name


def test_every_detector_partial_has_both_formats():
    (folder,) = template_dirs()[:1]
    md = {p.name[: -len(".md.j2")] for p in (folder / "findings").glob("*.md.j2")}
    html = {p.name[: -len(".html.j2")] for p in (folder / "findings").glob("*.html.j2")}
    assert md == html and "_default" in md


# --- junit ------------------------------------------------------------------------------------------------------

def junit(d, fail_on, tmp_path):
    path = write_reports(None, d, tmp_path, ["junit"], fail_on)[0]
    return ET.parse(path).getroot()


def test_junit_has_a_case_per_detector_a_failure_per_finding_and_skips(tmp_path):
    from analyzer.detectors import DETECTORS

    _, d = seed002()
    root = junit(d, "critical", tmp_path)
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(DETECTORS)
    assert len(root.findall(".//failure")) == 3 and root.get("failures") == "3"
    assert len(root.findall(".//skipped")) == 3
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"D001 distill-temperature-blowup", "G001 grad-explosion", "N001 nonfinite-onset"}


def test_junit_fail_on_warning_fails_warnings_too_and_never_fails_nothing(tmp_path):
    _, d = seed002()
    assert len(junit(d, "warning", tmp_path).findall(".//failure")) == 5
    root = junit(d, "never", tmp_path)
    assert not root.findall(".//failure") and root.findall(".//system-out")


def test_junit_reports_crashed_detectors_as_errors_and_survives_control_characters(tmp_path):
    run, d = healthy()
    f = Finding("L001", "loss-spike", Severity.CRITICAL, Confidence.HIGH, "bad \x1b[31m\x00 byte", 1, 2)
    d = diagnose_inline(run, (f,))
    from dataclasses import replace

    d = replace(d, errors=(DetectorError("loss-plateau", "ZeroDivisionError: x"),))
    root = junit(d, "critical", tmp_path)
    assert root.find(".//failure").get("message").startswith("bad \ufffd[31m\ufffd")
    assert root.find(".//error").get("message") == "ZeroDivisionError: x"


# --- terminal ---------------------------------------------------------------------------------------------------

def test_terminal_summary_lists_root_causes_first_without_colour_when_asked():
    _, d = seed002()
    text = terminal_summary(d, color=False, width=100)
    lines = text.splitlines()
    assert "\x1b[" not in text
    assert lines[0].split() == ["SEVERITY", "FINDING", "STEPS", "MESSAGE"]
    assert lines[1].startswith("*critical  D001 distill-temperature-blowup")
    assert all(len(line) <= 100 for line in lines[:-3])
    assert lines[-2].startswith("verdict: The run is broken") and lines[-1] == (
        "fix: temperature 3.0 -> 2.0; min_temperature 2.0 -> 1.5")


def test_terminal_summary_colours_severities_when_asked():
    _, d = seed002()
    assert "\x1b[1;31mcritical" in terminal_summary(d, color=True)


def test_terminal_summary_never_passes_escape_sequences_from_logs():
    run, _ = healthy()
    f = Finding("L001", "loss-spike", Severity.WARNING, Confidence.HIGH, "evil \x1b]0;title\x07 text", 1, 2)
    text = terminal_summary(diagnose_inline(run, (f,)), color=False)
    assert "\x1b" not in text and "\x07" not in text


def test_terminal_summary_of_a_clean_run_is_one_line():
    _, d = healthy()
    assert terminal_summary(d, color=False) == (
        "verdict: No problem found in steps 0-2990 (3 detectors could not run).")


# --- CI summary ---------------------------------------------------------------------------------------------------

def test_github_summary_has_the_verdict_table_patch_and_artifact():
    _, d = seed002()
    text = github_summary(d, artifact_hint="postmortem-report")
    assert "### Postmortem: test-run (Critical)" in text
    assert "| root cause | critical | D001 distill-temperature-blowup | 0-699 |" in text
    assert "| `temperature` | `3.0` | **`2.0`** |" in text and "`postmortem-report`" in text


def test_github_summary_stays_under_the_limit_and_points_to_the_artifact():
    run, _ = healthy()
    many = tuple(Finding("L001", f"loss-spike-{i}", Severity.WARNING, Confidence.HIGH, "x" * 2000, i, i)
                 for i in range(3000))
    from analyzer.report.summary import SUMMARY_LIMIT, github_summary as build

    d = diagnose_inline(run, many)
    text = github_summary(d, "the-artifact")
    assert len(text.encode()) < SUMMARY_LIMIT and "not shown here" in text and "the-artifact" in text
    small = build(d, "the-artifact", limit=4000)
    assert len(small.encode()) <= 4000 and "the-artifact" in small


# --- sweep index --------------------------------------------------------------------------------------------------

def test_index_lists_runs_worst_first_with_links():
    _, bad = seed002()
    _, good = healthy()
    text = index_page([("a-good", good, Path("a-good/report.md")), ("b-bad", bad, Path("b bad/report.md"))])
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert rows[0].startswith("| [b-bad](b%20bad/report.md) | Critical | 3 critical, 2 warning |")
    assert rows[1].startswith("| [a-good](a-good/report.md) | OK | none |")


def test_html_index_escapes_run_names():
    _, good = healthy()
    text = index_page_html([(SCRIPT, good, Path("x/report.html"))])
    assert "<script" not in text and "&lt;script&gt;" in text


def test_write_index_links_each_run_report_relative_to_the_index(tmp_path):
    run, d = healthy()
    write_reports(run, d, tmp_path / "run1", ["md", "html"], "critical")
    paths = write_index([("run1", d, tmp_path / "run1")], tmp_path)
    assert [p.name for p in paths] == ["index.md", "index.html"]
    assert "(run1/report.md)" in paths[0].read_text() and 'href="run1/report.html"' in paths[1].read_text()


# --- speed ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_million_point_run_renders_in_a_few_seconds(tmp_path):
    n = 1_000_000
    loss = 3 + 0.05 * np.random.default_rng(0).standard_normal(n)
    loss[654_321] = 40.0
    run = make_run({"loss": loss, "grad_norm": np.abs(loss)})
    findings = (Finding("L001", "loss-spike", Severity.CRITICAL, Confidence.HIGH, "spike", 654_321, 654_321),
                Finding("G001", "grad-explosion", Severity.CRITICAL, Confidence.HIGH, "gn", 654_321, 654_330))
    d = diagnose_inline(run, findings)
    started = time.perf_counter()
    write_reports(run, d, tmp_path, ["md", "html", "json"], "critical")
    assert time.perf_counter() - started < 6.0


def test_junit_has_cases_only_for_the_detectors_chosen(tmp_path):
    from dataclasses import replace

    _, d = seed002()
    d = replace(d, detectors=("loss-spike", "distill-temperature-blowup"))
    names = [c.get("name") for c in junit(d, "critical", tmp_path).findall("./testsuite/testcase")]
    # the chosen two, then every detector a finding or skip names (a Diagnosis built by hand may lack them)
    assert names[:2] == ["L001 loss-spike", "D001 distill-temperature-blowup"]
    assert "G002 grad-vanishing" not in names
