"""What the first screen says after a run went wrong: the verdict's numbers, a narrow terminal, the plots' evidence."""

from __future__ import annotations

from analyzer.findings import Confidence, Diagnosis, Finding, RunSummary, Severity
from analyzer.report.model import verdict


def summary():
    return RunSummary("/runs/r", "r", ("postmortem-run",), 0, 299, 300, ("loss", "grad_norm"), {}, ())


def finding(name, severity, message, first, last=None, caused_by=()):
    return Finding("X001", name, severity, Confidence.HIGH, message, first, last, caused_by=tuple(caused_by))


# gpt2-spike-plateau's two root causes, as the detectors word them.
GRAD = ("The gradient norm rose to 10.4 at step 151, 14x its running median (0.718 over the 50 logged points before "
        "step 150), from step 150: the loss rose 2.65x with it.")
BATCH = ("the effective batch is 8 x 1 = 8 sequences (2048 tokens) per optimizer step, under 65536 tokens; the loss "
         "moves 1.8% from point to point but spiked at step 150.")
SPIKE = "loss jumped from a level of 1.15 to 3.18 (2.76x) at step 150 and was back near its level at step 152"


def two_roots() -> Diagnosis:
    findings = (finding("grad-explosion", Severity.WARNING, GRAD, 150, 151),
                finding("small-effective-batch", Severity.INFO, BATCH, 0, 299),
                finding("loss-spike", Severity.WARNING, SPIKE, 150, 152, caused_by=("grad-explosion",)))
    return Diagnosis(summary(), findings, ("grad-explosion", "small-effective-batch"))


# --- the verdict ------------------------------------------------------------------------------------------------

def test_a_verdict_with_several_root_causes_says_what_each_did_with_its_numbers():
    # It read "degraded by 2 root causes: grad-explosion (from step 150) and small-effective-batch (from step 0)".
    assert verdict(two_roots()) == (
        "The run is degraded by 2 root causes: (1) the gradient norm rose to 10.4 at step 151, 14x its running "
        "median, from step 150 (grad-explosion); (2) the effective batch is 8 x 1 = 8 sequences (2048 tokens) per "
        "optimizer step, under 65536 tokens (small-effective-batch, from step 0). These led to loss-spike (step 150).")


def test_a_verdict_does_not_repeat_the_first_step_its_clause_already_gives():
    # bloom104b_overflow: "..., from step 12000 (grad-explosion, from step 12000)".
    d = Diagnosis(summary(), (finding("grad-explosion", Severity.WARNING, GRAD, 150, 151),), ("grad-explosion",))
    text = verdict(d)
    assert text.count("from step 150") == 1 and text.endswith("(grad-explosion).")


def test_many_root_causes_are_named_not_described():
    names = ("a-one", "b-two", "c-three", "d-four")
    d = Diagnosis(summary(), tuple(finding(n, Severity.WARNING, GRAD, 0) for n in names), names)
    assert verdict(d) == ("The run is degraded by 4 root causes: a-one (from step 0), b-two (from step 0), "
                          "c-three (from step 0) and d-four (from step 0).")


# --- a narrow terminal ------------------------------------------------------------------------------------------

def test_on_a_narrow_terminal_every_line_of_the_summary_fits():
    # At 60 columns the message column was forced to 24 characters past the edge, its continuation lines under
    # nothing (the row ran to column 73; the wrapped lines started at column 36).
    from analyzer.report import terminal_summary
    from tests.report.cases import seed002

    _, d = seed002()
    lines = terminal_summary(d, color=False, width=60, wrap=True).splitlines()
    assert max(len(line) for line in lines) <= 60
    assert lines[0].startswith("*critical  D001 distill-temperature-blowup, steps 0-")
    assert lines[1].startswith(" " * 11) and not lines[1].startswith(" " * 12)


def test_a_log_file_keeps_the_verdict_on_one_line():
    from analyzer.report import terminal_summary
    from tests.report.cases import seed002

    _, d = seed002()
    lines = terminal_summary(d, color=False, width=60).splitlines()
    assert [line for line in lines if line.startswith("verdict: ")] == ["verdict: " + verdict(d)]


def test_the_run_overview_wraps_to_the_terminal_and_stays_whole_in_a_log():
    from analyzer.cli import run_overview
    from tests.conftest import make_run

    run = make_run({f"metric_with_a_long_name_{i}": [1.0, 2.0] for i in range(12)},
                   hparams={f"hparam_{i}": i for i in range(12)})
    assert max(len(line) for line in run_overview(run, 60).splitlines()) <= 60
    assert len(run_overview(run).splitlines()) == 3  # run, metrics, hparams: one line each for grep


