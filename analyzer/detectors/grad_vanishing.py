"""grad-vanishing: the gradient norm collapses by orders of magnitude while the loss has not converged.

What it detects:
    A gradient norm that falls to a small fraction of its early level (or to exactly zero on most late steps)
    while the loss is still far from converged; also a run whose own log keeps warning about vanishing gradients
    (seed 004 added warnings for norms below 0.001).
Why it matters:
    With no gradient there is no learning: the loss stalls although the schedule still allows progress. Typical
    causes are saturated activations, dead units, a learning rate decayed or set far too low, or an initialization
    far off its intended scale. A small norm after the loss converged is the opposite: the model fits its data.
How it decides:
    Exact zeros are set apart (a zero norm is no gradient at all: RL batches with zero advantage give them by
    design). The early level is the median of the non-zero norms in the first `edge_share` of the points (after
    the first two, which carry init transients); the late level the median over the last `edge_share`. A collapse
    is a late level at least `factor` times below the early one, or a late stretch that is mostly exact zeros
    where the early one was not. The loss must not have converged: its late median is above `converged_share` of
    its early median and above `zero_loss` in size (a GRPO loss that sits at ~0 by design is never judged). A norm
    that is exactly 0 at most points of the run while the loss changes is not measured (Megatron's
    `grad norm: 0.000`): the detector is skipped. At least `min_warnings` vanishing-gradient warnings in the log
    count as the same finding.
What it recommends:
    The peak lr doubled when it is known (the first remedy for a stalled optimizer; seed 004's guidance for norms
    below 0.001: increase the lr or check the initialization), and the chain links init-variance and lr-too-low
    where those fire.
Parameters:
    factor (default 100.0): how many times below its early level the late norm must be (two orders of magnitude).
    edge_share (default 0.1): share of the points that forms the early and the late window (at least 5 points).
    converged_share (default 0.1): a loss whose late median is below this share of its early median converged.
    zero_loss (default 0.001): a loss smaller than this in size is ~0 (by design or converged).
    min_warnings (default 3): vanishing-gradient warnings in the log that make a finding on their own.
    min_points (default 20): fewer gradient norms than this are too few to judge.
"""

from __future__ import annotations

import re

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Evidence, Recommendation, Severity, Skipped

FACTOR = 100.0
EDGE_SHARE = 0.1
MIN_EDGE = 5  # points per window at the least
SKIP_FIRST = 2  # the first logged norms carry the init transient
CONVERGED_SHARE = 0.1
ZERO_LOSS = 1e-3
MOSTLY_ZERO = 0.8  # share of exact zeros that makes a window "mostly zero"
MIN_WARNINGS = 3
MIN_POINTS = 20
LR_UP = 2.0  # doubling: a step an optimizer that stalled can take without becoming unstable in most runs
VANISHING_TEXT = re.compile(r"vanish", re.I)


