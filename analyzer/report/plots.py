"""Report figures: one small plot per thing a finding needs, as deterministic SVG, drawn with matplotlib's Figure API.

Each plot in PLOTS declares the metrics it requires and is left out when the run lacks them (Cockpit's `requires`).
Series are downsampled to the min and max of each bucket before drawing, so a one-step spike in a million-step run
stays visible and a plot costs the same whatever the run's length. NaN/Inf points cannot be drawn on a value axis:
they are marked along the top edge instead, so the moment a run went non-finite is the first thing one sees.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from analyzer.report import format as fmt

MAX_BUCKETS = 800  # min+max per bucket: <=1600 points per line, finer than the plot's pixel width
GAP_FACTOR = 20.0  # a gap between logged steps this many times the usual spacing is not drawn across
LOG_SPAN = 50.0  # a positive series whose max/min exceeds this reads better on a log axis
MIN_SPAN = 0.1  # a loss axis spans at least this fraction of the loss's level, so noise does not look like a trend
FIGSIZE = (7.2, 2.5)  # inches; 720x250 px in SVG units, readable on a laptop and printed at page width
OVERVIEW_FIGSIZE = (7.2, 3.6)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 0.75, 0.15, 0.5, 0.45  # inches: tick labels, title + legend
PANEL_GAP = 0.55  # inches between stacked panels: the lower panel's title and legend
LABEL_LEFT_OF = 0.9  # a marked step beyond this fraction of the x axis gets its label on the left of the line
MARK_LABEL_GAP = 0.06  # marks closer than this (fraction of the x axis) get their labels on separate rows
MARK_ROW_POINTS = 10  # the height of a row of mark labels
MAX_MARK_ROWS = 3
LEGEND_COLUMNS = 3  # more entries wrap to a second row rather than run into the title
SVG_SALT = "postmortem"  # fixes matplotlib's SVG ids, so the same run renders byte-identical figures

# Colours chosen to stay distinct for common colour-vision deficiencies (Okabe-Ito).
BLUE, ORANGE, GREEN, RED, PURPLE, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#666666"
INCIDENT = "#D55E00"

Series = tuple[np.ndarray, np.ndarray]  # (steps, values), sorted by step
# Series the report derives rather than reads (never a metric name: no metric has an "@"), and what each stands for
# when a run lacks it.
SPEED = "@speed"  # the training speed as throughput-drop judges it: a rate, 1 / step time, or steps/s from the clock
DERIVED = {SPEED: "training speed (a rate, a time per step or timestamps)"}


@dataclass(frozen=True)
class PlotInput:
    """What a plot may draw: the run's series (numpy, no pandas), a few hparams, and the marks of one finding."""

    series: Mapping[str, Series]
    hparams: Mapping[str, Any] = field(default_factory=dict)
    window: tuple[int | None, int | None] | None = None  # the incident: first and last step of the finding
    window_label: str = ""
    marks: tuple[tuple[int, str], ...] = ()  # extra vertical lines: (step, label), e.g. root causes' first steps
    checkpoints: tuple[tuple[int, bool], ...] = ()  # (step, good?) ticks along the bottom edge
    overflow_steps: tuple[int, ...] = ()  # fp16 overflow events (skipped steps)
    labels: Mapping[str, str] = field(default_factory=dict)  # what a derived series is (SPEED: "tokens/s", ...)
    # Horizontal lines on the loss plot: (value, label), e.g. the chance level a finding compares the loss with.
    references: tuple[tuple[float, str], ...] = ()
    # NaN/Inf the log hid (clamped to zero, filtered): (metric, steps), marked where the value itself looks finite.
    hidden_nonfinite: tuple[tuple[str, tuple[int, ...]], ...] = ()
    zoom: tuple[int, int] | None = None  # the steps the series were cut to (a short finding's close-up)


@dataclass(frozen=True)
class PlotSpec:
    """A plot: its name, title, the metrics it needs (all of `requires`, and one of `any_of` if given)."""

    name: str
    title: str
    requires: tuple[str, ...]
    draw: Callable[[Any, PlotInput], None]
    any_of: tuple[str, ...] = ()

    def available(self, metrics: Sequence[str] | set[str]) -> bool:
        return all(m in metrics for m in self.requires) and (not self.any_of or any(m in metrics for m in self.any_of))

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.requires + self.any_of


