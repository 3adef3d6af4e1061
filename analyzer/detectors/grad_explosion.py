"""grad-explosion: the gradient norm far above its own robust baseline, sustained or harmful, or far above the clip.

What it detects:
    A gradient norm (before clipping) that rises far above its own recent level and stays there, comes back again
    and again, or drags the loss up with it; or one that sits at many times the clip threshold for the whole run
    (seed 000's diagnostic: norms of ~87 against a clip of 1.0, where the production pipeline gave ~20).
Why it matters:
    Exploding gradients make updates that overshoot: the loss spikes, the fp16 loss scale collapses, and weights
    reach NaN (seed 002's path). A clip threshold far below the norm on every step means every update is rescaled,
    so the real step size is lr x clip / norm, not the lr: the cause (wrong labels, a loss term multiplied by T^2,
    too high an lr) should be fixed rather than clipped.
How it decides:
    On the log of the non-zero norm, each point is compared with the rolling median of the `window` points before
    it (robust: a spike never raises its own baseline). An excursion is a stretch of points above half `factor`
    times their baseline that reaches `factor` times it somewhere, and lasts until the norm is back under half
    `factor` times the median before it; excursions during the lr warmup are left out. Messages and metrics quote
    the peak against that median before the excursion (stats.median_before, which loss-spike quotes too).
    An excursion is harmful when at least `sustain_points` of its points are above `factor` times the baseline
    (sustained), when the norm has not come back by the end of the run, when the loss rises by `loss_jump` during
    it, or when at least `repeat_episodes` excursions fall within one window; such an excursion is a warning.
    Spikes that come back at once while the loss keeps its course are normal (large-batch outliers, a norm that
    wobbles up before the fp16 scaler catches an overflow) and are info at most.
    When max_grad_norm is known, a median norm of at least `clip_factor` times it over the run (after the first
    tenth) is a warning too. A norm that is exactly 0 on most points while the loss changes is not measured
    (Megatron prints `grad norm: 0.000`): the detector is skipped. Where per-layer gradient norms are logged, the
    first/last layer ratio at the peak is reported (AutoTrainer flags > 70).
What it recommends:
    max_grad_norm near the p99 of the healthy (non-excursion) norms, unless clipping is already that tight, and the
    peak lr halved, with the numbers; for a norm held at many times the clip threshold, finding the cause (the
    chain links mlm-label-ratio, distill-temperature-blowup, lr-too-high) rather than more clipping.
Parameters:
    window (default 50): points in the trailing robust baseline.
    factor (default 10.0): a point at least this many times its baseline is part of an excursion.
    sustain_points (default 3): points above `factor` x baseline that make an excursion sustained.
    repeat_episodes (default 3): excursions within one window that count as repeated.
    loss_jump (default 1.2): a rise of the loss by this factor during an excursion makes it harmful.
    clip_factor (default 20.0): a median norm this many times max_grad_norm is an explosion held down by clipping.
    min_points (default 10): fewer non-zero finite norms than this are too few to judge.
"""

from __future__ import annotations

import math
import re

import numpy as np

from analyzer.detectors import remedies, stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Severity, Skipped

WINDOW = 50  # trailing points: long enough to ignore a burst, short enough to follow the norm's slow decay
MIN_PERIODS = 10  # a baseline from fewer points is not a baseline (and init transients settle by then)
FACTOR = 10.0  # an order of magnitude: healthy large-batch outliers reach 5-17x (hf_star: 28-82 vs median 4.8)
SUSTAIN_POINTS = 3
REPEAT_EPISODES = 3
LOSS_JUMP = 1.2  # a 20% rise of the loss while the norm is up
CLIP_FACTOR = 20.0  # pre-clip norms of 1-5x the clip are common in healthy runs; 20x is not
MIN_POINTS = 10
EARLY_SHARE = 0.1  # the first tenth of a run (init transients) is left out of the clip comparison
LOOKBACK = 20  # points before an excursion whose median is the loss level it is compared with
LAYER_NORM = re.compile(r"grad_norm[/_.:]?(?:layer|layers|block|h)?[/_.:]?(\d+)$|(?:layer|layers|block|h)[/_.:]?(\d+)"
                        r"[/_.:]grad_norm$", re.I)


def check(run, params):
    grad = stats.grad_norm(run)
    if grad is None:
        return Skipped(DETECTOR.name, "the run logs no gradient norm")
    if grad.unmeasured:
        return Skipped(DETECTOR.name, grad.unmeasured)
    g = grad.values
    if len(g) < params["min_points"]:
        return Skipped(DETECTOR.name, f"only {len(g)} non-zero gradient norms; needs {params['min_points']}")
    findings = []
    excursion = _excursions(run, g, params)
    if excursion is not None:
        findings.append(excursion)
    clipped = _above_clip(run, g, params)
    if clipped is not None and (excursion is None or excursion.severity is Severity.INFO):
        findings = [clipped]  # the norm's level is the finding; its outliers around that level are not news
    return findings


