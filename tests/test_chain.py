"""The chain: causes link to consequences that do not precede them; root causes come first."""

from __future__ import annotations

from analyzer.chain import link
from analyzer.findings import Confidence, Finding, Severity


def _f(name: str, step: int, severity: Severity = Severity.WARNING) -> Finding:
    return Finding("X000", name, severity, Confidence.HIGH, name, step, step)


def test_seed_002_chain_leads_with_temperature():
    findings = (
        _f("loss-oscillation", 200), _f("nonfinite-onset", 436, Severity.CRITICAL),
        _f("grad-explosion", 100), _f("distill-temperature-blowup", 0, Severity.CRITICAL),
    )
    ordered, roots = link(findings, run_length=600)
    assert roots == ("distill-temperature-blowup",)
    assert ordered[0].name == "distill-temperature-blowup"
    by = {f.name: f for f in ordered}
    assert by["nonfinite-onset"].caused_by == ("distill-temperature-blowup", "grad-explosion")
    assert "distill-temperature-blowup" in by["loss-oscillation"].caused_by


def test_a_later_event_cannot_cause_an_earlier_one():
    ordered, roots = link((_f("grad-explosion", 900), _f("nonfinite-onset", 100, Severity.CRITICAL)), 1000)
    assert set(roots) == {"grad-explosion", "nonfinite-onset"}
    assert all(not f.caused_by for f in ordered)


def test_info_findings_are_root_causes_only_when_they_explain_something():
    _, roots = link((_f("small-effective-batch", 0, Severity.INFO), _f("loss-spike", 50)), 100)
    assert roots == ("small-effective-batch",)
    _, roots = link((_f("perplexity-misreport", 0, Severity.INFO), _f("loss-plateau", 50)), 100)
    assert roots == ("loss-plateau",)


def test_a_detector_reporting_twice_is_one_root_cause():
    _, roots = link((_f("loss-plateau", 300), _f("loss-plateau", 350)), 1000)
    assert roots == ("loss-plateau",)
