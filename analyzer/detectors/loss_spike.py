"""Loss spike: a sudden, large, short rise of the training loss far above its recent robust level.

What it detects:
    A training loss point that jumps far above the local level of the loss within a few logged points: far in units
    of the loss's own point-to-point noise AND by a large relative amount. Each spike is followed until the loss
    returns near its pre-spike level (recovered, with the number of steps it took) or the log ends first
    (persistent). A gradient-norm spike at or just before the loss spike is reported with it when grad_norm is
    logged.
Why it matters:
    A spike throws away progress (the steps after it re-learn what was lost), often marks a bad batch or an
    optimizer instability (Adam's second-moment estimate lags a sudden gradient), and a spike that does not recover
    turns into a divergence. Large runs restart from a checkpoint before the spike and skip the batches around it
    (PaLM skipped ~200-500 batches), lower the lr, or clip gradients harder.
How it decides:
    On the log of the loss (a +50% rise means the same at loss 2 and loss 20), each point is compared with the level
    BEFORE it, so a spike never raises its own baseline: the median of the 5 points before it (a longer median would
    lag a falling loss; 5 points ignore up to two odd ones). Noise is the robust std of successive differences of
    the log-loss over the 2 x `window_steps` steps before it (converted to logged points: twice a count between
    `min_window` and `max_window`), never below `noise_floor` nor, on logs of 20+ points, below 70% of the whole
    run's noise. A point is a spike when it is at least `z` noise units AND `min_rise` (relative) above that level,
    more than a few rounding steps of the logged values above it (a loss printed as 0.0001 / 0.0002 is not spiking),
    and the rise is sudden: the point before it was less than half as far up. Each segment between restarts is
    judged on its own (a resumed job is not compared with the process before it). This is stricter than Lightning
    Fabric's SpikeDetection (2x a running mean) or llm-foundry's KillLossSpike (2x the mean of 100 steps) on noisy
    runs and more sensitive on smooth ones; Megatron's "10x the max so far" misses all but catastrophic spikes. The
    spike has recovered at the first later point within max(2 noise units, `min_rise`/2) of the pre-spike level
    (where that point follows a gap of 10+ logging intervals, the message says the log skipped the return instead
    of naming a recovery time); if the log ends first, or the loss turns NaN/Inf (the message names the step), it
    is persistent (critical once it has lasted `persist_points` points: a loss that does not come back is a
    divergence, not a blip). A window-averaged log (HF Trainer averages the loss over the logging window) still
    shows a large spike as one raised point; the message says the per-step peak was higher. Losses that can be <= 0
    (RL objectives) are skipped.
What it recommends:
    Restart from the last checkpoint saved before the spike (named when one exists) and skip the batches around it;
    clip gradients as every stability detector suggests (remedies.clip: the p99 of the run's healthy gradient
    norms, 1.0 when too few are logged or the current clip is unknown and the p99 is above 1; nothing when the
    current clip is already that tight); and lower
    the peak `lr` (x0.5 for a persistent spike or a rise of 1.5x or more, else x0.7), as seed 003 (2e-5 -> 1e-5) and
    OPT-175B did.
Parameters:
    window_steps (default 500): steps of history (doubled) for the noise estimate, converted to logged points.
    min_window (default 3): fewest points before a point is judged, and the smallest noise window (sparse logs).
    max_window (default 50): the largest noise window, in logged points before doubling (dense logs).
    z (default 6.0): how many noise units above the local level a spike must reach.
    min_rise (default 0.3): how far above the local level a spike must reach, relative (0.3 = +30%).
    noise_floor (default 0.01): smallest noise assumed, in log-loss units (1%), for very smooth or rounded logs.
    persist_points (default 3): logged points a non-recovered spike must last to be called persistent (critical).
    grad_factor (default 5.0): a grad-norm point this many times its running median before the rise (the same
        median grad-explosion quotes: stats.median_before) counts as a grad-norm spike.
    max_findings (default 5): most spikes reported (the largest, in step order).
    min_points (default 10): fewest finite loss points needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from analyzer.detectors import remedies, stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

WINDOW_STEPS = 500  # a few hundred steps: long enough for a stable median, short enough to follow the curve
MIN_WINDOW = 3  # sparse logs (every 100+ steps, excerpts) still get a baseline of a few points
MAX_WINDOW = 50  # dense logs: 50 points give a median within ~2% of the true level at 10% noise
Z = 6.0  # six robust noise units: ~1e-9 for Gaussian noise, so noise alone never makes a spike
MIN_RISE = 0.3  # +30% above the level: smaller jumps are ordinary on small-batch runs
NOISE_FLOOR = 0.01  # 1% in log units: logs rounded to 4 digits or very smooth curves must not make tiny rises big
PERSIST_POINTS = 3  # a spike that ends the log after 1-2 points may just be where the log stops
GRAD_FACTOR = 5.0  # grad-norm spikes are large: x5 the median is well outside ordinary grad-norm noise
MAX_FINDINGS = 5
MIN_POINTS = 10
UNSEEN_GAP = 10  # a gap of 10+ logging intervals before the recovered point: the log did not see the recovery
LEVEL_POINTS = 5  # the immediate pre-spike level: a median of 5 points ignores up to two odd ones
SUDDEN_FRACTION = 0.5  # the point before a spike was less than this fraction of the way up: the rise is sudden
RECOVER_NOISE_UNITS = 2.0
GLOBAL_NOISE_POINTS = 20
GLOBAL_NOISE_SHARE = 0.7  # a local noise estimate below 70% of the run's is more likely sampling luck than calm
NOISE_WINDOW_FACTOR = 2
QUANTA = 5  # a spike rises more than this many rounding steps of the logged values
MIN_GRAD_HISTORY = 3  # fewest grad-norm points before a rise for their median to be a level
LR_FACTOR_LARGE = 0.5  # halve the lr after a persistent or large spike (seed 003, OPT-175B practice)
LR_FACTOR_SMALL = 0.7
LARGE_RATIO = 1.5


@dataclass(frozen=True)
class Spike:
    """One spike, in the loss's own numbering: where it began, its peak, and where (if) it came back."""

    start: int  # position in the series of the first raised point
    peak: int  # position of the highest point
    end: int | None  # position of the first recovered point; None when the log ends first
    level: float  # pre-spike level (loss units)
    noise: float  # log-loss noise used
    before: int | None  # position of the last point before the spike

    def ratio(self, values: np.ndarray) -> float:
        return float(values[self.peak] / self.level)