# --- downsampling -------------------------------------------------------------------------------------------------

def downsample(steps: np.ndarray, values: np.ndarray, buckets: int = MAX_BUCKETS) -> Series:
    """Keep the minimum and the maximum of each of `buckets` equal slices, in step order (finite values only).

    Vectorised: the series is padded to a multiple of the bucket size and reshaped, so argmin/argmax run once.
    """
    steps = np.asarray(steps)
    values = np.asarray(values, dtype="float64")
    finite = np.isfinite(values)
    steps, values = steps[finite], values[finite]
    n = len(values)
    if n <= 2 * buckets:
        return steps, values
    size = math.ceil(n / buckets)
    rows = math.ceil(n / size)
    lows = np.full(rows * size, np.inf)
    highs = np.full(rows * size, -np.inf)
    lows[:n] = values
    highs[:n] = values
    offsets = np.arange(rows) * size
    keep = np.concatenate([offsets + lows.reshape(rows, size).argmin(axis=1),
                           offsets + highs.reshape(rows, size).argmax(axis=1)])
    keep = np.unique(keep[keep < n])  # sorted, and a bucket whose min and max coincide keeps one point
    return steps[keep], values[keep]


def nonfinite_steps(steps: np.ndarray, values: np.ndarray, buckets: int = MAX_BUCKETS) -> np.ndarray:
    """Steps of NaN/Inf values, thinned to at most one per bucket of the step range (markers would overlap)."""
    bad = np.asarray(steps)[~np.isfinite(np.asarray(values, dtype="float64"))]
    if len(bad) <= buckets:
        return bad
    lo, hi = float(bad.min()), float(bad.max())
    slot = np.floor((bad - lo) / max(hi - lo, 1.0) * (buckets - 1)).astype("int64")
    _, first = np.unique(slot, return_index=True)
    return bad[first]


def break_at_gaps(steps: np.ndarray, values: np.ndarray) -> Series:
    """The series with a NaN in each gap far wider than its usual spacing, so the line stops there.

    A log kept as excerpts (BLOOM's chronicles: a few steps around each incident, thousands of steps apart) would
    otherwise be drawn as a straight line through steps nobody logged, a trend the run never showed.
    """
    steps = np.asarray(steps)
    values = np.asarray(values, dtype="float64")
    if len(steps) < 3:
        return steps, values
    spacing = np.diff(steps.astype("float64"))
    usual = float(np.median(spacing))
    gaps = np.flatnonzero(spacing > GAP_FACTOR * max(usual, 1.0))
    if not len(gaps):
        return steps, values
    at = gaps + 1
    return (np.insert(steps.astype("float64"), at, np.nan), np.insert(values, at, np.nan))