def _excursions(run, g, params):
    found = stats.excursions(g, params["window"], params["factor"], MIN_PERIODS)
    high = found.high.copy()
    sched = stats.schedule(run)
    warm = g.index.to_numpy() < sched.warmup_end if sched.warmup_end is not None else np.zeros(len(g), dtype=bool)
    # gradients grow while the lr warms up (LoRA's zero-init B, say): not news
    # an excursion lasts until the norm is back near its level before it (a norm that stays up has raised its own
    # rolling median and is no longer flagged, but it has not come back)
    spans = stats.unhealed_spans(g, found, params["window"], params["factor"])
    runs = [(a, b) for a, b in spans if (high[a:b] & ~warm[a:b]).any()]
    high &= ~warm
    if not runs:
        return None
    loss = stats.train_loss(run)
    loss_series = loss[1] if loss is not None else None
    steps = g.index.to_numpy()
    episodes = []
    values = g.to_numpy(dtype="float64")
    for start, end in runs:
        peak = start + int(np.argmax(values[start:end]))
        # the baseline every message quotes: the running median before the excursion (loss-spike quotes the same)
        baseline, baseline_points = stats.median_before(g, int(steps[start]), params["window"]) or (math.nan, 0)
        rise = stats.rise_during(loss_series, int(steps[start]), int(steps[end - 1]), LOOKBACK)
        episodes.append({
            "start": start, "end": end, "peak": peak, "points": end - start, "baseline": baseline,
            "baseline_points": baseline_points, "ratio": values[peak] / baseline if baseline > 0 else math.inf,
            "jump": rise.ratio, "loss_peak_step": rise.peak_step,
            "unhealed": end == len(g) and bool(values[end - 1] >= params["factor"] / 2 * baseline),
            "sustained": int(high[start:end].sum()) >= params["sustain_points"],
        })
    starts = np.array([e["start"] for e in episodes])
    for e in episodes:
        near = np.abs(starts - e["start"]) < params["window"]
        e["repeated"] = int(near.sum()) >= params["repeat_episodes"]
        e["harmful"] = (e["sustained"] or e["unhealed"] or e["repeated"] or e["jump"] >= params["loss_jump"])
    harmful = [e for e in episodes if e["harmful"]]
    healthy = stats.healthy_grad_norms(run)

    if not harmful:
        worst = max(episodes, key=lambda e: e["ratio"])
        return DETECTOR.finding(
            f"{len(episodes)} isolated gradient-norm spike(s) up to {stats.fmt_times(worst['ratio'])} the running "
            f"median (peak {stats.fmt_num(float(g.iloc[worst['peak']]))} at step {int(steps[worst['peak']])}, "
            f"{_median_text(worst, steps)}), each back near its level within a few points, with no rise of the loss: "
            "normal outliers.",
            int(steps[episodes[0]["start"]]), int(steps[episodes[-1]["end"] - 1]), severity=Severity.INFO,
            confidence=Confidence.MEDIUM,
            metrics={"episodes": len(episodes), "peak_ratio": round(worst["ratio"], 2),
                     "baseline_median": worst["baseline"], "baseline_points": worst["baseline_points"]},
            evidence=evidence_at(run, "grad_norm", [int(steps[e["peak"]]) for e in episodes]))

    first = harmful[0]
    worst = max(harmful, key=lambda e: e["ratio"])
    start_step, end_step = int(steps[first["start"]]), int(steps[harmful[-1]["end"] - 1])
    peak_step = int(steps[worst["peak"]])
    peak_value = float(g.iloc[worst["peak"]])
    how = []
    if worst["sustained"] or first["sustained"]:
        longest = max(harmful, key=lambda e: e["points"])
        how.append(f"above {params['factor'] / 2:g}x for {longest['points']} logged points, "
                   f"{int(high[longest['start']:longest['end']].sum())} of them above {params['factor']:g}x")
    if any(e["unhealed"] for e in harmful):
        how.append("not back to its level by the end of the run")
    if any(e["repeated"] for e in harmful):
        how.append(f"{len(harmful)} excursions close together")
    jumps = [e["jump"] for e in harmful if e["jump"] >= params["loss_jump"]]
    if jumps:
        how.append(f"the {loss[0]} rose {stats.fmt_ratio(max(jumps))} with it")
    # the numbers quoted are the worst excursion's, over its own baseline; where an earlier one began the finding's
    # window, it is quoted too, over the baseline before it, so the window and the baselines agree
    since = (f"from step {start_step}" if worst is first else
             f"the worst of {len(harmful)} excursions; the first, from step {start_step}, reached "
             f"{stats.fmt_num(float(g.iloc[first['peak']]))} at step {int(steps[first['peak']])}, "
             f"{stats.fmt_times(first['ratio'])} its running median ({_median_text(first, steps)})")
    message = (f"The gradient norm rose to {stats.fmt_num(peak_value)} at step {peak_step}, "
               f"{stats.fmt_times(worst['ratio'])} its running median ({_median_text(worst, steps)}), {since}: "
               f"{', '.join(how)}")
    metrics = {"peak": peak_value, "peak_step": peak_step, "peak_ratio": round(float(worst["ratio"]), 2),
               "baseline_median": worst["baseline"], "baseline_points": worst["baseline_points"],
               "episodes": len(harmful), "isolated_spikes": len(episodes) - len(harmful),
               "healthy_p99": remedies.healthy_p99(healthy)}
    if worst is not first:
        metrics.update(first_excursion_step=start_step, first_peak_ratio=round(float(first["ratio"]), 2),
                       first_baseline_median=first["baseline"])
    layer_ratio = _layer_ratio(run, peak_step)
    if layer_ratio is not None:
        metrics["first_last_layer_ratio"] = round(layer_ratio, 2)
        message += f"; first/last layer gradient ratio {layer_ratio:.0f} at the peak"
    why = (f"the gradient norm reached {stats.fmt_num(peak_value)} ({stats.fmt_times(worst['ratio'])} its running "
           f"median) at step {peak_step}")
    recs = remedies.unique([remedies.clip(run, healthy, why), remedies.lower_lr(run, why)])
    evidence = evidence_at(run, "grad_norm", [start_step, peak_step])
    jumped = [e for e in harmful if e["jump"] >= params["loss_jump"] and e["loss_peak_step"] is not None]
    if jumped and loss is not None:
        evidence += evidence_at(run, loss[0], [jumped[0]["loss_peak_step"]])
    return DETECTOR.finding(message + ".", start_step, end_step, severity=Severity.WARNING,
                            confidence=Confidence.HIGH if len(harmful) and (jumps or worst["sustained"])
                            else Confidence.MEDIUM,
                            metrics=metrics, recommendations=recs, evidence=evidence)