def find_spikes(loss: pd.Series, params) -> list[Spike]:
    """Every sudden rise of a positive loss series, with its recovery (see the module docs)."""
    return stats.cached(loss, ("find_spikes", stats.params_key(params)), lambda: _find_spikes(loss, params))


def _find_spikes(loss: pd.Series, params) -> list[Spike]:
    logs = stats.log_values(loss)
    if logs is None or len(logs) < 3:
        return []
    x = logs.to_numpy()
    n = len(x)
    window = stats.points_for_steps(loss, params["window_steps"], params["min_window"], params["max_window"])
    # the level right before a point: a short trailing median, so a falling curve does not leave it behind
    # (a 50-point median lags a decreasing loss and hides part of the rise); the noise uses the long window
    level = stats.trailing_level(logs, LEVEL_POINTS, min(params["min_window"], LEVEL_POINTS)).to_numpy()
    # the whole series' noise guards a quiet local window on a long log; on a short one the spike itself
    # would dominate it
    global_noise = stats.loss_noise_cv(loss) if n >= GLOBAL_NOISE_POINTS else 0.0  # noise_std of x
    excess = np.nan_to_num(x - level, nan=-np.inf)
    rise = math.log1p(params["min_rise"])
    # a point is raised when it clears both max(z x noise, rise) and a few rounding steps of the logged values
    # (a loss printed as 0.0001 / 0.0002 is not spiking); the threshold is never below `rise`, so the local noise
    # is needed only where the excess reaches that
    maybe = excess >= rise
    maybe &= loss.to_numpy() - np.exp(np.nan_to_num(level, nan=np.inf)) > QUANTA * stats.quantum(loss)
    candidates = np.flatnonzero(maybe)
    # the noise needs more points than a level: a median of 50 |differences| still errs by ~20%
    local = stats.trailing_noise_at(logs, candidates, NOISE_WINDOW_FACTOR * window,
                                    min_periods=min(params["min_window"], window))
    noise = np.full(n, np.nan)
    noise[candidates] = np.fmax(np.nan_to_num(local, nan=0.0),
                                max(params["noise_floor"], GLOBAL_NOISE_SHARE * global_noise))
    raised = np.zeros(n, dtype=bool)
    raised[candidates] = excess[candidates] >= np.fmax(params["z"] * noise[candidates], rise)
    spikes: list[Spike] = []
    candidates = np.flatnonzero(raised)
    while len(candidates):
        s = int(candidates[0])
        lvl, nse = level[s], noise[s]
        prev_excess = x[s - 1] - lvl if s > 0 else 0.0
        band = max(RECOVER_NOISE_UNITS * nse, math.log1p(params["min_rise"] / 2))
        after = x[s + 1:] - lvl
        back = np.flatnonzero(after <= band)
        end = s + 1 + int(back[0]) if len(back) else None
        stop = end if end is not None else n
        peak = s + int(np.argmax(x[s:stop]))
        if prev_excess < SUDDEN_FRACTION * (x[peak] - lvl):
            spikes.append(Spike(start=s, peak=peak, end=end, level=float(math.exp(lvl)), noise=float(nse),
                                before=s - 1 if s > 0 else None))
        i = stop
        candidates = candidates[candidates >= max(i, s + 1)]
    return spikes


