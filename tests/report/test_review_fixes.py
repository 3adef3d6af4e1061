"""Regressions from a user's review of the reports: each test pins one defect that a real run's report showed."""

from __future__ import annotations

from dataclasses import replace

from analyzer.findings import Confidence, Diagnosis, Finding, Recommendation, RunSummary, Severity
from analyzer.report import terminal_summary
from analyzer.report.model import build_report, verdict
from analyzer.report.render import render, tidy_markdown


def summary(formats=("hf-trainer",), status=None):
    return RunSummary("/runs/r", "r", formats, 0, 999, 1000, ("loss",), {}, (), status)


def finding(name, severity, recs=(), message="m", first=0, last=10):
    return Finding("X001", name, severity, Confidence.HIGH, message, first, last, recommendations=tuple(recs))


def diagnosis(findings, formats=("hf-trainer",), status=None, roots=()):
    return Diagnosis(summary(formats, status), tuple(findings), tuple(roots))


def markdown(d: Diagnosis) -> str:
    return tidy_markdown(render("report.md.j2", r=build_report(d, figures=False)))


LR = Recommendation("lr", 3e-4, 1.5e-4, "halve it")


# --- reproduce-run is offered only where it can run ---------------------------------------------------------------

def test_a_run_not_written_by_the_reference_trainer_gets_no_reproduce_run_command():
    # bloom104b_overflow (a Megatron log) was told to `reproduce-run` it, which fails: not a reference-trainer run.
    d = diagnosis([finding("grad-explosion", Severity.WARNING, [LR])], formats=("text",))
    report = build_report(d, figures=False)
    assert report.patch.command == ""
    assert "reproduce-run /runs/r" not in markdown(d)
    assert "re-runs only runs written by postmortem's reference trainer" in markdown(d)


def test_a_reference_trainer_run_keeps_its_reproduce_run_command():
    d = diagnosis([finding("grad-explosion", Severity.WARNING, [LR])], formats=("postmortem-run",),
                  status="completed")
    assert build_report(d, figures=False).patch.command == "reproduce-run /runs/r --set lr=1.5e-4"


# --- a healthy run's suggestions are optional -----------------------------------------------------------------------

BATCH = Recommendation("batch_size", 2, 8, "less noise")


def test_info_only_suggestions_are_an_optional_change_not_a_recommended_fix():
    # hf_tinyllama_healthy: "No warning or critical finding", then "Recommended change: batch_size 2 -> 8".
    d = diagnosis([finding("small-effective-batch", Severity.INFO, [BATCH])])
    report = build_report(d, figures=False)
    assert report.fix_label == "Optional change" and "needs no fix" in report.fix_note
    text = markdown(d)
    assert "Recommended change" not in text
    assert "Optional change: `batch_size 2 -> 8`." in text
    assert "optional: batch_size 2 -> 8" in terminal_summary(d, color=False)
    assert "fix:" not in terminal_summary(d, color=False)


def test_a_warning_with_a_suggestion_keeps_it_recommended():
    d = diagnosis([finding("small-effective-batch", Severity.INFO, [BATCH]),
                   finding("grad-explosion", Severity.WARNING, [LR])])
    report = build_report(d, figures=False)
    assert (report.fix_label, report.fix_note) == ("Recommended change", "")
    assert "fix: batch_size 2 -> 8; lr 3e-4 -> 1.5e-4" in terminal_summary(d, color=False)


# --- current values ---------------------------------------------------------------------------------------------------

def test_an_unknown_current_value_reads_not_recorded_rather_than_a_dash():
    # bloom runs: "max_grad_norm - -> 1.0".
    d = diagnosis([finding("grad-explosion", Severity.WARNING, [Recommendation("max_grad_norm", None, 1.0, "clip")])])
    report = build_report(d, figures=False)
    assert report.recommendations[0].current == "not recorded"
    assert report.fix_items == ("max_grad_norm (not recorded) -> 1.0",)
    assert "| `max_grad_norm` | `not recorded` | **`1.0`** |" in markdown(d)
    assert "fix: max_grad_norm (not recorded) -> 1.0" in terminal_summary(d, color=False)


def test_a_whole_number_current_value_is_written_like_the_integer_suggestion():
    # hf_whisper_overfit: "max_steps 5000.0 -> 1000" (trainer_state.json stores max_steps as a float).
    d = diagnosis([finding("overfitting", Severity.WARNING, [Recommendation("max_steps", 5000.0, 1000, "stop")])])
    assert build_report(d, figures=False).fix_items == ("max_steps 5000 -> 1000",)


