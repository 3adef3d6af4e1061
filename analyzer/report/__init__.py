"""Reports: markdown, self-contained HTML, findings.json, JUnit XML, the terminal table, the CI summary, sweep indexes.

Everything is built first as plain objects (`model.build_report`), then formatted by templates in templates/.
matplotlib and jinja2 are imported inside functions, so importing this package costs nothing.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

from analyzer.findings import Diagnosis

FORMATS = ("md", "html", "json", "junit")
FILE_NAMES = {"md": "report.md", "html": "report.html", "json": "findings.json", "junit": "junit.xml"}
FIGURES_DIR = "figures"
# figures/<id>.svg as model.FigureView ids them: "00-overview", or "<finding index, 2+ digits>-<detector>-<plot>".
OVERVIEW_FIGURE = "00-overview"
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
    _refuse_to_overwrite_inputs(run, out_dir, formats)
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
        # Only now, with the new figures and the report.md that links them in place: until this line the old
        # report.md (and its figures) stayed whole, so no report.md ever links a missing figure.
        remove_stale_figures(out_dir, {Path(fig.file).name for fig in figures}, run)
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


def remove_stale_figures(out_dir: Path, keep: set[str], run=None) -> list[Path]:
    """Delete the figures an earlier report left in out_dir/figures/ that the new one does not link; return them.

    Only files Postmortem itself writes go: plain files (never links) named as the report model names figures
    (`own_figure_name`), never one the run was read from. Anything else there (the user's notes, other SVGs,
    folders) stays. figures/ itself goes only when this emptied it.
    """
    folder = Path(out_dir) / FIGURES_DIR
    if folder.is_symlink() or not folder.is_dir():  # a linked figures/ leads outside out_dir: not ours to clean
        return []
    with os.scandir(folder) as entries:  # ours are plain files: write_atomic's os.replace never leaves a link
        candidates = sorted(Path(e.path) for e in entries if e.name not in keep and e.name.endswith(".svg")
                            and own_figure_name(e.name) and e.is_file(follow_symlinks=False))
    inputs = _run_files(run) if candidates else set()
    removed = []
    for path in candidates:
        if path.resolve() in inputs:
            continue
        try:
            path.unlink()
        except OSError:  # gone already, or not ours to delete after all: the new report never links it
            continue
        removed.append(path)
    if removed:
        try:
            folder.rmdir()  # only when empty: whatever else is there keeps the folder
        except OSError:
            pass
    return removed


def own_figure_name(name: str) -> bool:
    """Whether a file name is one a Postmortem report gives its figures (names of the detectors and plots known)."""
    return _own_figure_pattern().fullmatch(name) is not None


@functools.cache
def _own_figure_pattern() -> re.Pattern[str]:
    from analyzer.detectors import DETECTORS  # here: only a figures/ with an SVG this report did not write needs it
    from analyzer.report.plots import PLOTS

    detectors = "|".join(sorted(re.escape(d.name) for d in DETECTORS.values()))
    plots = "|".join(sorted(re.escape(name) for name in PLOTS))
    return re.compile(rf"(?:{OVERVIEW_FIGURE}|[0-9]{{2,}}-(?:{detectors})-(?:{plots}))\.svg")


def _refuse_to_overwrite_inputs(run, out_dir: Path, formats: Sequence[str]) -> None:
    """A report file named like a file the run was read from (`diagnose findings.json --out .`) is an error: nothing
    the user gave us is ever replaced."""
    inputs = _run_files(run)
    for fmt in formats:
        target = (out_dir / FILE_NAMES[fmt]).resolve()
        if target in inputs:
            from analyzer.errors import InputError

            raise InputError(f"the {fmt} report would replace this file, which the run was read from; write the "
                             "reports elsewhere with --out", path=target)


def _run_files(run) -> set[Path]:
    """The files a run was read from (when out_dir is the run dir itself): never deleted, whatever their name."""
    if run is None:
        return set()
    root = Path(run.path)
    base = root if root.is_dir() else root.parent
    files = {root.resolve()}
    files.update((base / name).resolve() for name in (*run.sources, *(c.path for c in run.checkpoints)))
    return files


def markdown(report) -> str:
    from analyzer.report.render import render, tidy_markdown

    return tidy_markdown(render("report.md.j2", r=report))


def html(report) -> str:
    from analyzer.report.render import render

    return render("report.html.j2", r=report)


def terminal_summary(diagnosis: Diagnosis, color: bool, width: int = 100, wrap: bool = False) -> str:
    """A compact table (severity, finding, steps, message), root causes first, and the verdict (wrapped to `width`
    when `wrap`: a terminal, not a log file)."""
    from analyzer.report.terminal import summary

    return summary(diagnosis, color=color, width=width, wrap=wrap)


def github_summary(diagnosis: Diagnosis, artifact_hint: str) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY, under GitHub's 1 MiB limit (cut with a pointer to the artifact)."""
    from analyzer.report.summary import github_summary as build

    return build(diagnosis, artifact_hint)


def index_page(entries: list[tuple[str, Diagnosis, Path]], skipped: Sequence[tuple[str, str]] = ()) -> str:
    """Markdown index of several runs (`diagnose --recursive`): name, verdict, worst severity, link to each report.

    Each entry's path is the link, used as given (make it relative to where the index is written). `skipped` lists
    the folders that were not diagnosed, as (name, reason).
    """
    from analyzer.report.summary import index

    return index(entries, html=False, skipped=skipped)


def index_page_html(entries: list[tuple[str, Diagnosis, Path]], skipped: Sequence[tuple[str, str]] = ()) -> str:
    """The HTML variant of index_page: one self-contained file."""
    from analyzer.report.summary import index

    return index(entries, html=True, skipped=skipped)


def write_index(entries: list[tuple[str, Diagnosis, Path]], out_dir: Path,
                skipped: Sequence[tuple[str, str]] = ()) -> list[Path]:
    """Write index.md and index.html into out_dir, linking each run's report (entries give each run's report dir);
    `skipped` (name, reason) are the sweep's folders that were not diagnosed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, as_html in zip(INDEX_NAMES, (False, True)):
        preferred = ("report.html", "report.md") if as_html else ("report.md", "report.html")
        linked = [(run_name, diagnosis, _relative_link(Path(target), out_dir, preferred))
                  for run_name, diagnosis, target in entries]
        text = index_page_html(linked, skipped) if as_html else index_page(linked, skipped)
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
    never sees half a report.

    A file name that is not UTF-8 (os.fsdecode's surrogate escapes in a run's path, name or sources) is written as
    a visible `\\xNN` per byte, JSON-escaped in a .json file: never an encoding error, never dropped.
    """
    from analyzer.report.format import visible_bytes, visible_bytes_json

    path = Path(path)
    text = visible_bytes_json(text) if path.suffix == ".json" else visible_bytes(text)
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
