"""The report model: verdict, chains, recommendations and patch, last good checkpoint, detector tables, numbers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from analyzer.findings import Confidence, Diagnosis, Finding, Recommendation, RunSummary, Severity
from analyzer.report import format as fmt
from analyzer.report.model import build_report, last_good_checkpoint, recommendations, verdict
from tests.conftest import make_run
from tests.report.cases import diagnose_inline, healthy, seed002, seed002_run


def finding(name, severity=Severity.CRITICAL, first=None, last=None, recs=(), code="X001", message="m"):
    return Finding(code, name, severity, Confidence.HIGH, message, first, last, recommendations=tuple(recs))


def summary(checkpoints=(), first=0, last=999, n_points=1000):
    return RunSummary("/r", "r", ("test",), first, last, n_points, ("loss",), {}, tuple(checkpoints))


def diagnosis(findings, checkpoints=(), roots=()):
    return Diagnosis(summary(checkpoints), tuple(findings), tuple(roots))


# --- verdict ----------------------------------------------------------------------------------------------------

def test_verdict_names_the_root_cause_and_its_consequences_in_step_order():
    _, d = seed002()
    text = verdict(d)
    assert text.startswith("The run is broken: KD loss is 9.0x its raw KL")
    assert "(distill-temperature-blowup, from step 0)" in text
    assert text.index("loss-oscillation (step 100)") < text.index("grad-explosion (step 120)") < text.index(
        "nonfinite-onset (step 436)")


def test_verdict_of_a_clean_run_says_so_and_counts_detectors_that_could_not_run():
    _, d = healthy()
    assert verdict(d) == "No problem found in steps 0-2990 (3 detectors could not run)."


def test_verdict_of_a_run_without_metrics_says_there_was_nothing_to_judge():
    assert verdict(Diagnosis(summary(first=None, last=None, n_points=0), (), ())).startswith("Nothing to judge")


def test_verdict_with_only_info_findings_is_not_alarming():
    text = verdict(diagnosis([finding("loss-plateau", Severity.INFO, 5, 9)]))
    assert text.startswith("No warning or critical finding") and "loss-plateau" in text


def test_verdict_with_several_roots_names_each_with_its_first_step():
    d = diagnosis([finding("lr-too-high", first=0), finding("small-effective-batch", Severity.WARNING, first=0)],
                  roots=("lr-too-high", "small-effective-batch"))
    assert "by 2 root causes: (1) m (lr-too-high, from step 0); (2) m (small-effective-batch, from step 0)." in verdict(d)


# --- chains -----------------------------------------------------------------------------------------------------

def test_chain_hangs_each_consequence_under_its_deepest_cause():
    run, d = seed002()
    (root,) = build_report(d, run, figures=False).root_causes
    depth = {s.name: s.depth for s in root.chain}
    assert root.chain[0].name == "distill-temperature-blowup"
    assert depth == {"distill-temperature-blowup": 0, "loss-oscillation": 1, "grad-explosion": 1,
                     "nonfinite-onset": 2, "perplexity-misreport": 1}
    assert root.arrow == ("distill-temperature-blowup (step 0) -> grad-explosion (step 120) -> "
                          "nonfinite-onset (step 436)")


def test_a_detector_reporting_twice_appears_once_in_chains_and_verdict():
    twice = [finding("grad-explosion", first=10), finding("grad-explosion", first=50)]
    d = diagnosis(twice, roots=("grad-explosion", "grad-explosion"))
    report = build_report(d, figures=False)
    assert len(report.root_causes) == 1
    assert verdict(d).count("grad-explosion") == 1


# --- recommendations and the patch ---------------------------------------------------------------------------------

def test_first_finding_recommending_an_hparam_wins_and_a_different_suggestion_is_noted():
    rows, values = recommendations([
        finding("lr-too-high", recs=[Recommendation("lr", 1e-3, 2e-4, "halve twice")]),
        finding("loss-oscillation", recs=[Recommendation("lr", 1e-3, 5e-4, "halve")]),
        finding("nonfinite-onset", recs=[Recommendation("lr", 1e-3, 2e-4, "same")]),
    ])
    (row,) = rows
    assert (row.hparam, row.current, row.suggested, row.source) == ("lr", "1e-3", "2e-4", "lr-too-high")
    assert row.also == "loss-oscillation suggests 5e-4"
    assert values == {"lr": 0.0002}


def test_patch_is_json_and_reproduce_run_overrides():
    d = diagnosis([finding("x", recs=[Recommendation("lr", 1e-4, 2e-4, "r"),
                                      Recommendation("precision", "fp16", "bf16", "r"),
                                      Recommendation("betas", [0.9, 0.999], [0.9, 0.95], "r")])])
    # A run the reference trainer wrote (its format, and the status from its run.json): reproduce-run can re-run it.
    d = replace(d, run=replace(d.run, formats=("postmortem-run",), status="completed"))
    patch = build_report(d, figures=False).patch
    assert json.loads(patch.json) == {"lr": 0.0002, "precision": "bf16", "betas": [0.9, 0.95]}
    assert patch.overrides == "--set lr=2e-4 --set precision=bf16 --set betas='[0.9,0.95]'"
    assert patch.command == "reproduce-run /r " + patch.overrides


def test_no_recommendation_means_no_patch():
    assert build_report(diagnosis([finding("x")]), figures=False).patch is None


# --- last good checkpoint ------------------------------------------------------------------------------------------

def ckpt(step, nonfinite=0, **extra):
    return {"path": f"ckpt-{step}", "step": step, "format": "torch", "nonfinite": nonfinite, **extra}


def test_last_good_checkpoint_is_the_newest_before_the_first_critical_finding():
    d = diagnosis([finding("loss-spike", first=250)], [ckpt(100), ckpt(200), ckpt(300)])
    best, why = last_good_checkpoint(d)
    assert best["step"] == 200 and "before step 250, where loss-spike began" in why


def test_a_critical_setting_from_the_first_step_does_not_rule_out_every_checkpoint():
    d = diagnosis([finding("distill-temperature-blowup", first=0), finding("nonfinite-onset", first=436)],
                  [ckpt(200), ckpt(400), ckpt(600, nonfinite=12)])
    assert last_good_checkpoint(d)[0]["step"] == 400


def test_when_no_checkpoint_predates_the_damage_the_last_finite_one_before_nan_is_named():
    d = diagnosis([finding("grad-explosion", first=120), finding("nonfinite-onset", first=436)],
                  [ckpt(200), ckpt(400), ckpt(600, nonfinite=12)])
    best, why = last_good_checkpoint(d)
    assert best["step"] == 400 and "No checkpoint predates step 120" in why and "non-finite at step 436" in why


def test_non_finite_and_unreadable_checkpoints_are_never_good():
    d = diagnosis([finding("loss-spike", first=900)],
                  [ckpt(100), ckpt(200, nonfinite=3), {"path": "c", "step": 300, "format": "torch", "error": "LFS"}])
    assert last_good_checkpoint(d)[0]["step"] == 100


def test_no_good_checkpoint_is_said_with_the_reason():
    best, why = last_good_checkpoint(diagnosis([finding("loss-spike", first=50)], [ckpt(100)]))
    assert best is None and "before step 50" in why


def test_a_checkpoint_whose_weights_were_not_inspected_says_so():
    best, why = last_good_checkpoint(diagnosis([], [{"path": "c", "step": 10, "format": "hf"}]))
    assert best["step"] == 10 and "not inspected" in why


# --- detector tables -----------------------------------------------------------------------------------------------

def test_temperature_table_shows_t_squared_and_kd_loss_for_current_and_suggested():
    run, d = seed002()
    view = next(f for f in build_report(d, run, figures=False).findings if f.name == "distill-temperature-blowup")
    assert view.table.rows == (("3.0", "9.0", "37.8"), ("2.0", "4.0", "16.8"), ("1.5", "2.25", "9.45"))


def test_nonfinite_table_lists_logged_nan_and_nan_hidden_by_a_clamp():
    run, d = seed002()
    view = next(f for f in build_report(d, run, figures=False).findings if f.name == "nonfinite-onset")
    assert ("grad_norm", "436", "1", "logged as NaN/Inf") in view.table.rows
    assert any("clamped" in row[3] and "train.log:1310" in row[3] for row in view.table.rows)
    assert "step_000400.pt" in view.table.note


def test_plots_a_finding_cannot_have_are_named_with_the_missing_metric():
    run = seed002_run()
    d = diagnose_inline(run, (finding("throughput-drop", Severity.WARNING, 10, 20),))
    (view,) = build_report(d, run, figures=False).findings
    assert view.missing_plots[0] == ("throughput: the run logs no training speed (a rate, a time per step or "
                                     "timestamps)")


def test_the_throughput_plot_draws_the_speed_the_detector_judged_even_from_the_clock():
    from analyzer.report import plots

    steps = np.arange(0, 400, 10)
    clock = 1.7e9 + np.cumsum(np.where(steps < 200, 1.0, 2.0))  # 10 steps per second, then 5
    run = make_run({"loss": (steps, np.linspace(3, 2, len(steps))), "wall_time": (steps, clock)})
    d = diagnose_inline(run, (finding("throughput-drop", Severity.WARNING, 200, 390),))
    report = build_report(d, run)
    (view,) = report.findings
    assert view.missing_plots == ()
    assert "steps/s from the clock" in view.figures[0].svg
    series = _series_of(run)
    speed_steps, speed = series.get(plots.SPEED)
    assert speed[speed_steps < 200].max() == speed[speed_steps < 200].min() == 10.0
    assert speed[speed_steps > 210].max() == 5.0


def _series_of(run):
    from analyzer.report.model import _SeriesCache

    return _SeriesCache(run)


def test_evidence_cited_twice_is_shown_once():
    from analyzer.findings import Evidence

    f = Finding("X", "x", Severity.WARNING, Confidence.HIGH, "m", 1, 2,
                evidence=(Evidence("a.log", 3, "line"), Evidence("a.log", 3, "line")))
    (view,) = build_report(diagnosis([f]), figures=False).findings
    assert len(view.evidence) == 1


# --- numbers ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (3.0, "3.0"), (0.0002, "2e-4"), (0.000475, "4.75e-4"), (0.0015, "0.0015"), (1e-5, "1e-5"),
    (16040.17, "1.604e4"), (485165195.41, "4.852e8"), (1.5e-10, "1.5e-10"), (2.5e100, "2.5e100"), (65536.0, "65536.0"),
    (float("nan"), "NaN"), (float("-inf"), "-Inf"), (True, "true"), (7, "7"), (None, "-"),
    ([0.9, 0.999], "[0.9, 0.999]"),
])
def test_numbers_read_as_a_person_writes_them(value, text):
    assert fmt.number(value) == text


def test_markdown_code_span_holds_backticks_and_pipes():
    assert fmt.md_code("a`b") == "``a`b``"
    assert fmt.md_code("a|b", in_table=True) == "`a\\|b`"
    assert fmt.md_fence("```\nx") == "````\n```\nx\n````"