def wants_log(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    if len(finite) < 2 or (finite <= 0).any():
        return False
    return float(finite.max()) / float(finite.min()) > LOG_SPAN


# --- drawing helpers ----------------------------------------------------------------------------------------------

def _line(ax, data: PlotInput, metric: str, label: str, color: str, *, log: bool | None = None, width: float = 1.0,
          style: str = "-", marker: str | None = None) -> np.ndarray:
    steps, values = data.series[metric]
    xs, ys = downsample(steps, values)
    gapped_xs, gapped_ys = break_at_gaps(xs, ys)
    if marker is None and len(gapped_xs) > len(xs):
        marker = "."  # the log holds excerpts: a point between two gaps would draw no line, so mark every point
    ax.plot(gapped_xs, gapped_ys, style, color=color, linewidth=width, label=label, marker=marker,
            markersize=3 if marker else 0)
    bad = nonfinite_steps(steps, values)
    if len(bad):
        # On the top edge: axes coordinates in y, data coordinates in x.
        ax.plot(bad, np.full(len(bad), 0.97), "x", color=RED, markersize=5, markeredgewidth=1.3, clip_on=False,
                transform=ax.get_xaxis_transform(), label=f"{metric} NaN/Inf ({int((~np.isfinite(values)).sum())})")
    if log is None:
        log = wants_log(ys)
    if log:
        ax.set_yscale("log")
    return ys


def _incident(ax, data: PlotInput) -> None:
    if data.window is None:
        return
    first, last = data.window
    if first is None and last is None:
        return
    label = data.window_label or "incident"
    if first is not None and last is not None and last > first:
        ax.axvspan(first, last, color=INCIDENT, alpha=0.12, linewidth=0, label=label)
        ax.axvline(first, color=INCIDENT, linewidth=0.9)
    else:
        ax.axvline(first if first is not None else last, color=INCIDENT, linewidth=1.2, linestyle="--", label=label)


def _marks(ax, data: PlotInput) -> None:
    low, high = ax.get_xlim()
    rows: list[float] = []  # where each row's last label sits (axes fraction)
    for step, label in sorted(data.marks):
        ax.axvline(step, color=PURPLE, linewidth=1.0, linestyle=":")
        at = (step - low) / (high - low) if high > low else 0.0
        # A mark near the right edge is labelled on its left: on the right the label would run off the axes.
        left = at > LABEL_LEFT_OF
        # Marks a few steps apart (lightning_nan: L001 at 47, N001 at 50) would print their labels over each other
        # ("LN001"): the later one goes a row lower.
        row = next((i for i, last in enumerate(rows) if at - last >= MARK_LABEL_GAP), len(rows))
        if row == len(rows):
            rows.append(at)
        rows[row] = at
        ax.annotate(label, (step, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-5 if left else 5, -11 - MARK_ROW_POINTS * (row % MAX_MARK_ROWS)),
                    textcoords="offset points", fontsize=7, color=PURPLE, ha="right" if left else "left",
                    bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.75))


def _checkpoints(ax, data: PlotInput) -> None:
    if not data.checkpoints:
        return
    good = [s for s, ok in data.checkpoints if ok]
    bad = [s for s, ok in data.checkpoints if not ok]
    transform = ax.get_xaxis_transform()
    if good:
        ax.plot(good, np.full(len(good), 0.03), "^", color=GREEN, markersize=5, transform=transform, clip_on=False,
                label="checkpoint", linestyle="none")
    if bad:
        ax.plot(bad, np.full(len(bad), 0.03), "^", color=RED, markersize=5, transform=transform, clip_on=False,
                label="checkpoint with NaN/Inf", linestyle="none", markerfacecolor="none")


def _hline(ax, value: Any, label: str, color: str = GREY) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        ax.axhline(float(value), color=color, linewidth=0.9, linestyle="--", label=label)


def _finish(ax, data: PlotInput, ylabel: str) -> None:
    _incident(ax, data)
    _marks(ax, data)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.margins(x=0.01)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        # Above the axes, right of the title: inside, a legend hides exactly the late steps a reader looks at.
        _legend(ax, _legend_columns(len(handles)))


def _legend_columns(entries: int) -> int:
    return entries if entries <= LEGEND_COLUMNS else (2 if entries == 4 else LEGEND_COLUMNS)


def _legend(ax, columns: int):
    return ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=columns, fontsize=7, frameon=False,
                     borderaxespad=0.1, handlelength=1.5, columnspacing=1.2)