def _median_text(episode, steps) -> str:
    return (f"{stats.fmt_num(episode['baseline'])} over the {episode['baseline_points']} logged points before step "
            f"{int(steps[episode['start']])}")


def _above_clip(run, g, params):
    clip = stats.hparam_number(run, "max_grad_norm")
    if not clip or clip <= 0:
        return None
    skip = int(len(g) * EARLY_SHARE)
    body = g.iloc[skip:]
    median = float(np.median(body.to_numpy()))
    ratio = median / clip
    if ratio < params["clip_factor"]:
        return None
    first = int(body.index[int(np.argmax(body.to_numpy() >= params["clip_factor"] * clip))])
    return DETECTOR.finding(
        f"The gradient norm has a median of {stats.fmt_num(median)} over the run, {stats.fmt_times(ratio)} the clip "
        f"threshold max_grad_norm {stats.fmt_num(clip)}: every update is clipped, so the step size is set by the "
        "clip, not the lr; something makes the gradient far larger than it should be.",
        first, int(body.index[-1]), severity=Severity.WARNING, confidence=Confidence.MEDIUM,
        metrics={"median": median, "max_grad_norm": clip, "clip_ratio": round(ratio, 2)},
        evidence=evidence_at(run, "grad_norm", [first, int(body.index[len(body) // 2])]))


def _layer_ratio(run, step) -> float | None:
    """First/last layer gradient-norm ratio at `step`, where per-layer norms are logged."""
    layers = {}
    for metric in run.metrics:
        m = LAYER_NORM.search(metric)
        if m and metric != "grad_norm":
            layers[int(m.group(1) or m.group(2))] = metric
    if len(layers) < 2:
        return None
    first, last = run.series(layers[min(layers)]), run.series(layers[max(layers)])
    if step not in first.index or step not in last.index:
        return None
    a, b = float(first.loc[step]), float(last.loc[step])
    return a / b if b > 0 and np.isfinite(a) else None


DETECTOR = Detector(
    code="G001", name="grad-explosion", severity=Severity.WARNING,
    summary="gradient norm far above its own robust baseline (sustained, repeated or harmful) or the clip threshold",
    doc=__doc__,
    params={"window": WINDOW, "factor": FACTOR, "sustain_points": SUSTAIN_POINTS,
            "repeat_episodes": REPEAT_EPISODES, "loss_jump": LOSS_JUMP, "clip_factor": CLIP_FACTOR,
            "min_points": MIN_POINTS},
    check=check, requires=("grad_norm",),
)
