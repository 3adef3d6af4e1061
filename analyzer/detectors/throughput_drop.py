"""Throughput drop: training speed (steps/s, tokens/s, samples/s, TFLOPs, time per iteration) falls and stays low.

What it detects:
    A lasting fall of the training speed to a lower level: seed 003's 1.0 -> 0.6 steps/s after the loss spike
    (memory thrashing), BLOOM-176B's 149 -> 141-142 TFLOPs. Single slow steps (an evaluation, a checkpoint save, a
    garbage-collection pause) are not a drop. Where no speed is logged, the speed is read off the time the logger
    wrote with each point (TensorBoard, MLflow, W&B, a timestamp column).
Why it matters:
    A slower run costs more for the same result, and a sudden lasting slowdown has a cause worth finding: memory
    pressure or swapping, a debugging switch left on (autograd anomaly detection), a throttled or failing device, a
    data loader that fell behind, a slower node joining the job.
How it decides:
    Uses the first of TFLOPs (or MFU), tokens_per_s, samples_per_s, steps_per_s logged for training (work per second
    first: steps/s also falls when the batch grows, e.g. Megatron's batch-size ramp-up; steps/s is multiplied by a
    logged global_batch_size that changes); failing those, a time per iteration (elapsed ms per iteration, step
    time, dt), inverted to a rate; failing those, steps/s from the clock of the logged points (`wall_time`: the
    time TensorBoard, MLflow, W&B or a table's timestamp column wrote with each training-loss point). There the
    seconds per step are the gap between successive readings divided by the steps between them (logging every N
    steps is no slowdown), within one restart segment and one rank (a resumed job's downtime and another process's
    clock are no gap); a gap that is not positive is no value. An evaluation or a checkpoint save between two
    readings makes one slow point, which the medians below ignore; a slow start (compilation, warm-up) is a rise,
    never a drop. Readings a median of less than `min_clock_gap` apart are not judged: over a few milliseconds the
    clock times Python, the OS scheduler and the timestamp's rounding (MLflow writes whole milliseconds), not the
    training step. The strongest level shift is found by comparing, at every point, the median of the `window`
    points before it with the median of the `window` points from it on (medians ignore single slow steps);
    `window` is a sixth of the points, between `min_window` and `max_window`. The shift is a drop when the new level
    is at least `min_drop` (relative) below the old one and at least `noise_units` times the speed's own relative
    point-to-point noise below it, and the speed then stays low: the median of everything after the shift is still
    below the midpoint of the two levels and the last `window` points are too. The drop is placed where the run of
    points at the new level leading to the shift begins (a new level that keeps drifting down would move the
    medians' choice late, past the log line that explains it). The series is cut at restarts (a resumed job may
    run on other hardware), and each piece is judged alone. Severity: warning for a drop of `big_drop` or more;
    info below that (BLOOM's -5% TFLOPs).
What it recommends:
    Nothing numeric: the fix depends on the cause. The message names what else happened at that step (a loss spike,
    a warning line in the log), with the log lines as evidence; the report links a loss spike to it.
Parameters:
    min_drop (default 0.04): smallest relative fall of the speed level that counts (4%).
    big_drop (default 0.3): relative fall from which the drop is a warning (wall-clock rates on a shared
        machine swing by ~20% without anything being wrong).
    noise_units (default 4.0): the fall must exceed this many robust point-to-point noise units.
    min_window (default 3): fewest points on each side of the shift.
    max_window (default 50): most points on each side of the shift.
    min_clock_gap (default 0.05): seconds; the clock of the logged points is judged only where its readings are
        at least this far apart (median), so that a millisecond of jitter is at most 2% of a gap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Evidence, Severity, Skipped
from analyzer.run import CLOCK_METRIC as CLOCK  # the time each training-loss point was written

MIN_DROP = 0.04  # 4%: BLOOM-176B's 149 -> 141 TFLOPs on a metric that otherwise varies by 0.1%
BIG_DROP = 0.3  # seed 003 lost 40%; wall-clock rates on a shared machine swing by ~20%
NOISE_UNITS = 4.0
MIN_WINDOW = 3
MAX_WINDOW = 50
WINDOW_SHARE = 6  # the comparison window is a sixth of the points
# Work-normalised rates first: steps/s also falls when the batch grows (Megatron's batch-size ramp-up).
RATE_METRICS = ("tflops", "tflops_per_gpu", "mfu", "tokens_per_s", "samples_per_s", "samples_per_second",
                "steps_per_s")
# Times per iteration, in the names loggers give them (time_this_iter_s: Ray Tune's).
TIME_METRIC = re.compile(r"^(elapsed_time_per_iteration(_ms|_s)?|iteration_time|iter_time|time_per_(step|iter|"
                         r"iteration)(_ms|_s)?|step_time(_ms|_s)?|dt(_ms)?|train_step_time|time_this_iter_s)$")
MIN_CLOCK_GAP = 0.05  # seconds: a 1 ms jitter or timestamp rounding is 2% of such a gap
EVENT_NEAR = 2  # events within this many logging intervals before the shift are named
MAX_QUOTE = 120  # characters of a log line quoted in the message; the finding's evidence cites the whole line


@dataclass(frozen=True)
class Speed:
    """The training speed this detector judges (and the report plots): higher is faster."""

    metric: str  # the logged metric it comes from, or wall_time for steps/s from the clock of the logged points
    label: str  # what the values are, for a plot's axis
    series: pd.Series  # finite, positive, indexed by step
    inverted: bool  # 1 / a time per iteration


def speed(run) -> Speed | None:
    """The run's training speed, from the first source logged: a rate (work per second first), a time per
    iteration (inverted), else the clock of the logged points; None when there is none."""
    for name in RATE_METRICS:
        if run.has(name):
            series = stats.finite(run.series(name))
            series = series[series > 0]
            if len(series):
                rate = _per_sample(run, name, series)
                label = "samples/s (steps/s x global batch)" if rate is not series else name.replace("_per_s", "/s")
                return Speed(name, label, rate, False)
    for name in run.metrics:
        if TIME_METRIC.match(name):
            series = stats.finite(run.series(name))
            series = series[series > 0]
            if len(series):
                return Speed(name, f"steps/s (1 / {name})", _per_sample(run, "steps_per_s", 1.0 / series), True)
    if run.has(CLOCK):
        rate = clock_rate(run)
        if len(rate):
            return Speed(CLOCK, "steps/s from the clock (wall_time)", _per_sample(run, "steps_per_s", rate), False)
    return None


def clock_gap(run) -> float:
    """Median seconds between successive readings of the clock (positive gaps within a segment); 0.0 without."""
    gaps = [np.diff(s.to_numpy(dtype="float64")) for s in stats.segment_series(run, CLOCK)]
    gaps = np.concatenate(gaps) if gaps else np.zeros(0)
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if len(gaps) else 0.0


def clock_rate(run) -> pd.Series:
    """Steps per second between successive readings of the run's clock, at the step of the later reading.

    Each restart segment on its own (the gap across a resume is downtime, not training), one rank (Run's rule:
    the lowest); the steps between readings divide the gap (logging every N steps). A gap that is not positive (a
    repeated step, a clock that went back, a reading rounded to the same millisecond) is no value. Where a later
    segment starts, it replaces the earlier ones from its first step on, as newer points do in `Run.series`.
    """
    parts: list[pd.Series] = []
    for segment in stats.segment_series(run, CLOCK):
        steps = segment.index.to_numpy(dtype="int64")
        seconds, gaps = np.diff(segment.to_numpy(dtype="float64")), np.diff(steps)
        ok = (seconds > 0) & (gaps > 0)
        parts = [p[p.index < steps[0]] for p in parts]
        parts.append(pd.Series(gaps[ok] / seconds[ok], index=pd.Index(steps[1:][ok], name="step"), name=CLOCK))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.Series([], dtype="float64", index=pd.Index([], dtype="int64", name="step"), name=CLOCK)
    return pd.concat(parts).sort_index(kind="stable") if len(parts) > 1 else parts[0]


def check(run, params):
    found = speed(run)
    if found is None:
        return Skipped(DETECTOR.name, "the run logs no training speed (steps/s, tokens/s, TFLOPs or step time)")
    metric, rate, inverted = found.metric, found.series, found.inverted
    if metric == CLOCK:
        gap = clock_gap(run)
        if gap < params["min_clock_gap"]:
            return Skipped(DETECTOR.name, f"the run logs no training speed, and its clock readings (wall_time) are "
                                          f"{stats.fmt_num(gap)} s apart: too close to time training (needs "
                                          f"{stats.fmt_num(params['min_clock_gap'])} s)")
    if len(rate) < 2 * params["min_window"]:
        what = "intervals between wall_time readings" if metric == CLOCK else f"{metric} points"
        return Skipped(DETECTOR.name, f"only {len(rate)} {what}; needs {2 * params['min_window']}")
    best = None
    for segment in _segments(rate, stats.restart_steps(run)):
        found_drop = _drop(segment, params)
        if found_drop is not None and (best is None or found_drop[1] > best[1]):
            best = found_drop
    if best is None:
        return []
    shift, drop, noise, _ = best
    severity = Severity.WARNING if drop >= params["big_drop"] else Severity.INFO
    before, after = (1 / shift.before, 1 / shift.after) if inverted else (shift.before, shift.after)
    interval = stats.log_interval(rate)
    near = [e for e in run.events if e.step is not None
            and shift.step - EVENT_NEAR * interval <= e.step <= shift.step + interval]
    context = ""
    spike = _loss_jump_near(run, shift.step, interval)
    if spike is not None:
        context = f"; the loss jumped at step {spike} just before"
    if near:
        context += f"; the log says at step {near[0].step}: \"{_quoted(near[0].text)}\""
    if metric == CLOCK:
        change = (f"steps/s from the clock of the logged points (wall_time) fell from {stats.fmt_num(before)} to "
                  f"{stats.fmt_num(after)}")
    elif inverted:
        change = f"{metric} rose from {stats.fmt_num(before)} to {stats.fmt_num(after)}"
    else:
        change = f"{metric} fell from {stats.fmt_num(before)} to {stats.fmt_num(after)}"
    message = (f"training speed fell {drop:.0%} at step {shift.step} ({change}) and stayed low to the end of the "
               f"log{context}.")
    metrics = {"metric": "steps_per_s" if metric == CLOCK else metric, "before": before, "after": after,
               "drop": drop, "noise": float(np.expm1(noise)), "shift_step": shift.step}
    if metric == CLOCK:
        metrics["source"] = "wall_time (the clock of the logged points)"
    steps = rate.index.to_numpy()
    steps = steps[steps >= shift.step]
    ev_steps = [shift.step, int(steps[-1])]
    evidence = list(evidence_at(run, metric, ev_steps))
    evidence += [Evidence(e.file, e.line, e.text) for e in near[:2]]
    return [DETECTOR.finding(message, shift.step, int(steps[-1]), severity=severity, confidence=Confidence.HIGH,
                             metrics=metrics, evidence=evidence[:5])]


def _per_sample(run, name: str, series: pd.Series) -> pd.Series:
    """Steps per second times the logged global batch size, where the batch changes during the run."""
    if name != "steps_per_s" or not run.has("global_batch_size"):
        return series
    batch = stats.finite(run.series("global_batch_size"))
    batch = batch[batch > 0]
    if batch.nunique() < 2:
        return series
    sizes = batch.reindex(batch.index.union(series.index)).ffill().bfill()[series.index]
    return series * sizes.to_numpy()


def _segments(speed: pd.Series, restarts: list[int]) -> list[pd.Series]:
    """The speed series cut at restarts: a resumed job may run on other hardware or settings, so a change of
    speed across a restart is a change of setup, not a drop."""
    cuts = [s for s in restarts if speed.index[0] < s <= speed.index[-1]]
    edges = [speed.index[0]] + cuts + [speed.index[-1] + 1]
    return [speed[(speed.index >= a) & (speed.index < b)] for a, b in zip(edges[:-1], edges[1:])]


def _drop(speed: pd.Series, params):
    """(shift, relative drop, log noise, window) of a lasting fall of one segment's speed, or None."""
    n = len(speed)
    window = int(np.clip(n // WINDOW_SHARE, params["min_window"], params["max_window"]))
    if n < 2 * window:
        return None
    shift = stats.level_shift(speed, window, direction="down")
    if shift is None or shift.before <= 0 or n - shift.index < window:
        return None
    drop = 1.0 - shift.after / shift.before
    noise = stats.noise_std(np.log(speed.to_numpy()))
    values = speed.to_numpy()
    mid = 0.5 * (shift.before + shift.after)
    stays = np.median(values[shift.index:]) < mid and np.median(values[-window:]) < mid
    if drop < params["min_drop"] or -np.log1p(-drop) < params["noise_units"] * noise or not stays:
        return None
    # The medians pick the point where the old window is cleanest, which a slow drift of the new level pushes late:
    # the drop began where the run of points at the new level (within the midpoint's distance of it, on a log
    # scale, so a single stall before it is not its start) that leads to it began.
    before_it = values[:shift.index]
    elsewhere = np.flatnonzero((before_it > mid) | (before_it < shift.after * shift.after / mid))
    start = int(elsewhere[-1]) + 1 if len(elsewhere) else shift.index
    if start < shift.index:
        shift = replace(shift, step=int(speed.index[start]), index=start)
    return shift, drop, noise, window


def _quoted(text: str) -> str:
    """A log line short enough for a message, cut at a word with a mark, never mid-word as if it ended there."""
    text = " ".join(text.split())
    if len(text) <= MAX_QUOTE:
        return text
    return text[:MAX_QUOTE].rsplit(" ", 1)[0] + " …"


def _loss_jump_near(run, step: int, interval: float) -> int | None:
    """The step of a loss rise of 30%+ over its previous point within a few intervals before `step`, if any."""
    found = stats.train_loss(run)
    if found is None:
        return None
    _, loss = found
    near = loss[(loss.index >= step - 3 * max(interval, 1)) & (loss.index <= step)]
    prev = loss.shift(1)[near.index]
    jumped = near[(near > 1.3 * prev) & (prev > 0)]
    return int(jumped.index[0]) if len(jumped) else None


DETECTOR = Detector(
    code="P001", name="throughput-drop", severity=Severity.WARNING,
    summary="training speed (steps/s, tokens/s, TFLOPs) falls and stays low",
    doc=__doc__,
    params={"min_drop": MIN_DROP, "big_drop": BIG_DROP, "noise_units": NOISE_UNITS, "min_window": MIN_WINDOW,
            "max_window": MAX_WINDOW, "min_clock_gap": MIN_CLOCK_GAP},
    check=check,
)