def _clear_title(fig, axes, titles) -> None:
    """A legend that runs into its panel's title (a long title, three long entries) takes fewer columns, so it
    grows upwards instead of leftwards; the title and the legend are both text a reader needs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax, title in zip(axes, titles):
        legend = ax.get_legend()
        if legend is None:
            continue
        columns = _legend_columns(len(legend.get_texts()))
        while columns > 1 and title.get_window_extent(renderer).overlaps(legend.get_window_extent(renderer)):
            columns -= 1
            legend = _legend(ax, columns)


# --- the plots ----------------------------------------------------------------------------------------------------

def draw_loss(ax, data: PlotInput) -> None:
    _line(ax, data, "loss", "train loss", BLUE)
    if "eval_loss" in data.series:
        _line(ax, data, "eval_loss", "eval loss", ORANGE, log=ax.get_yscale() == "log", marker="o", width=1.2)
    _min_span(ax)
    references = list(data.references)
    vocab = data.hparams.get("vocab_size")
    if not references and isinstance(vocab, (int, float)) and not isinstance(vocab, bool) and vocab > 1:
        references.append((math.log(vocab), f"ln(vocab) = {fmt.number(math.log(vocab))}"))
    low, high = ax.get_ylim()
    for value, label in references:
        # A level far above the losses (a plateau at 34% of ln(50258)) would squash them into the bottom of the
        # plot; the finding's message gives it as a number.
        if low <= value <= high:
            _hline(ax, value, label)
    _checkpoints(ax, data)
    _finish(ax, data, "loss")


def _min_span(ax) -> None:
    """A linear axis spans at least MIN_SPAN of its level: autoscaled, a loss that moved 0.2% (39.48-39.56) fills
    the plot's height and reads as a steady fall, where the finding says it did not move."""
    if ax.get_yscale() != "linear":
        return
    low, high = ax.get_ylim()
    level = max(abs(low), abs(high))
    if level > 0 and high - low < MIN_SPAN * level:
        middle, half = (low + high) / 2, MIN_SPAN * level / 2
        ax.set_ylim(middle - half, middle + half)


def draw_eval_loss(ax, data: PlotInput) -> None:
    # On its own linear axis: beside a training loss that falls by decades, a 30% rise of the eval loss is flat.
    _line(ax, data, "eval_loss", "eval loss", ORANGE, log=False, marker="o", width=1.2)
    _finish(ax, data, "eval loss")


def draw_grad_norm(ax, data: PlotInput) -> None:
    _line(ax, data, "grad_norm", "grad norm (before clipping)", BLUE)
    clip = data.hparams.get("max_grad_norm")
    _hline(ax, clip, f"clip threshold {fmt.number(clip)}", RED)
    _finish(ax, data, "grad norm")


def draw_lr(ax, data: PlotInput) -> None:
    _line(ax, data, "lr", "learning rate", GREEN, log=False)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.yaxis.get_offset_text().set_fontsize(7)
    _finish(ax, data, "lr")


def draw_kd(ax, data: PlotInput) -> None:
    raw = _line(ax, data, "kd_raw", "raw KL (kd_raw)", BLUE, log=False)
    scaled = _line(ax, data, "kd_loss", "scaled KD loss (KL x T²)", ORANGE, log=False)
    both = np.concatenate([raw, scaled])
    if wants_log(both):
        ax.set_yscale("log")
    _finish(ax, data, "KD loss")


def draw_throughput(ax, data: PlotInput) -> None:
    label = data.labels.get(SPEED, "training speed")
    _line(ax, data, SPEED, label, BLUE, log=False)
    ax.set_ylim(bottom=0)
    _finish(ax, data, label.split(" (")[0])


def draw_loss_scale(ax, data: PlotInput) -> None:
    _line(ax, data, "loss_scale", "loss scale", BLUE, log=False, style="-")
    steps, values = data.series["loss_scale"]
    finite = values[np.isfinite(values)]
    if len(finite) and (finite > 0).all():
        ax.set_yscale("log", base=2)
    if data.overflow_steps:
        ax.plot(data.overflow_steps, np.full(len(data.overflow_steps), 0.03), "|", color=RED, markersize=8,
                transform=ax.get_xaxis_transform(), clip_on=False, label=f"overflow ({len(data.overflow_steps)})",
                linestyle="none")
    _finish(ax, data, "loss scale")


def _ppl_vs_loss(ax, data: PlotInput, ppl: str, losses: Sequence[str], label: str) -> None:
    # The loss the perplexity belongs to: a distillation run's ppl is exp(lm_loss), not exp of the total loss.
    loss = next(name for name in losses if name in data.series)
    _line(ax, data, ppl, f"logged {label}", RED, log=False)
    steps, values = data.series[loss]
    with np.errstate(over="ignore", invalid="ignore"):
        implied = np.exp(np.clip(values, None, 700.0))  # exp overflows float64 above ~709
    xs, ys = downsample(steps, implied)
    ax.plot(xs, ys, "--", color=BLUE, linewidth=1.0, label=f"exp({loss})")
    logged = data.series[ppl][1]
    both = np.concatenate([logged[np.isfinite(logged)], ys])
    if wants_log(both) or (len(both) and both.min() > 0 and both.max() > 1e3):
        ax.set_yscale("log")
    _finish(ax, data, "perplexity")


