"""The chain: causes link to consequences that do not precede them; root causes come first."""

from __future__ import annotations

from dataclasses import replace

from analyzer.chain import link
from analyzer.findings import Confidence, Finding, Recommendation, Severity


def _f(name: str, step: int, severity: Severity = Severity.WARNING) -> Finding:
    return Finding("X000", name, severity, Confidence.HIGH, name, step, step)


def _batch(recommends: bool) -> Finding:
    recs = (Recommendation("batch_size", 8, 32, "x4"),) if recommends else ()
    metrics = {"effective_batch": 8, **({"suggested_effective_batch": 32} if recommends else {})}
    return replace(_f("small-effective-batch", 0, Severity.INFO), recommendations=recs, metrics=metrics)


def test_seed_002_chain_leads_with_temperature():
    findings = (
        _f("loss-oscillation", 200), _f("nonfinite-onset", 436, Severity.CRITICAL),
        _f("grad-explosion", 100), _f("distill-temperature-blowup", 0, Severity.CRITICAL),
    )
    ordered, roots = link(findings)
    assert roots == ("distill-temperature-blowup",)
    assert ordered[0].name == "distill-temperature-blowup"
    by = {f.name: f for f in ordered}
    assert by["nonfinite-onset"].caused_by == ("distill-temperature-blowup", "grad-explosion")
    assert "distill-temperature-blowup" in by["loss-oscillation"].caused_by


def test_a_later_event_cannot_cause_an_earlier_one():
    ordered, roots = link((_f("grad-explosion", 900), _f("nonfinite-onset", 100, Severity.CRITICAL)))
    assert set(roots) == {"grad-explosion", "nonfinite-onset"}
    assert all(not f.caused_by for f in ordered)


def test_info_findings_are_root_causes_only_when_they_explain_something():
    _, roots = link((_batch(recommends=True), _f("loss-spike", 50)))
    assert roots == ("small-effective-batch",)
    _, roots = link((_f("perplexity-misreport", 0, Severity.INFO), _f("loss-plateau", 50)))
    assert roots == ("loss-plateau",)


def test_a_detector_reporting_twice_is_one_root_cause():
    _, roots = link((_f("loss-plateau", 300), _f("loss-plateau", 350)))
    assert roots == ("loss-plateau",)


def test_a_consequence_one_step_before_its_cause_is_not_linked():
    # bloom104b_overflow: the throughput fell at 17061, the loss spiked at 17062; 2% of the run was 341 steps of slack
    ordered, _ = link((_f("loss-spike", 17062, Severity.CRITICAL), _f("throughput-drop", 17061, Severity.INFO)))
    assert all(not f.caused_by for f in ordered)


def test_events_at_the_same_logged_step_may_be_linked():
    ordered, _ = link((_f("grad-explosion", 500), _f("loss-spike", 500)))
    assert {f.name: f for f in ordered}["loss-spike"].caused_by == ("grad-explosion",)


def _blowup_and_cap(cap_loss: float, fresh_loss: float) -> dict[str, Finding]:
    blowup = replace(_f("distill-temperature-blowup", 0, Severity.CRITICAL), metrics={"lm_reference": fresh_loss})
    cap = replace(_f("perplexity-misreport", 0, Severity.INFO), metrics={"cap_loss": cap_loss})
    ordered, _ = link((blowup, cap))
    return {f.name: f for f in ordered}


def test_a_perplexity_cap_under_a_fresh_models_loss_is_not_caused_by_the_temperature():
    # kd-temperature-blowup-fixed: cap exp(5) under ln(256) = 5.55; any untrained model hits it, blowup or not
    assert _blowup_and_cap(5.0, 5.545)["perplexity-misreport"].caused_by == ()


def test_a_perplexity_cap_only_an_inflated_loss_reaches_is_caused_by_the_temperature():
    # seed 002: cap exp(20), a fresh model's loss ~10; the T^2 term lifted the loss to 28.4
    assert _blowup_and_cap(20.0, 10.0)["perplexity-misreport"].caused_by == ("distill-temperature-blowup",)


def test_a_perplexity_misreport_without_a_cap_is_not_caused_by_the_temperature():
    ordered, _ = link((_f("distill-temperature-blowup", 0, Severity.CRITICAL),
                       _f("perplexity-misreport", 0, Severity.INFO)))
    assert {f.name: f for f in ordered}["perplexity-misreport"].caused_by == ()


def test_a_batch_with_no_evidence_against_it_causes_nothing():
    # small-effective-batch suggests no larger batch when the loss is quiet and never spikes: it explains nothing
    ordered, roots = link((_batch(recommends=False), _f("loss-oscillation", 50)))
    assert roots == ("loss-oscillation",) and all(not f.caused_by for f in ordered)


def test_a_noisy_batch_still_explains_a_spike():
    # seed 003: batch 8, the spike at step 150 and the batch both lead the report
    ordered, roots = link((_batch(recommends=True), _f("loss-spike", 150), _f("grad-explosion", 150)))
    assert set(roots) == {"small-effective-batch", "grad-explosion"}
    assert {f.name: f for f in ordered}["loss-spike"].caused_by == ("grad-explosion", "small-effective-batch")


def test_an_lr_judged_too_high_is_its_own_root_cause_beside_a_small_batch():
    # hf_lr_too_high: lr 1.0 at batch 8; the verdict must not open with "batch_size 8 -> 32"
    ordered, roots = link((_batch(recommends=True), _f("lr-too-high", 0)))
    assert roots == ("lr-too-high",) and all(not f.caused_by for f in ordered)


def test_a_critical_cause_leaves_no_room_for_an_info_one():
    # lightning_nan: the loss jumped to 4e27 inside a divergence that began at step 4; the batch is not the story
    findings = (_batch(recommends=True), _f("loss-divergence", 4, Severity.CRITICAL),
                _f("loss-spike", 47, Severity.CRITICAL))
    ordered, roots = link(findings)
    assert roots == ("loss-divergence",)
    assert {f.name: f for f in ordered}["loss-spike"].caused_by == ("loss-divergence",)


def test_a_spike_that_starts_a_divergence_causes_it():
    ordered, roots = link((_f("loss-divergence", 60, Severity.CRITICAL), _f("loss-spike", 50, Severity.CRITICAL)))
    assert roots == ("loss-spike",)
    assert {f.name: f for f in ordered}["loss-divergence"].caused_by == ("loss-spike",)


def test_no_info_root_cause_ever_leads_a_more_severe_one():
    # general form of the hf_lr_too_high / lightning_nan fix: whatever findings meet, the roots come most severe
    # first, an info root explains a warning or critical finding, and no info cause stands beside a critical one
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from analyzer.chain import CAUSES

    names = sorted({n for pair in CAUSES for n in pair})
    finding = st.builds(lambda name, step, sev: _f(name, step, sev), st.sampled_from(names),
                        st.integers(0, 300), st.sampled_from(list(Severity)))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(finding, min_size=1, max_size=8, unique_by=lambda f: f.name))
    def check(findings):
        ordered, roots = link(tuple(findings))
        by = {f.name: f for f in ordered}
        ranks = [by[r].severity.rank for r in roots]
        assert ranks == sorted(ranks, reverse=True)
        assert [f.name for f in ordered[:len(roots)]] == list(roots)
        for r in roots:
            if by[r].severity is Severity.INFO:
                assert any(r in f.caused_by for f in ordered if f.severity is not Severity.INFO)
        for f in ordered:
            causes = [by[c].severity for c in f.caused_by]
            if Severity.CRITICAL in causes:
                assert Severity.INFO not in causes

    check()
