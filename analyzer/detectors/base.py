"""What a detector is: a code, a name, its documentation, its parameters and a pure check function."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from analyzer.findings import Confidence, Evidence, Finding, Recommendation, Severity, Skipped
from analyzer.run import Run

DOC_SECTIONS = ("What it detects", "Why it matters", "How it decides", "What it recommends", "Parameters")

CheckResult = Sequence[Finding] | Skipped
Check = Callable[[Run, Mapping[str, Any]], CheckResult]


@dataclass(frozen=True)
class Detector:
    """One rule. `check(run, params)` returns its findings (possibly none) or `Skipped` when the run lacks data.

    `requires` lists metrics of which at least one must be logged (empty: no requirement); the runner skips the
    detector with a reason naming them, so `check` never sees a run it cannot judge for that reason.
    """

    code: str
    name: str
    severity: Severity  # the usual severity of its findings; a finding may say otherwise
    summary: str  # one line for `postmortem detectors`
    doc: str  # the module docstring: the user documentation, in DOC_SECTIONS
    params: Mapping[str, Any]  # defaults, overridable with --set NAME.PARAM=V
    check: Check
    requires: tuple[str, ...] = ()

    def finding(self, message: str, first_step: int | None, last_step: int | None, *,
                severity: Severity | None = None, confidence: Confidence = Confidence.HIGH,
                metrics: Mapping[str, Any] | None = None, recommendations: Sequence[Recommendation] = (),
                evidence: Sequence[Evidence] = ()) -> Finding:
        """A finding of this detector; saves each check from repeating its code and name."""
        return Finding(
            code=self.code, name=self.name, severity=severity or self.severity, confidence=confidence,
            message=message, first_step=first_step, last_step=last_step, metrics=dict(metrics or {}),
            recommendations=tuple(recommendations), evidence=tuple(evidence),
        )


def doc_sections(doc: str) -> dict[str, str]:
    """Split a detector docstring into its sections ("What it detects:" headings on their own line)."""
    sections: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        heading = re.fullmatch(r"\s*(" + "|".join(DOC_SECTIONS) + r")\s*:?\s*", line)
        if heading:
            current = heading.group(1)
            sections[current] = ""
        elif current:
            sections[current] += line.strip() + "\n"
    return {k: v.strip() for k, v in sections.items()}


def evidence_at(run: Run, metric: str, steps: Sequence[int], limit: int = 5) -> tuple[Evidence, ...]:
    """Evidence pointing at the points of `metric` at `steps` (at most `limit`); text is filled in by diagnose."""
    out = []
    for step in list(steps)[:limit]:
        where = run.point(metric, int(step))
        if where is not None:
            out.append(Evidence(file=where[0], line=where[1]))
    return tuple(out)
