"""Reports: markdown, self-contained HTML, findings.json, JUnit XML, the terminal table, the CI summary, sweep indexes.

Everything is built first as plain objects (`model.build_report`), then formatted by templates in templates/.
matplotlib and jinja2 are imported inside functions, so importing this package costs nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from analyzer.findings import Diagnosis

FORMATS = ("md", "html", "json", "junit")
FILE_NAMES = {"md": "report.md", "html": "report.html", "json": "findings.json", "junit": "junit.xml"}
FIGURES_DIR = "figures"
INDEX_NAMES = ("index.md", "index.html")


def write_reports(run, diagnosis: Diagnosis, out_dir: Path, formats: Sequence[str], fail_on: str) -> list[Path]:
    """Write the chosen formats into out_dir (created), each file atomically; return the paths written.

    Markdown figures go to out_dir/figures/*.svg and are referenced relatively, so report.md renders on GitHub and
    in any viewer of the artifact folder; the HTML inlines the same SVGs as data: URIs, so it is one file.
    """
    from analyzer import __version__

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown report format(s): {', '.join(unknown)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    report = None
    if "md" in formats or "html" in formats:
        from analyzer.report.model import build_report

        report = build_report(diagnosis, run, version=__version__)
    if "md" in formats:
        assert report is not None
        figures = [f for f in (report.overview, *(g for v in report.findings for g in v.figures)) if f is not None]
        if figures:
            (out_dir / FIGURES_DIR).mkdir(exist_ok=True)
            for fig in figures:
                write_atomic(out_dir / fig.file, fig.svg)
        written.append(write_atomic(out_dir / FILE_NAMES["md"], markdown(report)))
    if "html" in formats:
        assert report is not None
        written.append(write_atomic(out_dir / FILE_NAMES["html"], html(report)))
    if "json" in formats:
        from analyzer.findings import to_json

        written.append(write_atomic(out_dir / FILE_NAMES["json"], to_json(diagnosis, __version__)))
    if "junit" in formats:
        from analyzer.report.junit import junit_xml

        written.append(write_atomic(out_dir / FILE_NAMES["junit"], junit_xml(diagnosis, fail_on)))
    return written


def markdown(report) -> str:
    from analyzer.report.render import render, tidy_markdown

    return tidy_markdown(render("report.md.j2", r=report))


def html(report) -> str:
    from analyzer.report.render import render

    return render("report.html.j2", r=report)


def terminal_summary(diagnosis: Diagnosis, color: bool, width: int = 100) -> str:
    """A compact table (severity, finding, steps, message), root causes first, and a one-line verdict."""
    from analyzer.report.terminal import summary

    return summary(diagnosis, color=color, width=width)


def github_summary(diagnosis: Diagnosis, artifact_hint: str) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY, under GitHub's 1 MiB limit (cut with a pointer to the artifact)."""
    from analyzer.report.summary import github_summary as build

    return build(diagnosis, artifact_hint)


def index_page(entries: list[tuple[str, Diagnosis, Path]]) -> str:
    """Markdown index of several runs (`diagnose --recursive`): name, verdict, worst severity, link to each report.

    Each entry's path is the link, used as given (make it relative to where the index is written).
    """
    from analyzer.report.summary import index

    return index(entries, html=False)


def index_page_html(entries: list[tuple[str, Diagnosis, Path]]) -> str:
    """The HTML variant of index_page: one self-contained file."""
    from analyzer.report.summary import index

    return index(entries, html=True)


def write_index(entries: list[tuple[str, Diagnosis, Path]], out_dir: Path) -> list[Path]:
    """Write index.md and index.html into out_dir, linking each run's report (entries give each run's report dir)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, as_html in zip(INDEX_NAMES, (False, True)):
        preferred = ("report.html", "report.md") if as_html else ("report.md", "report.html")
        linked = [(run_name, diagnosis, _relative_link(Path(target), out_dir, preferred))
                  for run_name, diagnosis, target in entries]
        text = index_page_html(linked) if as_html else index_page(linked)
        written.append(write_atomic(out_dir / name, text))
    return written


def _relative_link(target: Path, out_dir: Path, preferred: Sequence[str]) -> Path:
    """The report file inside a run's report dir (the first that exists), relative to the index."""
    if target.is_dir() or not target.suffix:
        for name in (*preferred, FILE_NAMES["json"]):
            if (target / name).is_file():
                target = target / name
                break
        else:
            target = target / preferred[0]
    try:
        return Path(os.path.relpath(target.resolve(), out_dir.resolve()))
    except ValueError:  # another drive on Windows
        return target.resolve()


def write_atomic(path: Path, text: str) -> Path:
    """Write text to path through a temporary file in the same folder and os.replace, so a reader (or a crash)
    never sees half a report."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is as readable as any file the user writes
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