PPL_LOSSES = ("lm_loss", "loss")  # in order of preference, as perplexity-misreport pairs them
EVAL_PPL_LOSSES = ("eval_lm_loss", "eval_loss")


def draw_ppl(ax, data: PlotInput) -> None:
    _ppl_vs_loss(ax, data, "ppl", PPL_LOSSES, "ppl")


def draw_eval_ppl(ax, data: PlotInput) -> None:
    _ppl_vs_loss(ax, data, "eval_ppl", EVAL_PPL_LOSSES, "eval ppl")


def draw_mask_ratio(ax, data: PlotInput) -> None:
    _line(ax, data, "mask_ratio", "labelled tokens / all tokens", BLUE, log=False)
    probability = data.hparams.get("mlm_probability")
    _hline(ax, probability, f"mlm_probability {fmt.number(probability)}", GREEN)
    ax.set_ylim(0, 1.05)
    _finish(ax, data, "mask ratio")


def metric_plot(metric: str) -> PlotSpec:
    """A plot of one named metric: the one that went NaN/Inf, which may be none of the plots above (lm_loss)."""
    def draw(ax, data: PlotInput) -> None:
        _line(ax, data, metric, metric, BLUE)
        for name, steps in data.hidden_nonfinite:
            if name == metric and steps:
                # A clamped NaN reads as an ordinary 0.0 on the line: the log's own NaN lines mark where it was.
                ax.plot(steps, np.full(len(steps), 0.97), "x", color=RED, markersize=5, markeredgewidth=1.3,
                        clip_on=False, transform=ax.get_xaxis_transform(), linestyle="none",
                        label=f"NaN/Inf hidden by the log ({len(steps)})")
        _finish(ax, data, metric)

    return PlotSpec(f"metric-{metric}", f"{metric}, the metric that went non-finite", (metric,), draw)


def draw_update_ratio(ax, data: PlotInput) -> None:
    _line(ax, data, "update_ratio", "update / weight norm", BLUE)
    _finish(ax, data, "update ratio")


PLOTS: dict[str, PlotSpec] = {
    "loss": PlotSpec("loss", "Training loss", ("loss",), draw_loss),
    "eval_loss": PlotSpec("eval_loss", "Eval loss", ("eval_loss",), draw_eval_loss),
    "grad_norm": PlotSpec("grad_norm", "Gradient norm", ("grad_norm",), draw_grad_norm),
    "lr": PlotSpec("lr", "Learning-rate schedule", ("lr",), draw_lr),
    "kd": PlotSpec("kd", "Raw KL vs scaled KD loss", ("kd_raw", "kd_loss"), draw_kd),
    "throughput": PlotSpec("throughput", "Throughput", (SPEED,), draw_throughput),
    "loss_scale": PlotSpec("loss_scale", "Mixed-precision loss scale", ("loss_scale",), draw_loss_scale),
    "ppl": PlotSpec("ppl", "Logged perplexity vs exp(loss)", ("ppl",), draw_ppl, any_of=PPL_LOSSES),
    "eval_ppl": PlotSpec("eval_ppl", "Logged eval perplexity vs exp(eval loss)", ("eval_ppl",), draw_eval_ppl,
                         any_of=EVAL_PPL_LOSSES),
    "mask_ratio": PlotSpec("mask_ratio", "Share of tokens with a label", ("mask_ratio",), draw_mask_ratio),
    "update_ratio": PlotSpec("update_ratio", "Update-to-weight ratio", ("update_ratio",), draw_update_ratio),
}