def check(run, params):
    found = stats.positive_train_loss(run, DETECTOR.name, params["min_points"], ": no relative level")
    if isinstance(found, Skipped):
        return found
    metric, loss = found
    # each segment (one process between restarts) has its own baseline
    pieces = stats.segment_series(run, metric) or [loss]
    spikes = [(piece, sp) for piece in pieces for sp in find_spikes(piece, params)]
    if not spikes:
        return []
    largest = sorted(spikes, key=lambda ps: -ps[1].ratio(ps[0].to_numpy()))[: params["max_findings"]]
    chosen = sorted(largest, key=lambda ps: int(ps[0].index[ps[1].start]))
    measured = stats.grad_norm(run)
    grad = measured.values if measured is not None and not measured.unmeasured else None
    sched = stats.schedule(run)
    averaged = stats.window_averaged(run)
    return [_finding(run, metric, piece, sp, grad, sched, averaged, len(spikes), params) for piece, sp in chosen]


def _finding(run, metric, loss, sp: Spike, grad, sched, averaged, total, params):
    values = loss.to_numpy()
    steps = loss.index.to_numpy()
    onset, peak_step = int(steps[sp.start]), int(steps[sp.peak])
    peak_value = float(values[sp.peak])
    ratio = peak_value / sp.level
    persistent = sp.end is None
    lasted = (len(values) - sp.start) if persistent else (sp.end - sp.start)
    metrics = {"level_before": sp.level, "peak": peak_value, "ratio": ratio, "peak_step": peak_step,
               "noise_units": (math.log(ratio)) / sp.noise if sp.noise else None, "spikes_total": total}
    if persistent:
        severity = Severity.CRITICAL if lasted >= params["persist_points"] else Severity.WARNING
        last_step = int(steps[-1])
        recovery = (f"and has not come back by the last logged step {last_step}" if severity is Severity.CRITICAL
                    else f"and the log ends {lasted} point(s) later, before it could recover")
        went_nonfinite = _nonfinite_next(run, metric, last_step)
        if went_nonfinite is not None:
            # the finite points end here but the log does not: the loss overflowed (nonfinite-onset reports it)
            recovery = f"and went non-finite at step {went_nonfinite}, the next logged point, without coming back"
            metrics["nonfinite_step"] = went_nonfinite
        metrics["recovered"] = False
    else:
        severity = Severity.WARNING
        last_step = int(steps[sp.end])
        last_raised = int(steps[sp.end - 1])
        if last_step - last_raised > UNSEEN_GAP * stats.log_interval(loss):
            # the log skips the return: say what was seen, not a recovery time nobody measured
            recovery = (f"and was still raised at step {last_raised}; the log then skips {last_step - last_raised} "
                        f"steps and is back near its level at step {last_step}, the next logged point")
            metrics.update(recovered=True, last_raised_step=last_raised)
        else:
            recovery = f"and was back near its level at step {last_step}, {last_step - onset} steps later"
            metrics.update(recovered=True, recovery_steps=last_step - onset)

    grad_text, grad_peak_step = "", None
    if grad is not None and len(grad):
        prev_step = int(steps[sp.before]) if sp.before is not None else onset - 1
        near = grad[(grad.index > prev_step - 1) & (grad.index <= peak_step)]
        if len(near):
            gmax, at = float(near.max()), int(near.idxmax())
            since = _grad_rise_start(grad, at, prev_step)
            level = stats.median_before(grad, since)
            if level is not None and level[1] >= MIN_GRAD_HISTORY and level[0] > 0 \
                    and gmax >= params["grad_factor"] * level[0]:
                median, points = level
                grad_peak_step = at
                grad_text = (f"; grad_norm spiked to {stats.fmt_num(gmax)} at step {grad_peak_step}, "
                             f"{stats.fmt_times(gmax / median)} its running median ({stats.fmt_num(median)} over the "
                             f"{points} logged points before step {since})")
                metrics.update(grad_norm_peak=gmax, grad_norm_median=median, grad_norm_median_points=points,
                               grad_norm_median_before=since, grad_norm_step=grad_peak_step)

    ckpt = stats.last_checkpoint_before(run, onset - 1)
    restart = ""
    if ckpt is not None:
        restart = f"; restart from {ckpt.path} (step {ckpt.step}, {onset - ckpt.step} steps before it)"
        metrics.update(restart_checkpoint=ckpt.path, restart_step=ckpt.step)
    averaged_text = (" (a mean over the logging window: the per-step peak was higher)" if averaged else "")
    message = (f"{metric} jumped from a level of {stats.fmt_num(sp.level)} to {stats.fmt_num(peak_value)} "
               f"({stats.fmt_ratio(ratio)}) at step {onset}{averaged_text} {recovery}{grad_text}{restart}.")

    recs = _recommendations(run, sp, onset, ratio, persistent, grad, sched, ckpt)
    ev_steps = [s for s in ([int(steps[sp.before])] if sp.before is not None else []) + [onset]]
    if peak_step != onset:
        ev_steps.append(peak_step)
    if not persistent:
        ev_steps.append(last_step)
    evidence = list(evidence_at(run, metric, ev_steps, limit=4))
    if grad_peak_step is not None:
        evidence += list(evidence_at(run, "grad_norm", [grad_peak_step], limit=1))
    confidence = Confidence.HIGH if metrics["noise_units"] and metrics["noise_units"] >= 2 * params["z"] else \
        Confidence.MEDIUM
    return DETECTOR.finding(message, onset, last_step, severity=severity, confidence=confidence, metrics=metrics,
                            recommendations=recs, evidence=evidence[:5])


