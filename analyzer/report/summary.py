"""Short markdown for CI ($GITHUB_STEP_SUMMARY, kept under GitHub's 1 MiB limit) and sweep indexes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from analyzer.findings import Diagnosis, Severity
from analyzer.report.model import SEVERITY_LABEL, build_report, verdict
from analyzer.report.render import render

# GitHub refuses a step summary over 1 MiB; the margin leaves room for what other steps append.
SUMMARY_LIMIT = 1024 * 1024 - 64 * 1024
MAX_SUMMARY_FINDINGS = 50  # a summary is a glance; the artifact has the rest


def github_summary(diagnosis: Diagnosis, artifact_hint: str, limit: int = SUMMARY_LIMIT) -> str:
    report = build_report(diagnosis, None, figures=False)
    total = len(report.findings)

    def attempt(shown: int) -> str:
        return render("summary.md.j2", r=report, findings=report.findings[:shown], cut=total - shown,
                      artifact=artifact_hint)

    shown = min(total, MAX_SUMMARY_FINDINGS)
    text = attempt(shown)
    if _size(text) > limit:
        low, high = 0, shown  # the most findings that fit
        while low < high:
            mid = (low + high + 1) // 2
            if _size(attempt(mid)) <= limit:
                low = mid
            else:
                high = mid - 1
        text = attempt(low)
    if _size(text) > limit:  # even the frame is too big (a huge verdict or recommendation table): cut by bytes
        text = _cut_to(text, limit, artifact_hint)
    return text


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut_to(text: str, limit: int, artifact_hint: str) -> str:
    pointer = f"\n\n... cut to fit GitHub's summary limit; the full report is in {artifact_hint}\n"
    budget = limit - _size(pointer)
    return text.encode("utf-8")[:budget].decode("utf-8", "ignore").rsplit("\n", 1)[0] + pointer


def sweep_summary(entries: Sequence[tuple[str, Diagnosis, str]], skipped: Sequence[tuple[str, str]] = (),
                  limit: int = SUMMARY_LIMIT) -> str:
    """One step summary for several runs (name, diagnosis, where its reports are): a table of every run, worst
    first, then each run's own summary in that order, as many as fit GitHub's limit together.

    Appended one by one, a sweep's summaries had no overview, left out the folders it skipped, and could add up
    past the 1 MiB that GitHub accepts for a step."""
    order = {"critical": 0, "warning": 1, "info": 2, "ok": 3}

    def rank(entry: tuple[str, Diagnosis, str]) -> tuple:
        worst = entry[1].worst()
        return (order[worst.value if worst else "ok"], entry[0])

    ordered = sorted(entries, key=rank)
    rows = index_rows([(name, diagnosis, Path(hint)) for name, diagnosis, hint in ordered])
    skipped_rows = tuple(SkippedRun(name, reason) for name, reason in sorted(skipped))
    sections = [github_summary(diagnosis, hint, limit) for _, diagnosis, hint in ordered]

    def head(cut: int) -> str:
        return render("sweep_summary.md.j2", rows=rows, tally=_tally(rows, skipped_rows), skipped=skipped_rows,
                      cut=cut)

    shown = len(sections)
    while shown and _size(head(len(sections) - shown)) + sum(_size(t) for t in sections[:shown]) > limit:
        shown -= 1
    text = head(len(sections) - shown) + "".join(f"\n{t}" for t in sections[:shown])
    return text if _size(text) <= limit else _cut_to(text, limit, "each run's report folder")


@dataclass(frozen=True)
class IndexRow:
    name: str
    link: str  # URL-quoted relative path
    verdict: str
    worst: str  # critical | warning | info | ok
    worst_label: str
    counts: str  # "2 critical, 1 warning"
    root_causes: str
    fix: str
    fix_items: tuple[str, ...]
    fix_optional: bool = False  # only info-level findings suggest the change: the run needs no fix


def index_rows(entries: Sequence[tuple[str, Diagnosis, Path]]) -> tuple[IndexRow, ...]:
    from analyzer.report.model import change, fix_heading, fix_line, recommendations

    rows = []
    for name, diagnosis, link in entries:
        changes = recommendations(diagnosis.findings)[0]
        worst = diagnosis.worst()
        counts = ", ".join(f"{n} {s.value}" for s in Severity
                           if (n := sum(f.severity is s for f in diagnosis.findings)))
        rows.append(IndexRow(
            # surrogateescape: a folder name that is not UTF-8 links to its own bytes (%FF), as it is on disk
            name=name, link=quote(Path(link).as_posix(), errors="surrogateescape"), verdict=verdict(diagnosis),
            worst=worst.value if worst else "ok",
            worst_label=SEVERITY_LABEL[worst.value] if worst else "OK", counts=counts or "none",
            root_causes=", ".join(dict.fromkeys(diagnosis.root_causes)), fix=fix_line(changes),
            fix_items=tuple(change(r) for r in changes), fix_optional=fix_heading(diagnosis.findings)[1] != "",
        ))
    # Worst first, then by name: the runs that need a look lead the page.
    order = {"critical": 0, "warning": 1, "info": 2, "ok": 3}
    return tuple(sorted(rows, key=lambda r: (order[r.worst], r.name)))


@dataclass(frozen=True)
class SkippedRun:
    """A folder of a sweep that was not diagnosed: it holds no training log, or its input is broken."""

    name: str
    reason: str


def index(entries: Sequence[tuple[str, Diagnosis, Path]], html: bool,
          skipped: Sequence[tuple[str, str]] = ()) -> str:
    from analyzer import __version__

    rows = index_rows(entries)
    skipped_rows = tuple(SkippedRun(name, reason) for name, reason in sorted(skipped))
    return render("index.html.j2" if html else "index.md.j2", rows=rows, version=__version__,
                  tally=_tally(rows, skipped_rows), skipped=skipped_rows)


def _tally(rows: Sequence[IndexRow], skipped: Sequence[SkippedRun]) -> tuple[tuple[str, int], ...]:
    """("critical", 1), ("info only", 2), ("skipped", 1): the runs by their worst finding, zero counts left out."""
    tally = {label: sum(r.worst == key for r in rows) for key, label in
             (("critical", "critical"), ("warning", "warning"), ("info", "info only"), ("ok", "clean"))}
    tally["skipped"] = len(skipped)
    return tuple((label, n) for label, n in tally.items() if n)