def test_the_run_overview_shows_the_settings_the_advice_is_about_first():
    # a HF run's TrainingArguments (120 keys) in name order hid the lr behind `activation_checkpointing=False`
    from analyzer.cli import run_overview
    from tests.conftest import make_run

    run = make_run({"loss": [1.0, 2.0]}, hparams={**{f"a_{i}": i for i in range(20)}, "learning_rate": 0.1,
                                                  "max_grad_norm": 1.0, "vocab_size": 50})
    hparams = run_overview(run).splitlines()[-1]
    assert hparams.startswith("  hparams: lr=0.1, max_grad_norm=1.0, vocab_size=50, a_0=0")


# --- plots ------------------------------------------------------------------------------------------------------

def _overlaps_when_saved(monkeypatch, specs, data) -> list[str]:
    """render_svg's figures, checked as they are saved: the panels whose legend runs into their title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from analyzer.report import plots

    hits: list[str] = []
    save = Figure.savefig

    def checked(fig, *args, **kwargs):
        renderer = FigureCanvasAgg(fig).get_renderer()
        for ax in fig.axes:
            title, legend = ax._left_title, ax.get_legend()  # plots set titles on the left (axes.titlelocation)
            if legend is not None and title.get_text() and title.get_window_extent(renderer).overlaps(
                    legend.get_window_extent(renderer)):
                hits.append(title.get_text())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checked)
    plots.render_svg(specs, data)
    return hits


def test_a_legend_never_runs_into_its_panel_title(monkeypatch):
    # kd-temperature-blowup: "Logged eval perplexity vs exp(eval loss)" was drawn over by "logged eval ppl".
    import numpy as np

    from analyzer.report import plots

    steps = np.arange(0, 251, 50)
    data = plots.PlotInput(series={"eval_ppl": (steps, np.full(6, 148.4)), "eval_loss": (steps, np.full(6, 5.6))},
                           window=(0, 200), window_label="perplexity-misreport (steps 0-200)")
    assert _overlaps_when_saved(monkeypatch, [plots.PLOTS["eval_ppl"]], data) == []


def _plot_inputs(monkeypatch, diagnosis, run) -> list:
    from analyzer.report import plots
    from analyzer.report.model import build_report

    seen = []
    monkeypatch.setattr(plots, "render_svg", lambda specs, data, figsize=None: seen.append(data) or "<svg/>")
    build_report(diagnosis, run)
    return seen


def test_the_loss_plots_show_the_chance_level_a_finding_compares_the_loss_with(monkeypatch):
    # hf_lrqa_chance_plateau: "at chance level ln(4) = 1.386" (implied by the loss: no hparam names 4 classes), and
    # no plot drew that level, so the report's main claim had no line to check it against.
    import math

    from tests.conftest import make_run

    run = make_run({"loss": [1.39, 1.387, 1.386, 1.3863], "lr": [1e-5] * 4})
    plateau = Finding("L002", "loss-plateau", Severity.CRITICAL, Confidence.HIGH, "eval_loss stopped improving", 1,
                      3, metrics={"chance_level": math.log(4), "chance_classes": 4})
    d = Diagnosis(RunSummary("/r", "r", ("test",), 0, 3, 8, ("loss", "lr"), {}, ()), (plateau,), ("loss-plateau",))
    inputs = _plot_inputs(monkeypatch, d, run)
    assert inputs and all(data.references == ((math.log(4), "chance level ln(4) = 1.386"),) for data in inputs)


def test_without_a_finding_that_names_it_the_chance_level_comes_from_the_hparams_as_the_detectors_read_it(
        monkeypatch):
    # A classifier with num_classes 10 and a vocab_size: the detectors compare with ln(10), the plot drew ln(vocab).
    import math

    from tests.conftest import make_run

    run = make_run({"loss": [2.5, 2.4, 2.3]}, hparams={"num_classes": 10, "vocab_size": 30522})
    spike = Finding("L001", "loss-spike", Severity.WARNING, Confidence.HIGH, "loss jumped", 1, 2)
    d = Diagnosis(RunSummary("/r", "r", ("test",), 0, 2, 3, ("loss",), {}, ()), (spike,), ("loss-spike",))
    inputs = _plot_inputs(monkeypatch, d, run)
    assert inputs and all(data.references == ((math.log(10), "chance level ln(10) = 2.303"),) for data in inputs)


def test_a_one_step_finding_s_caption_says_dashed_line_as_drawn_not_shaded():
    # kd-temperature-blowup: "Training loss; shaded: nonfinite-onset (step 220)" over a plot with no shading.
    from analyzer.report.model import build_report
    from tests.report.cases import seed002

    run, d = seed002()
    view = next(f for f in build_report(d, run, draw=False).findings if f.name == "nonfinite-onset")
    assert view.figures and all(fig.caption.endswith("; dashed line: nonfinite-onset (step 436)")
                                for fig in view.figures)


def test_the_overview_caption_names_the_findings_its_marks_stand_for():
    # "dotted lines mark where N001 began (step 220)": the code alone means nothing to a reader.
    from analyzer.report.model import build_report
    from tests.report.cases import seed002

    run, d = seed002()
    assert "nonfinite-onset (N001) began (step 436)" in build_report(d, run, draw=False).overview.caption


# --- markdown ---------------------------------------------------------------------------------------------------

def test_the_markdown_root_cause_section_gives_the_root_cause_message_once():
    # The root cause's message was printed as its heading and again as the first line of its chain.
    from analyzer.report import markdown
    from analyzer.report.model import build_report
    from tests.report.cases import seed002

    run, d = seed002()
    text = markdown(build_report(d, run, draw=False))
    section = text[text.index("## Root causes"):text.index("## Recommended change")]
    root = next(f for f in d.findings if f.name == d.root_causes[0])
    assert section.count(root.message[:60]) == 1


# --- the GitHub step summary of a sweep ---------------------------------------------------------------------------

def _sweep_entries(n: int):
    from tests.report.cases import healthy, seed002

    (_, broken), (_, fine) = seed002(), healthy()
    return [(f"run-{i:03d}", broken if i % 2 else fine, f"out/run-{i:03d}") for i in range(n)]


def test_a_sweep_step_summary_opens_with_a_table_of_every_run_and_the_folders_it_skipped():
    from analyzer.report.summary import sweep_summary

    text = sweep_summary(_sweep_entries(2), skipped=[("notes", "the run directory is empty")])
    head = text[:text.index("\n### Postmortem: ", 1)]
    assert head.startswith("### Postmortem: 2 runs\n")
    assert "| run-001 | Critical |" in head and "| run-000 | OK |" in head
    assert head.index("run-001") < head.index("run-000")  # worst first
    assert "`notes` (the run directory is empty)" in head


def test_a_large_sweep_step_summary_stays_under_github_s_limit_and_says_what_it_left_out():
    # Each run's summary kept itself under the limit, but a sweep appended them all: 200 runs went past 1 MiB.
    from analyzer.report.summary import github_summary, sweep_summary

    entries = _sweep_entries(40)
    one = len(github_summary(entries[1][1], "out/run-001").encode("utf-8"))
    limit = 10 * one
    text = sweep_summary(entries, limit=limit)
    assert len(text.encode("utf-8")) <= limit
    assert text.count("| Critical |") == 20  # the table still lists every run
    assert "not detailed below, to stay within GitHub's summary limit" in text


def test_diagnose_recursive_writes_one_step_summary_for_the_sweep(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from analyzer.cli import diagnose_command

    sweep = tmp_path / "sweep"
    for name in ("a", "b"):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "metrics.jsonl").write_text(
            "".join(f'{{"step": {i}, "loss": {3 - i * 0.01:.3f}}}\n' for i in range(50)))
    (sweep / "notes").mkdir()
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = CliRunner().invoke(diagnose_command, [str(sweep), "--recursive", "--out", str(tmp_path / "out"),
                                                   "--format", "md"])
    assert result.exit_code == 0, result.output
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("### Postmortem: 2 runs\n") and "`notes`" in text
    assert text.count("### Postmortem: a ") == 1 and text.count("### Postmortem: b ") == 1


def test_the_step_summary_cuts_a_long_message_between_words():
    # hf_lrqa_chance_plateau's cell ended "(judged to step 2300, wh...": cut inside a word, by the template.
    from analyzer.report.summary import github_summary

    message = "eval_loss stopped improving: " + "it stayed near 1.386 while the lr stayed at its peak, " * 8
    d = Diagnosis(summary(), (finding("loss-plateau", Severity.CRITICAL, message, 300, 3100),), ("loss-plateau",))
    cell = next(line for line in github_summary(d, "out").splitlines() if "L002" in line or "X001" in line)
    kept = cell.split(" | ")[-1].rstrip(" |")
    assert kept.endswith(" ...") and message.startswith(kept[: -len(" ...")] + " ")
    assert len(kept) <= 300


def test_nonfinite_onset_plots_the_metric_that_went_non_finite_with_the_nan_the_log_hid(monkeypatch):
    # kd-temperature-blowup: lm_loss was clamped to 0.0 from step 220; the finding showed the training loss and
    # the gradient norm, where the clamp hardly shows, and no plot of lm_loss.
    from analyzer.run import Event
    from tests.conftest import make_run

    lm = [5.0] * 6 + [0.0] * 4
    run = make_run({"loss": [5.5] * 6 + [3.6] * 4, "lm_loss": lm},
                   events=[Event(kind="nan_clamp", step=s, file="train.log", line=s, text="lm_loss nan; clamping",
                                 data={"metric": "lm_loss"}) for s in range(6, 10)])
    onset = Finding("N001", "nonfinite-onset", Severity.CRITICAL, Confidence.HIGH, "First non-finite value", 6, 6)
    d = Diagnosis(RunSummary("/r", "r", ("test",), 0, 9, 20, ("lm_loss", "loss"), {}, ()), (onset,),
                  ("nonfinite-onset",))
    from analyzer.report.model import build_report

    view = build_report(d, run, draw=False).findings[0]
    assert [fig.title for fig in view.figures] == ["lm_loss, the metric that went non-finite", "Training loss"]
    inputs = _plot_inputs(monkeypatch, d, run)
    assert any(("lm_loss", (6, 7, 8, 9)) in data.hidden_nonfinite for data in inputs)


def test_a_lead_that_is_short_but_for_an_aside_keeps_its_next_clause():
    # mlm-lr-too-low: "lr 5.00e-4 (4.75e-4 effective after warmup) is too low (lr-too-low, from step 131)": the
    # aside made the lead look long enough, and the verdict lost where the loss stalled.
    message = ("lr 5.00e-4 (4.75e-4 effective after warmup) is too low: the loss has stalled near 5.13 since step 131 "
               "while the median update ratio is only 0.00214; the loss fell only 1.2% from step 193 to 330.")
    d = Diagnosis(summary(), (finding("lr-too-low", Severity.WARNING, message, 131, 330),), ("lr-too-low",))
    assert verdict(d) == ("The run is degraded: lr 5.00e-4 (4.75e-4 effective after warmup) is too low; the loss has "
                          "stalled near 5.13 since step 131 while the median update ratio is only 0.00214 (lr-too-low).")


def test_a_broken_run_with_nothing_to_change_says_so_in_the_terminal():
    # hf_lrqa_chance_plateau (critical) ended on its verdict: no "fix:" line, as if there were nothing to do.
    from analyzer.report import terminal_summary

    d = Diagnosis(summary(), (finding("loss-plateau", Severity.CRITICAL, "eval_loss stopped improving", 300),),
                  ("loss-plateau",))
    assert terminal_summary(d, color=False).splitlines()[-1] == (
        "fix: no hyperparameter change is recommended: no finding names a setting that caused this. "
        "`postmortem explain loss-plateau` says what loss-plateau can mean and what to check.")


def test_a_broken_run_with_nothing_to_change_says_where_to_read_on_in_the_report():
    from analyzer.report import markdown
    from analyzer.report.model import build_report

    d = Diagnosis(summary(), (finding("loss-plateau", Severity.CRITICAL, "eval_loss stopped improving", 300),),
                  ("loss-plateau",))
    assert "`postmortem explain loss-plateau` says what loss-plateau can mean" in markdown(build_report(d))


def test_a_chance_level_far_above_the_losses_does_not_squash_the_loss_plot():
    # pl_slm_resume: a line at ln(50258) = 10.8 stretched the axis, and the plateau at 3.7 was a flat line at the
    # bottom of the plot.
    import numpy as np
    from matplotlib.figure import Figure

    from analyzer.report import plots

    steps = np.arange(100)
    loss = np.linspace(7.6, 3.7, 100)
    ax = Figure().subplots()
    plots.draw_loss(ax, plots.PlotInput(series={"loss": (steps, loss)}, hparams={"vocab_size": 50258}))
    assert ax.get_ylim()[1] < 8.5
    ax = Figure().subplots()
    plots.draw_loss(ax, plots.PlotInput(series={"loss": (steps, loss)}, references=((5.0, "chance level ln(148)"),)))
    assert "chance level ln(148)" in [line.get_label() for line in ax.get_lines()]


def test_an_overfitting_finding_shows_the_eval_loss_on_its_own_linear_axis():
    # hf_whisper_overfit: eval_loss 0.321 -> 0.42 (+31%) was drawn beside a train loss falling 0.3 -> 2e-4 on one
    # log axis, where the rise the finding is about is a flat line.
    import numpy as np
    from matplotlib.figure import Figure

    from analyzer.report import plots

    specs = plots.plots_for("overfitting", {"loss", "eval_loss"})
    assert [s.name for s in specs] == ["eval_loss", "loss"]
    ax = Figure().subplots()
    specs[0].draw(ax, plots.PlotInput(series={"eval_loss": (np.arange(1000, 6000, 1000), np.array(
        [0.321, 0.3585, 0.3937, 0.4123, 0.42])), "loss": (np.arange(25, 5000, 25), np.geomspace(0.3, 2e-4, 199))}))
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] > 0.2


def test_a_loss_that_did_not_move_is_not_drawn_as_a_steady_fall():
    # mlm-labels-all-tokens: the loss moved 39.55 -> 39.49 (0.2%); autoscaled, it fell from the top of the plot to
    # the bottom, beside a finding that says it did not move.
    import numpy as np
    from matplotlib.figure import Figure

    from analyzer.report import plots

    ax = Figure().subplots()
    plots.draw_loss(ax, plots.PlotInput(series={"loss": (np.arange(60), np.linspace(39.55, 39.49, 60))}))
    low, high = ax.get_ylim()
    assert high - low >= 0.1 * 39.5 * 0.99 and low < 39.49 and high > 39.55


def test_the_terminal_never_cuts_a_step_range():
    # A million-step run's "1000000-1500000" was cut to "1000000-15...", a step that does not exist.
    from analyzer.report import terminal_summary

    d = Diagnosis(summary(), (finding("loss-plateau", Severity.WARNING, "loss stopped improving", 1000000, 1500000),),
                  ("loss-plateau",))
    assert "1000000-1500000" in terminal_summary(d, color=False, width=100)


def test_a_short_finding_in_a_long_run_is_plotted_zoomed_in(monkeypatch):
    # bloom176b_spike: a 3-step gradient spike at 31219 in steps 12695-45000 was one vertical line in its plots.
    import numpy as np

    from tests.conftest import make_run

    steps = np.arange(0, 10000, 10)
    grad = np.where((steps >= 5000) & (steps <= 5020), 900.0, 0.5)
    run = make_run({"loss": (steps, np.full(len(steps), 2.2)), "grad_norm": (steps, grad)})
    spike = Finding("G001", "grad-explosion", Severity.WARNING, Confidence.HIGH, "The gradient norm rose", 5000, 5020)
    d = Diagnosis(RunSummary("/r", "r", ("test",), 0, 9990, 2000, ("grad_norm", "loss"), {}, ()), (spike,),
                  ("grad-explosion",))
    inputs = _plot_inputs(monkeypatch, d, run)
    zoomed = [data for data in inputs if data.window == (5000, 5020)]
    assert zoomed and all(data.zoom == (4001, 6019) for data in zoomed)
    assert all(data.series["grad_norm"][0].min() >= 4001 and data.series["grad_norm"][0].max() <= 6019
               for data in zoomed)
    from analyzer.report.model import build_report

    view = build_report(d, run, draw=False).findings[0]
    assert view.figures[0].caption.endswith("; zoomed to steps 4001-6019")


def test_the_overview_caption_names_a_finding_once_with_all_its_onsets():
    # pl_slm_resume: "loss-plateau (L002) began (step 101549), loss-plateau (L002) began (step 112591)".
    from analyzer.report.model import build_report
    from tests.conftest import make_run

    run = make_run({"loss": [3.0 - 0.01 * i for i in range(300)]})
    plateaus = tuple(Finding("L002", "loss-plateau", Severity.WARNING, Confidence.HIGH, "stalled", first, first + 50)
                     for first in (100, 200))
    d = Diagnosis(RunSummary("/r", "r", ("test",), 0, 299, 300, ("loss",), {}, ()), plateaus,
                  ("loss-plateau", "loss-plateau"))
    caption = build_report(d, run, draw=False).overview.caption
    assert caption == "The whole run: dotted lines mark where loss-plateau (L002) began (steps 100 and 200)"


def test_labels_of_marks_a_few_steps_apart_do_not_print_over_each_other():
    # lightning_nan's overview: L001 at step 47 and N001 at step 50 read "LN001".
    from matplotlib.figure import Figure

    from analyzer.report import plots

    ax = Figure().add_subplot()
    ax.set_xlim(0, 300)
    plots._marks(ax, plots.PlotInput(series={}, marks=((47, "L001"), (50, "N001"), (4, "L004"), (288, "C001"))))
    offsets = {a.get_text(): a.xyann[1] for a in ax.texts}
    assert offsets["L001"] != offsets["N001"]
    assert offsets["L004"] == offsets["L001"] == offsets["C001"]  # far apart: one row
