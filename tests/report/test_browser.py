"""The HTML report in a real browser (headless Chromium): no console errors, findings and plots visible, printable.

Screenshots and a print PDF are kept under tests/artifacts/ for a person to look at.
Needs Debian's chromium (`apt-get install chromium`) and `pip install playwright`; skipped otherwise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analyzer.report import write_reports
from tests.conftest import ROOT, SAMPLE_RUNS
from tests.report.cases import seed002

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download is not used: the system chromium, with no network and no background services.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "artifacts"
LAPTOP = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_report(browser, html: Path, name: str):
    """Load the report; return (page, problems): console errors, page errors and failed requests."""
    page = browser.new_page(viewport=LAPTOP)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"report-{name}.png"), full_page=True)
    page.screenshot(path=str(ARTIFACTS / f"report-{name}-top.png"))
    return page, problems


def check_page(page, problems, n_findings: int) -> None:
    assert problems == []
    assert page.locator("h1.verdict").is_visible()
    cards = page.locator("article.card")
    assert cards.count() == n_findings
    for i in range(n_findings):
        assert cards.nth(i).is_visible()
    images = page.locator("img")
    assert images.count() > 0
    for i in range(images.count()):
        img = images.nth(i)
        img.scroll_into_view_if_needed()
        assert img.is_visible()
        assert img.evaluate("i => i.complete && i.naturalWidth > 0"), f"image {i} did not load"
    # Nothing wider than the window: no horizontal scrolling on a laptop.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_seed002_report_renders_cleanly(browser, tmp_path):
    run, d = seed002()
    html = write_reports(run, d, tmp_path, ["html"], "critical")[0]
    page, problems = open_report(browser, html, "inline_seed002")
    check_page(page, problems, len(d.findings))
    page.emulate_media(media="print")
    page.pdf(path=str(ARTIFACTS / "report-inline_seed002.pdf"), format="A4")
    assert not page.locator("nav.toc").is_visible()  # the print stylesheet hides navigation
    page.close()


def test_sample_run_report_renders_cleanly(browser, tmp_path):
    sample = SAMPLE_RUNS / "kd-temperature-blowup"
    if not sample.is_dir():
        pytest.fail("sample run kd-temperature-blowup missing (bash sample_runs/regenerate.sh)")
    from analyzer.diagnose import diagnose_run
    from analyzer.ingest import read_run

    copy = tmp_path / sample.name
    shutil.copytree(sample, copy)  # runs are never written into
    run = read_run(copy)
    d = diagnose_run(run)
    html = write_reports(run, d, tmp_path / "out", ["html"], "critical")[0]
    page, problems = open_report(browser, html, sample.name)
    check_page(page, problems, len(d.findings))
    page.close()


def test_printed_headings_stay_with_what_they_introduce(browser, tmp_path):
    # Printed, "Re-run with the change (reference trainer)" ended a page and its command began the next.
    run, d = seed002()
    html = write_reports(run, d, tmp_path, ["html"], "critical")[0]
    page = browser.new_page(viewport=LAPTOP)
    page.goto(html.as_uri())
    page.emulate_media(media="print")
    breaks = page.evaluate("[...document.querySelectorAll('h2, h3, h4')].map(h => getComputedStyle(h).breakAfter)")
    page.close()
    assert breaks and set(breaks) == {"avoid"}


def test_the_index_never_breaks_a_change_across_lines(browser, tmp_path):
    # The sweep index wrapped "max_grad_norm 0.0 -> 2.9" inside its arrow: "max_grad_norm 0.0 -" / "> 2.9".
    from analyzer.report import write_index

    run, d = seed002()
    write_reports(run, d, tmp_path / "r", ["html"], "critical")
    index = [p for p in write_index([("r", d, tmp_path / "r")], tmp_path) if p.name.endswith(".html")][0]
    page = browser.new_page(viewport={"width": 700, "height": 700})
    page.goto(index.as_uri())
    lines = page.evaluate("[...document.querySelectorAll('td.chips code')].map(c => "
                          "c.getBoundingClientRect().height / parseFloat(getComputedStyle(c).fontSize))")
    page.close()
    assert lines and max(lines) < 2  # one line of text is ~1.2-1.5 font sizes tall; two lines are over 2.4
