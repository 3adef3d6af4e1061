"""Loss divergence: a sustained rise of the training loss far above the lowest level it had reached.

What it detects:
    The training loss climbs well above the lowest level it had reached and stays there for a long stretch (or until
    the log ends), whether the climb was gradual or began with a jump. It is judged on a running median, so single
    spikes that come back are not a divergence (that is loss-spike's job).
Why it matters:
    A loss that ends far above its own minimum means the weights got worse: training is undoing itself (lr too high
    for the current curvature, an instability after a spike, fp16 overflow, corrupted data or state). Every step
    after the onset is wasted and the last checkpoints are worse than earlier ones.
How it decides:
    The log-loss is smoothed by a centred running median over `window_steps` steps (converted to logged points,
    between `min_window` and `max_window`). A point is raised when its smoothed level is more than `min_rise`
    (relative) above the lowest smoothed level before it, and by more than a few rounding steps of the logged
    values. A run of raised points is a divergence when it lasts at least `min_points` logged points and either
    `min_fraction` of the logged steps or until the end of the log. Its onset is the step of the minimum it rose
    from. Severity: critical when the log ends still raised (the run ended diverged), warning when the loss came
    back down later. A rise during the first `min_points` points (before any minimum exists) is not judged.
What it recommends:
    Restart from the last checkpoint before the onset (named when one exists), with the peak lr lowered by x0.5 (the
    usual step after a divergence, e.g. OPT-175B's restarts) and gradient clipping at 1.0 when none is set.
Parameters:
    window_steps (default 500): steps of the running median that smooths the loss.
    min_window (default 5): fewest points in the running median.
    max_window (default 50): most points in the running median.
    min_rise (default 0.25): how far above its previous minimum the smoothed loss must climb (0.25 = +25%).
    min_fraction (default 0.1): shortest divergence that ends before the log does, as a fraction of the steps.
    min_points (default 5): fewest logged points in a divergence.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

WINDOW_STEPS = 500
MIN_WINDOW = 5
MAX_WINDOW = 50
MIN_RISE = 0.25  # +25% above the best level so far: far outside the drift of a healthy loss's running median
MIN_FRACTION = 0.1
MIN_POINTS = 5
QUANTA = 5  # the rise must exceed this many rounding steps (a loss logged as 0.0001 / 0.0002 is not +100%)
LR_FACTOR = 0.5
ONSET_TOLERANCE = 0.2
DEFAULT_CLIP = 1.0


def find_divergence(loss, params) -> dict | None:
    """The longest sustained rise above the running minimum (see the module docs), or None."""
    logs = stats.log_values(loss)
    if logs is None or len(logs) < 2 * params["min_points"]:
        return None
    window = stats.points_for_steps(loss, params["window_steps"], params["min_window"], params["max_window"])
    if not _could_rise(logs, window, math.log1p(params["min_rise"]), params["min_points"]):
        return None
    smooth = stats.rolling_median(logs, window).to_numpy()
    steps = loss.index.to_numpy()
    best_before = np.minimum.accumulate(smooth)
    values = loss.to_numpy()
    quantum = stats.quantum(loss)
    raised = (smooth - best_before > math.log1p(params["min_rise"])) & \
             (np.exp(smooth) - np.exp(best_before) > QUANTA * quantum)
    raised[: params["min_points"]] = False
    span = float(steps[-1] - steps[0]) or 1.0
    best = None
    for a, b in stats.runs_of_true(raised):
        to_end = b == len(values)
        length = steps[b - 1] - steps[a]
        if b - a < params["min_points"] or (not to_end and length < params["min_fraction"] * span):
            continue
        # the climb begins where the smoothed loss last sat near its minimum (within a fifth of the rise
        # threshold): on a flat stretch the exact minimum can lie well before the climb
        near = smooth[:a] <= best_before[a - 1] + ONSET_TOLERANCE * math.log1p(params["min_rise"]) if a else []
        onset = int(np.flatnonzero(near)[-1]) if a else 0
        peak = a + int(np.argmax(smooth[a:b]))
        cand = {"onset": onset, "start": a, "end": b, "peak": peak, "to_end": to_end,
                "minimum": float(math.exp(best_before[a - 1] if a else smooth[0])),
                "peak_level": float(math.exp(smooth[peak])), "final": float(math.exp(smooth[b - 1]))}
        if best is None or (steps[b - 1] - steps[onset]) > (steps[best["end"] - 1] - steps[best["onset"]]):
            best = cand
    return best


def _could_rise(logs, window: int, rise: float, skip: int) -> bool:
    """Whether the running median could climb `rise` above its running minimum anywhere past the first `skip`
    points, from cheap bounds on each window's median: the climb at a point is at most (an upper bound of its
    median) minus (the lowest lower bound so far). On a log that never rises much this settles the question
    without the running median of every point; otherwise the medians are computed."""
    lower, upper = _median_bounds(logs.to_numpy(dtype="float64"), window)
    return bool((upper[skip:] - np.minimum.accumulate(lower)[skip:] > rise).any())


BOUND_GROUP = 5  # a window is cut into groups of 5 points, whose medians bound the window's median


def _median_bounds(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the centred rolling median (`stats.rolling_median`: pandas' centred window of
    `window` points, shrinking at the ends).

    A window of w points cut into G groups of 5 (plus r points left over) holds at most 2 points below the smallest
    group median per group, plus the r others: when 2G + r <= (w - 1) // 2 the window's median is at least the
    smallest group median, and likewise at most the largest. Group medians are rolling medians of 5 points (cheap);
    the minimum over G groups spaced 5 apart takes log2(G) passes. Elsewhere (the shrunk windows at the ends, or
    windows too short to cut) the window's minimum and maximum are the bounds."""
    n = len(x)
    left, right = window // 2, (window - 1) // 2  # pandas' centred window: [i - left, i + right]
    groups = window // BOUND_GROUP
    spare = window - groups * BOUND_GROUP
    i = np.arange(n)
    if groups and 2 * groups + spare <= (window - 1) // 2 and n >= window:
        medians5 = stats.rolling_median_values(x, BOUND_GROUP, BOUND_GROUP)  # median of x[t - 4:t + 1] at t
        first = np.arange(n - window + 1) + BOUND_GROUP - 1  # the first group's median, per full window
        lower_full = _spaced_extreme(medians5, first, groups, np.minimum)
        upper_full = _spaced_extreme(medians5, first, groups, np.maximum)
    else:
        roll = pd.Series(x).rolling(window, min_periods=1)  # trailing windows of the full length
        lower_full = roll.min().to_numpy()[window - 1:] if n >= window else None
        upper_full = roll.max().to_numpy()[window - 1:] if n >= window else None
    # the shrunk windows at the ends: [0, i + right] (prefix extremes) or [i - left, n - 1] (suffix extremes)
    stop = np.minimum(i + right, n - 1)
    lower = np.minimum.accumulate(x)[stop]
    upper = np.maximum.accumulate(x)[stop]
    if n > left:
        lower[left:] = np.minimum.accumulate(x[::-1])[::-1][:n - left]
        upper[left:] = np.maximum.accumulate(x[::-1])[::-1][:n - left]
        if n >= window:  # full windows: [left, n - 1 - right], starting at 0 .. n - window
            lower[left:n - right] = lower_full
            upper[left:n - right] = upper_full
    return lower, upper