def test_a_float_suggestion_keeps_a_float_current_value():
    d = diagnosis([finding("x", Severity.WARNING, [Recommendation("temperature", 3.0, 2.0, "t")])])
    assert build_report(d, figures=False).fix_items == ("temperature 3.0 -> 2.0",)


# --- the verdict --------------------------------------------------------------------------------------------------------

def test_a_long_root_cause_clause_drops_its_long_aside_instead_of_stopping_mid_phrase():
    # factorized-embedding-stall: "... each with std ~0.152 in..." (the tensor list took the room).
    message = ("The input embedding is the sum of 3 tables (tok_emb.tables.0.weight, tok_emb.tables.1.weight, "
               "tok_emb.tables.2.weight) each with std ~0.152 in checkpoints/step_000000.pt (step 0): the sum has "
               "std 0.265")
    d = diagnosis([finding("init-variance", Severity.WARNING, message=message)], roots=("init-variance",))
    text = verdict(d)
    assert text.startswith("The run is degraded: the input embedding is the sum of 3 tables each with std ~0.152 "
                           "in checkpoints/step_000000.pt (step 0) (init-variance)")
    assert "..." not in text


def test_the_github_summary_of_a_foreign_run_has_no_command_block():
    from analyzer.report import github_summary

    d = diagnosis([finding("grad-explosion", Severity.WARNING, [LR])], formats=("text",))
    text = github_summary(d, artifact_hint="postmortem-report")
    assert "reproduce-run" not in text and "| `lr` | `3e-4` | **`1.5e-4`** |" in text


def test_a_reference_trainer_run_needs_its_status_too():
    # A folder in the canonical layout without run.json (status None) was not written by the trainer.
    d = diagnosis([finding("x", Severity.WARNING, [LR])], formats=("postmortem-run",))
    assert build_report(replace(d), figures=False).patch.command == ""


# --- findings.json keeps whole numbers exact ---------------------------------------------------------------------------

def test_findings_json_keeps_a_large_whole_number_exact():
    # bloom104b_overflow: the message said "from 1048576", findings.json said "scale_from": 1048580.0.
    from analyzer.findings import finding_to_dict

    f = Finding("N002", "loss-scale-collapse", Severity.WARNING, Confidence.HIGH, "m", 1, 2,
                metrics={"scale_from": 1048576.0, "samples": 7596256.0, "ratio": 1.23456789, "big": 1e300})
    assert finding_to_dict(f)["metrics"] == {"scale_from": 1048576.0, "samples": 7596256.0, "ratio": 1.23457,
                                             "big": 1e300}


# --- plots ---------------------------------------------------------------------------------------------------------------

def _drawn_loss(marks):
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from analyzer.report import plots

    steps = np.arange(1000)
    fig = Figure(figsize=plots.FIGSIZE)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    plots.draw_loss(ax, plots.PlotInput(series={"loss": (steps, 3 - steps / 1000)}, marks=marks))
    fig.canvas.draw()
    return fig, ax


def test_a_mark_at_the_last_step_keeps_its_label_inside_the_axes():
    # bloom104b_overflow's overview: "L001" at the last logged step was cut to "L00" at the figure's edge.
    fig, ax = _drawn_loss(((999, "L001"),))
    label = ax.texts[-1]
    renderer = fig.canvas.get_renderer()
    assert label.get_ha() == "right"
    assert label.get_window_extent(renderer).x1 <= ax.get_window_extent(renderer).x1


def test_a_mark_early_in_the_run_keeps_its_label_on_the_right():
    _, ax = _drawn_loss(((100, "G001"),))
    assert ax.texts[-1].get_ha() == "left"


def _ppl_finding(metric):
    return Finding("N003", "perplexity-misreport", Severity.INFO, Confidence.HIGH,
                   f"{metric} is capped at exp(5) = 148 at 5 of 6 points from step 0: lm_loss is 5.566 there", 0, 5)


def test_each_perplexity_finding_shows_the_plot_of_its_own_metric():
    # kd-temperature-blowup: the eval_ppl finding showed the ppl plot too (and the ppl finding the eval_ppl one).
    from analyzer.report.plots import plots_for

    metrics = {"ppl", "eval_ppl", "loss", "lm_loss", "eval_loss"}
    assert [p.name for p in plots_for("perplexity-misreport", metrics, _ppl_finding("eval_ppl").message)] == [
        "eval_ppl", "loss"]
    assert [p.name for p in plots_for("perplexity-misreport", metrics, _ppl_finding("ppl").message)] == [
        "ppl", "loss"]