def _nonfinite_next(run, metric: str, step: int) -> int | None:
    """The step of the next logged point after `step` when that point is NaN/Inf, else None."""
    raw = run.series(metric)
    later = raw[raw.index > step]
    if not len(later) or np.isfinite(float(later.iloc[0])):
        return None
    return int(later.index[0])


def _grad_rise_start(grad: pd.Series, at: int, prev_step: int) -> int:
    """The step a grad-norm rise through `at` began: the start of grad-explosion's excursion that holds it, so both
    findings quote the same median for the same event; else the loss's last point before the spike."""
    position = int(np.searchsorted(grad.index.to_numpy(), at))
    for start, end in stats.unhealed_spans(grad, stats.excursions(grad)):
        if start <= position < end:
            return int(grad.index[start])
    return prev_step


def _recommendations(run, sp, onset, ratio, persistent, grad, sched, ckpt):
    recs = []
    where = (f"restart from {ckpt.path} (step {ckpt.step}) and skip the batches between it and step {onset} "
             "(PaLM skipped ~200-500 batches around spikes)" if ckpt is not None
             else "no checkpoint before the spike was found to restart from")
    # the clip value every detector suggests: the healthy p99 (else 1.0), derived once in remedies
    clip = remedies.clip(run, stats.healthy_grad_norms(run) if grad is not None else None,
                         f"the loss rose {stats.fmt_ratio(ratio)} at step {onset}")
    if clip is not None:
        recs.append(replace(clip, rationale=f"{clip.rationale}; {where}"))
    lr = stats.hparam_number(run, "lr") or sched.peak_lr
    if lr:
        factor = LR_FACTOR_LARGE if persistent or ratio >= LARGE_RATIO else LR_FACTOR_SMALL
        at = sched.lr_at(onset)
        at_text = f" (lr {stats.fmt_num(at)} at the spike)" if at else ""
        recs.append(Recommendation(
            "lr", lr, stats.round_sig(lr * factor, 2),
            f"the loss rose {stats.fmt_ratio(ratio)} within one logging interval{at_text}; a x{factor} lower peak lr "
            f"lowers the size of the update a bad batch can make, as OPT-175B's restarts did"
            + ("" if recs else f"; {where}")))
    return recs


DETECTOR = Detector(
    code="L001", name="loss-spike", severity=Severity.WARNING,
    summary="a sudden, large, short rise of the training loss above its robust recent level",
    doc=__doc__,
    params={"window_steps": WINDOW_STEPS, "min_window": MIN_WINDOW, "max_window": MAX_WINDOW, "z": Z,
            "min_rise": MIN_RISE, "noise_floor": NOISE_FLOOR, "persist_points": PERSIST_POINTS,
            "grad_factor": GRAD_FACTOR, "max_findings": MAX_FINDINGS, "min_points": MIN_POINTS},
    check=check, requires=("loss", "lm_loss"),
)