def _spaced_extreme(values: np.ndarray, first: np.ndarray, count: int, pick) -> np.ndarray:
    """pick (np.minimum / np.maximum) over values[first + 5k] for k < count, for each first position."""
    spans = [values]  # spans[a][t] = pick over values[t + 5k], k < 2**a
    while 2 ** len(spans) <= count:
        previous, reach = spans[-1], BOUND_GROUP * 2 ** (len(spans) - 1)
        spans.append(pick(previous[:len(previous) - reach], previous[reach:]))
    top = spans[-1]
    reach = BOUND_GROUP * (count - 2 ** (len(spans) - 1))  # two overlapping spans cover the count
    return pick(top[first], top[first + reach])


def check(run, params):
    found = stats.positive_train_loss(run, DETECTOR.name, 2 * params["min_points"], ": no relative rise")
    if isinstance(found, Skipped):
        return found
    metric, loss = found
    div = find_divergence(loss, params)
    if div is None:
        return []
    steps = loss.index.to_numpy()
    onset, last = int(steps[div["onset"]]), int(steps[div["end"] - 1])
    rise = div["peak_level"] / div["minimum"]
    severity = Severity.CRITICAL if div["to_end"] else Severity.WARNING
    ckpt = stats.last_checkpoint_before(run, onset)
    metrics = {"minimum": div["minimum"], "peak_level": div["peak_level"], "final_level": div["final"],
               "rise": rise, "onset_step": onset, "raised_from_step": int(steps[div["start"]]),
               "ended_raised": div["to_end"]}
    restart = ""
    if ckpt is not None:
        restart = f"; restart from {ckpt.path} (step {ckpt.step})"
        metrics.update(restart_checkpoint=ckpt.path, restart_step=ckpt.step)
    ending = ("and the log ends there" if div["to_end"] else f"until step {last}, then came back down")
    message = (f"{metric} rose from its best level {stats.fmt_num(div['minimum'])} (step {onset}) to "
               f"{stats.fmt_num(div['peak_level'])} ({stats.fmt_ratio(rise)}, running median) and stayed raised "
               f"from step "
               f"{int(steps[div['start']])} {ending}{restart}.")
    recs = []
    sched = stats.schedule(run)
    lr = stats.hparam_number(run, "lr") or sched.peak_lr
    where = (f"restart from {ckpt.path} (step {ckpt.step}), before the onset" if ckpt is not None
             else "no checkpoint before the onset was found to restart from")
    if lr:
        recs.append(Recommendation(
            "lr", lr, stats.round_sig(lr * LR_FACTOR, 2),
            f"the loss climbed {stats.fmt_ratio(rise)} above its best level and stayed there: the steps were too "
            f"large for "
            f"the region the weights reached; halving the peak lr is the usual restart setting; {where}"))
    clip = stats.hparam_number(run, "max_grad_norm")
    if clip is None or clip <= 0:
        recs.append(Recommendation(
            "max_grad_norm", clip, DEFAULT_CLIP,
            f"gradient clipping is {'unknown' if clip is None else 'off'}; clipping at 1.0 (the common default) "
            "bounds the updates that push a diverging run further"))
    ev = [onset, int(steps[div["start"]]), int(steps[div["peak"]]), last]
    return [DETECTOR.finding(message, onset, last, severity=severity, confidence=Confidence.HIGH,
                             metrics=metrics, recommendations=recs,
                             evidence=evidence_at(run, metric, list(dict.fromkeys(ev))))]


DETECTOR = Detector(
    code="L004", name="loss-divergence", severity=Severity.CRITICAL,
    summary="a sustained rise of the training loss far above the best level it had reached",
    doc=__doc__,
    params={"window_steps": WINDOW_STEPS, "min_window": MIN_WINDOW, "max_window": MAX_WINDOW,
            "min_rise": MIN_RISE, "min_fraction": MIN_FRACTION, "min_points": MIN_POINTS},
    check=check, requires=("loss", "lm_loss"),
)