def test_the_perplexity_plot_compares_with_exp_of_the_lm_loss_when_the_run_logs_one():
    # The finding says "the true perplexity is exp(lm_loss)"; the plot drew exp(loss), the KD-weighted total.
    import numpy as np
    from matplotlib.figure import Figure

    from analyzer.report import plots

    steps = np.arange(10)
    data = plots.PlotInput(series={"ppl": (steps, np.full(10, 148.0)), "loss": (steps, np.full(10, 9.0)),
                                   "lm_loss": (steps, np.full(10, 5.5))})
    ax = Figure().subplots()
    plots.draw_ppl(ax, data)
    implied = next(line for line in ax.get_lines() if line.get_label() == "exp(lm_loss)")
    assert np.allclose(implied.get_ydata(), np.exp(5.5))


# --- hostile strings --------------------------------------------------------------------------------------------------

RLO = "\u202e"  # right-to-left override: "exe.txt" shows as "txt.exe"
LINK = "[click](javascript:alert(1)) ![t](https://tracker.example/x.png)"


def _hostile_diagnosis():
    f = Finding("L001", "loss-spike", Severity.CRITICAL, Confidence.HIGH, f"spike in {RLO}evil {LINK}", 5, 6)
    return diagnosis([f], roots=("loss-spike",))


def test_bidi_controls_from_a_log_are_shown_not_obeyed_in_every_output():
    d = _hostile_diagnosis()
    report = build_report(d, figures=False)
    html = render("report.html.j2", r=report)
    md = markdown(d)
    term = terminal_summary(d, color=False)
    for text in (html, md, term):
        assert RLO not in text
        assert "{U+202E}evil" in text
    assert "שלום" in terminal_summary(diagnosis([finding("x", Severity.WARNING, message="שלום")]), color=False)


def test_markdown_never_turns_log_text_into_a_link_or_an_image():
    import re

    md = markdown(_hostile_diagnosis())
    assert "\\[click\\](javascript:alert(1)) !\\[t\\](https://tracker.example/x.png)" in md
    assert not re.search(r"(?<!\\)\[[^\]]*\]\((?:javascript|https://tracker)", md)


# --- the temperature table agrees with the message --------------------------------------------------------------------

def _kd_view(kd_term_median):
    f = Finding("D001", "distill-temperature-blowup", Severity.CRITICAL, Confidence.HIGH,
                "a raw KL of ~0.636 becomes ~5.58", 0, 249,
                metrics={"temperature": 3.0, "kd_raw_median": 0.6358, "kd_term_median": kd_term_median},
                recommendations=(Recommendation("temperature", 3.0, 2.0, "r"),))
    return build_report(diagnosis([f]), figures=False).findings[0].table


def test_the_temperature_table_explains_why_its_current_row_differs_from_the_logged_kd_term():
    # kd-temperature-blowup: the message says ~5.58 (logged, T annealed to 2.9), the table's T = 3.0 row 5.722.
    table = _kd_view(5.585)
    assert table.rows[0] == ("3.0", "9.0", "5.722")
    assert "The logged KD term's median is 5.585" in table.note


def test_the_temperature_table_adds_nothing_when_the_logged_term_matches():
    assert "logged KD term" not in _kd_view(0.6358 * 9).note


# --- run facts and evidence ---------------------------------------------------------------------------------------------

def test_the_facts_name_the_files_the_metrics_came_from_as_such():
    # kd-temperature-blowup read config.json, train.log and checkpoints too, yet "files read" listed metrics.jsonl.
    from tests.report.cases import seed002

    run, d = seed002()
    md = tidy_markdown(render("report.md.j2", r=build_report(d, run, figures=False)))
    assert "| metrics read from |" in md and "files read" not in md


def test_a_cited_line_cut_by_diagnose_is_marked_as_cut():
    # Long metrics.jsonl records ended mid-token ('"loss_scale": 65536.0, "p') with nothing to say so.
    from analyzer.diagnose import MAX_EVIDENCE_LINE
    from analyzer.findings import Evidence

    long, short = "x" * MAX_EVIDENCE_LINE, "step 5 loss 3.2"
    f = replace(finding("loss-spike", Severity.WARNING),
                evidence=(Evidence("metrics.jsonl", 2, long), Evidence("train.log", 3, short)))
    rows = build_report(diagnosis([f]), figures=False).findings[0].evidence
    assert [r.text for r in rows] == [long + " …", short]


