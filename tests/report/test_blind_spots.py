"""Blind spots: short on a terminal, whole in a log file, scannable by their lead clause in the reports."""

from __future__ import annotations

from analyzer.findings import BlindSpotOut, Diagnosis, RunSummary
from analyzer.report import html, markdown
from analyzer.report.model import build_report
from analyzer.run import BlindSpot
from tests.conftest import make_run

NAN_FILTER = ("HF Trainer filters NaN/Inf losses out of log_history by default (logging_nan_inf_filter): a non-finite "
              "step's loss is replaced by the mean of its logging window, so NaN shows up as a repeat of earlier "
              "losses, or as 0.0 where the whole window was NaN")
NO_ARGS = ("trainer_state.json holds the per-device batch size only: gradient accumulation, clipping and world size "
           "were not saved with this run. Save them as JSON beside the run, e.g. "
           "`open('training_args.json', 'w').write(trainer.args.to_json_string())`")
NO_GRAD = "the run logs no gradient norm"  # no lead clause: shown whole


def hf_run():
    return make_run({"loss": [2.0, 1.9, 1.8]}, blind_spots=[BlindSpot(NAN_FILTER, ("nonfinite-onset",)),
                                                            BlindSpot(NO_ARGS, ()), BlindSpot(NO_GRAD, ())])


def test_on_a_terminal_each_blind_spot_is_its_lead_clause_within_the_width():
    # Four HF Trainer blind spots wrapped whole took 17 lines at 80 columns, above the findings.
    from analyzer.cli import run_overview

    lines = [line for line in run_overview(hf_run(), 80).splitlines()
             if line.startswith("  blind spot:") or line.startswith("      ")]
    assert max(len(line) for line in lines) <= 80
    text = " ".join(line.strip() for line in lines)
    assert "blind spot: HF Trainer filters NaN/Inf losses out of log_history by default (logging_nan_inf_filter)..." \
        in text
    assert "blind spot: trainer_state.json holds the per-device batch size only..." in text
    assert "blind spot: the run logs no gradient norm" in text and "mean of its logging window" not in text
    assert len([line for line in lines if line.startswith("  blind spot:")]) == 3 and len(lines) <= 5


def test_in_a_log_each_blind_spot_stays_whole_on_one_line():
    from analyzer.cli import run_overview

    overview = run_overview(hf_run()).splitlines()
    assert f"  blind spot: {NAN_FILTER}" in overview and f"  blind spot: {NO_ARGS}" in overview


def diagnosis_with_blind_spots() -> Diagnosis:
    summary = RunSummary("/runs/r", "r", ("hf-trainer",), 0, 2, 3, ("loss",), {}, ())
    return Diagnosis(summary, (), (), blind_spots=(BlindSpotOut(NAN_FILTER, ("nonfinite-onset",)),
                                                   BlindSpotOut(NO_GRAD, ())))


def test_the_markdown_leads_each_blind_spot_with_its_clause_in_bold():
    text = markdown(build_report(diagnosis_with_blind_spots(), figures=False))
    assert ("- **HF Trainer filters NaN/Inf losses out of log_history by default (logging_nan_inf_filter)**: a "
            "non-finite step's loss is replaced") in text
    assert text.count("(weakens: nonfinite-onset)") == 1
    assert "- **the run logs no gradient norm**\n" in text


def test_the_html_leads_each_blind_spot_with_its_clause_in_bold():
    text = html(build_report(diagnosis_with_blind_spots(), figures=False))
    assert ("<li><strong>HF Trainer filters NaN/Inf losses out of log_history by default (logging_nan_inf_filter)"
            "</strong>: a non-finite step&#39;s loss") in text