def check(run, params):
    warnings = [e for e in run.events_of("warning") if VANISHING_TEXT.search(e.text or "")]
    grad = stats.grad_norm(run)
    if grad is None:
        if len(warnings) >= params["min_warnings"]:
            return [_from_warnings(run, warnings)]
        return Skipped(DETECTOR.name, "the run logs no gradient norm")
    if grad.unmeasured:
        return Skipped(DETECTOR.name, grad.unmeasured)
    everything = stats.finite(run.series("grad_norm"))
    if len(everything) < params["min_points"]:
        if len(warnings) >= params["min_warnings"]:
            return [_from_warnings(run, warnings)]
        return Skipped(DETECTOR.name, f"only {len(everything)} gradient norms; needs {params['min_points']}")

    n = len(everything)
    edge = max(MIN_EDGE, int(n * params["edge_share"]))
    early = everything.iloc[SKIP_FIRST:SKIP_FIRST + edge]
    late = everything.iloc[-edge:]
    early_nonzero, late_nonzero = early[early > 0], late[late > 0]
    early_zero = float((early == 0).mean())
    late_zero = float((late == 0).mean())
    if not len(early_nonzero):
        return []
    early_level = float(np.median(early_nonzero.to_numpy()))
    late_level = float(np.median(late_nonzero.to_numpy())) if len(late_nonzero) else 0.0
    to_zero = late_zero >= MOSTLY_ZERO and early_zero < 1 - MOSTLY_ZERO
    collapsed = to_zero or (late_level > 0 and early_level / late_level >= params["factor"])
    if not collapsed:
        if len(warnings) >= params["min_warnings"]:
            return [_from_warnings(run, warnings)]
        return []

    loss = stats.train_loss(run)
    if loss is not None:
        values = loss[1]
        m = len(values)
        k = max(MIN_EDGE, int(m * params["edge_share"]))
        loss_early = float(np.median(values.iloc[:k].to_numpy()))
        loss_late = float(np.median(values.iloc[-k:].to_numpy()))
        converged = loss_early > 0 and loss_late < params["converged_share"] * loss_early
        if abs(loss_late) < params["zero_loss"] or converged:
            return []  # a converged (or ~0 by design) loss explains a small gradient
        loss_text = f" while the {loss[0]} is still {stats.fmt_num(loss_late)} (from {stats.fmt_num(loss_early)})"
        confidence = Confidence.HIGH
    else:
        loss_text = " (no loss is logged to tell a stall from convergence)"
        confidence = Confidence.LOW

    start = _first_low_step(everything, early_level, params["factor"])
    if to_zero:
        what = (f"is exactly 0 at {late_zero:.0%} of the last {len(late)} points, from a median of "
                f"{stats.fmt_num(early_level)} early on")
    else:
        what = (f"fell from a median of {stats.fmt_num(early_level)} early on to {stats.fmt_num(late_level)}, "
                f"{early_level / late_level:.0f}x lower")
    message = f"The gradient norm {what}{loss_text}"
    if warnings:
        message += f"; the log warns of vanishing gradients {len(warnings)} times"
    recs = []
    lr = stats.hparam_number(run, "lr") or stats.schedule(run).peak_lr
    if lr:
        recs.append(Recommendation(
            "lr", lr, stats.round_sig(lr * LR_UP),
            f"the gradient norm fell {('to zero' if to_zero else f'{early_level / late_level:.0f}x')} while the loss "
            f"stalled; x{LR_UP:g} the peak lr (from {stats.fmt_num(lr)}) is the first remedy for a stalled optimizer "
            "(if it does not help, check the initialization)"))
    evidence = list(evidence_at(run, "grad_norm", [int(early.index[len(early) // 2]), start]))
    evidence += [Evidence(e.file, e.line, e.text) for e in warnings[:2]]
    return [DETECTOR.finding(
        message + ".", start, int(everything.index[-1]), confidence=confidence,
        metrics={"early_median": early_level, "late_median": late_level, "late_zero_share": round(late_zero, 3),
                 "collapse_factor": round(early_level / late_level, 1) if late_level > 0 else None,
                 "vanishing_warnings": len(warnings)},
        recommendations=recs, evidence=evidence[:5])]


def _first_low_step(series, early_level, factor) -> int:
    """The first step from which the norm stays below early_level / sqrt(factor) (halfway down, in log terms)."""
    low = series.to_numpy() < early_level / np.sqrt(factor)
    stays = np.flip(np.logical_and.accumulate(np.flip(low)))
    idx = np.flatnonzero(stays)
    return int(series.index[idx[0]]) if len(idx) else int(series.index[-1])


def _from_warnings(run, warnings):
    steps = [s for s in stats.event_steps(run, warnings) if s is not None]
    first = min(steps) if steps else None
    return DETECTOR.finding(
        f"The log warns of vanishing gradients {len(warnings)} times"
        + (f", first at step {first}" if first is not None else "") + ".",
        first, max(steps) if steps else None, confidence=Confidence.MEDIUM,
        metrics={"vanishing_warnings": len(warnings)},
        evidence=[Evidence(e.file, e.line, e.text) for e in warnings[:3]])


DETECTOR = Detector(
    code="G002", name="grad-vanishing", severity=Severity.WARNING,
    summary="gradient norm collapsing by orders of magnitude (or to zero) while the loss has not converged",
    doc=__doc__,
    params={"factor": FACTOR, "edge_share": EDGE_SHARE, "converged_share": CONVERGED_SHARE, "zero_loss": ZERO_LOSS,
            "min_warnings": MIN_WARNINGS, "min_points": MIN_POINTS},
    check=check,
)