# What each finding needs to be seen, in order of preference; the first MAX_PLOTS_PER_FINDING available are drawn.
FINDING_PLOTS: dict[str, tuple[str, ...]] = {
    "loss-spike": ("loss", "grad_norm"),
    "loss-plateau": ("loss", "lr"),
    "loss-oscillation": ("loss", "grad_norm"),
    "loss-divergence": ("loss", "grad_norm"),
    "initial-loss-mismatch": ("loss",),
    "nonfinite-onset": ("loss", "grad_norm"),
    "loss-scale-collapse": ("loss_scale", "loss"),
    "perplexity-misreport": ("eval_ppl", "ppl", "loss"),
    "grad-explosion": ("grad_norm", "loss"),
    "grad-vanishing": ("grad_norm", "loss"),
    "lr-too-low": ("loss", "lr"),
    "lr-too-high": ("loss", "lr", "update_ratio"),
    "small-effective-batch": ("loss",),
    "distill-temperature-blowup": ("kd", "loss"),
    "mlm-label-ratio": ("mask_ratio", "grad_norm", "loss"),
    "throughput-drop": ("throughput", "loss"),
    "checkpoint-nonfinite": ("loss",),
    "init-variance": ("loss", "grad_norm"),
    "overfitting": ("eval_loss", "loss"),
}
DEFAULT_PLOTS = ("loss",)
MAX_PLOTS_PER_FINDING = 2
# Plots that show where checkpoints were saved: the findings where a restart point matters.
CHECKPOINT_FINDINGS = {"nonfinite-onset", "checkpoint-nonfinite", "loss-divergence"}


# A detector that reports once per metric (ppl, eval_ppl) names the metric first in its message; each of its findings
# shows that metric's plot only, not its sibling's.
SUBJECT_PLOTS: dict[str, dict[str, tuple[str, ...]]] = {
    "perplexity-misreport": {"ppl": ("ppl", "loss"), "eval_ppl": ("eval_ppl", "loss")},
}


def wanted_plots(finding_name: str, message: str = "") -> tuple[str, ...]:
    """The plots a finding would show, in order of preference, whatever the run logs."""
    subject = message.split(" ", 1)[0]
    return SUBJECT_PLOTS.get(finding_name, {}).get(subject, FINDING_PLOTS.get(finding_name, DEFAULT_PLOTS))


def plots_for(finding_name: str, metrics: set[str] | Sequence[str], message: str = "") -> tuple[PlotSpec, ...]:
    """The plots a finding gets on this run: its preferences, minus those whose metrics the run lacks."""
    wanted = wanted_plots(finding_name, message)
    return tuple(PLOTS[name] for name in wanted if PLOTS[name].available(metrics))[:MAX_PLOTS_PER_FINDING]


def render_svg(specs: Sequence[PlotSpec], data: PlotInput, figsize: tuple[float, float] | None = None) -> str:
    """Draw the specs stacked (sharing the step axis) and return deterministic SVG text."""
    import matplotlib
    from matplotlib.figure import Figure

    rc = {"svg.hashsalt": SVG_SALT, "svg.fonttype": "none", "font.size": 8, "axes.titlesize": 9,
          "axes.titlelocation": "left", "path.simplify": True, "axes.spines.top": False, "axes.spines.right": False}
    with matplotlib.rc_context(rc):
        size = figsize or (FIGSIZE if len(specs) == 1 else (FIGSIZE[0], 1.0 + 1.6 * len(specs)))
        # Fixed margins in inches rather than constrained layout: a third of the drawing time, and the same frame
        # on every plot, so plots stacked in a report line up.
        width, height = size
        panel = (height - MARGIN_TOP - MARGIN_BOTTOM - PANEL_GAP * (len(specs) - 1)) / len(specs)
        fig = Figure(figsize=size)
        axes = fig.subplots(len(specs), 1, sharex=True, squeeze=False, gridspec_kw=dict(
            left=MARGIN_LEFT / width, right=1 - MARGIN_RIGHT / width, bottom=MARGIN_BOTTOM / height,
            top=1 - MARGIN_TOP / height, hspace=PANEL_GAP / panel))[:, 0]
        titles = []
        for ax, spec in zip(axes, specs):
            spec.draw(ax, data)
            titles.append(ax.set_title(spec.title))
        for ax in axes[:-1]:
            ax.set_xlabel("")
        _clear_title(fig, axes, titles)
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return _strip_svg_prolog(out.getvalue())


def _strip_svg_prolog(svg: str) -> str:
    """Drop the XML declaration and DOCTYPE: the SVG may be inlined or written as a file either way."""
    start = svg.find("<svg")
    return svg[start:] if start > 0 else svg