def test_the_sweep_index_marks_a_healthy_runs_change_as_optional():
    # sample_runs --recursive: every *-fixed run's row read "grad_accum 1 -> 4" like a broken run's fix.
    from pathlib import Path

    from analyzer.report import index_page, index_page_html

    healthy = diagnosis([finding("small-effective-batch", Severity.INFO, [BATCH])])
    broken = diagnosis([finding("grad-explosion", Severity.WARNING, [LR])])
    entries = [("ok", healthy, Path("ok/report.md")), ("bad", broken, Path("bad/report.md"))]
    md = index_page(entries)
    assert "| optional: `batch_size 2 -> 8` |" in md and "| `lr 3e-4 -> 1.5e-4` |" in md
    assert '<span class="note">optional:</span> <code>batch_size 2 -&gt; 8</code>' in index_page_html(entries)


def test_the_github_summary_of_a_foreign_run_has_no_double_blank_line():
    from analyzer.report import github_summary

    d = diagnosis([finding("grad-explosion", Severity.WARNING, [LR])], formats=("text",))
    assert "\n\n\n" not in github_summary(d, artifact_hint="postmortem-report")


def test_a_run_name_cannot_close_the_index_link_and_open_its_own():
    import re
    from pathlib import Path

    from analyzer.report import index_page

    d = diagnosis([finding("grad-explosion", Severity.WARNING, [LR])])
    name = "x](javascript:alert(1)) [y"
    md = index_page([(name, d, Path(name) / "report.md")])
    assert "[x\\](javascript:alert(1)) \\[y](" in md
    assert not re.search(r"\]\(javascript", md.replace("\\]", ""))


def test_a_log_kept_as_excerpts_is_not_drawn_as_a_line_through_unlogged_steps():
    # bloom104b_overflow: a few steps around 6502, 8600, 12000, 17060, drawn as straight lines across thousands.
    import numpy as np

    from analyzer.report.plots import break_at_gaps

    steps = np.array([6502, 6503, 6504, 8600, 8601, 12000, 12001])
    xs, ys = break_at_gaps(steps, np.arange(7.0))
    assert np.isnan(xs).sum() == 2 and np.isnan(ys[3]) and np.isnan(ys[6])
    regular = np.arange(0, 1000, 10)
    assert len(break_at_gaps(regular, np.ones(100))[0]) == 100  # a regular log, eval points included, is one line


def test_points_between_gaps_are_marked():
    import numpy as np
    from matplotlib.figure import Figure

    from analyzer.report import plots

    steps = np.array([0, 1, 2, 5000, 9000, 9001])
    ax = Figure().subplots()
    plots.draw_loss(ax, plots.PlotInput(series={"loss": (steps, np.linspace(3, 2, 6))}))
    assert ax.get_lines()[0].get_marker() == "."


def test_a_short_lead_clause_keeps_the_clause_that_says_how_bad_it_is():
    # hf_lrqa_chance_plateau: "The run is broken: eval_loss stopped improving" lost "at chance level ln(4)".
    message = ("eval_loss stopped improving: it stayed near 1.386 (no drop of more than 3.0%) from step 300 to 2300 "
               "(66% of the logged steps), at chance level ln(4) = 1.386: the model predicts the uniform distribution "
               "and learns nothing while the lr stayed at 30%-100% of its peak 4.94e-5, and the run ends on it.")
    d = diagnosis([finding("loss-plateau", Severity.CRITICAL, message=message, first=300)], roots=("loss-plateau",))
    assert verdict(d) == ("The run is broken: eval_loss stopped improving; it stayed near 1.386 (no drop of more than "
                          "3.0%) from step 300 to 2300 (66% of the logged steps), at chance level ln(4) = 1.386 "
                          "(loss-plateau).")


def test_a_short_lead_whose_next_clause_is_too_long_keeps_its_numbers_up_to_a_phrase_boundary():
    # pl_slm_plateau: the verdict was "loss stopped improving (loss-plateau, from step 49)": no level, no span.
    message = ("loss stopped improving: it stayed near 7.618 (no drop of more than 3.0%) from step 49 to 10999 (100% "
               "of the logged steps) (70% of chance level ln(50258) = 10.825) while the lr stayed at 100% of its peak "
               "2.36e-4, and the run ends on it.")
    d = diagnosis([finding("loss-plateau", Severity.WARNING, message=message, first=49)], roots=("loss-plateau",))
    assert verdict(d) == ("The run is degraded: loss stopped improving; it stayed near 7.618 (no drop of more than "
                          "3.0%) from step 49 to 10999 (100% of the logged steps) (loss-plateau).")
