"""JUnit XML: one test case per detector, a failure per finding at or above --fail-on, so CI systems
(GitLab, Jenkins, GitHub test reporters) show a diagnosis like a test run."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from analyzer.findings import Diagnosis, Finding, Severity
from analyzer.report import format as fmt

SUITE = "postmortem"
# XML 1.0 forbids most control characters; a log line may hold any of them.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: object) -> str:
    return _INVALID_XML.sub("\ufffd", str(value))


def detector_names(diagnosis: Diagnosis) -> list[str]:
    """The detectors that ran or were skipped: the diagnosis's own list where it has one, else the whole table;
    plus any name a finding, skip or error mentions (a detector outside the table still gets its test case)."""
    names = list(diagnosis.detectors)
    if not names:
        from analyzer.detectors import DETECTORS

        names = [d.name for d in DETECTORS.values()]
    for name in [*(f.name for f in diagnosis.findings), *(s.name for s in diagnosis.skipped),
                 *(e.name for e in diagnosis.errors)]:
        if name not in names:
            names.append(name)
    return names


def junit_xml(diagnosis: Diagnosis, fail_on: str) -> str:
    threshold = None if fail_on == "never" else Severity(fail_on)
    from analyzer.detectors import lookup

    run = diagnosis.run
    classname = f"{SUITE}.{_text(run.name)}"
    cases = []
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    skipped = {s.name: s.reason for s in diagnosis.skipped}
    errors = {e.name: e.error for e in diagnosis.errors}
    for name in detector_names(diagnosis):
        det = lookup(name)
        findings = [f for f in diagnosis.findings if f.name == name]
        code = det.code if det is not None else (findings[0].code if findings else "")
        case = ET.Element("testcase", {"classname": classname, "name": _text(f"{code} {name}".strip()),
                                       "time": "0"})
        counts["tests"] += 1
        if name in errors:
            ET.SubElement(case, "error", {"type": "DetectorError", "message": _text(errors[name])}).text = _text(
                errors[name])
            counts["errors"] += 1
        elif name in skipped and not findings:
            ET.SubElement(case, "skipped", {"message": _text(skipped[name])})
            counts["skipped"] += 1
        failing = [f for f in findings if threshold is not None and f.severity.rank >= threshold.rank]
        for f in failing:
            failure = ET.SubElement(case, "failure", {"type": f.severity.value, "message": _text(f.message)})
            failure.text = _text(_details(f))
        if failing:
            counts["failures"] += 1
        quiet = [f for f in findings if f not in failing]
        if quiet:
            ET.SubElement(case, "system-out").text = _text(
                "\n\n".join(f"[{f.severity.value}, below --fail-on {fail_on}] {_details(f)}" for f in quiet))
        cases.append(case)
    suite = ET.Element("testsuite", {"name": f"{SUITE}: {_text(run.name)}", **{k: str(v) for k, v in counts.items()},
                                     "time": "0"})
    props = ET.SubElement(suite, "properties")
    from analyzer.report.model import verdict

    for key, value in (("run.path", run.path), ("run.status", run.status or ""), ("fail_on", fail_on),
                       ("verdict", verdict(diagnosis))):
        ET.SubElement(props, "property", {"name": key, "value": _text(value)})
    suite.extend(cases)
    root = ET.Element("testsuites", {"name": SUITE, **{k: str(v) for k, v in counts.items()}})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _details(f: Finding) -> str:
    lines = [f"{f.code} {f.name} ({f.severity.value}, confidence {f.confidence.value}), "
             f"steps {fmt.steps(f.first_step, f.last_step)}", f.message]
    if f.caused_by:
        lines.append("caused by: " + ", ".join(f.caused_by))
    for r in f.recommendations:
        current, suggested = fmt.number_pair(r.current, r.suggested)
        lines.append(f"recommend: {r.hparam} {current} -> {suggested} ({r.rationale})")
    for e in f.evidence:
        lines.append(f"{e.file}:{e.line if e.line is not None else '-'}: {e.text}")
    return "\n".join(lines)
