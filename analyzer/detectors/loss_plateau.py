"""Loss plateau: the loss stops improving for a long stretch while the lr schedule still allows learning.

What it detects:
    A long stretch of training (at least `min_fraction` of the logged steps) over which the training loss (or,
    separately, the eval loss) never improves by more than `min_improvement` below where the stretch began, while
    the learning rate is past its warmup and still at least `min_lr_fraction` of its peak; when the run ends on it,
    it is reported to the last logged step (the decayed tail is not judged, but it did not improve). A plateau at
    chance level (ln of the number of classes or of the vocabulary: the loss of a uniform guess) means the model
    learns nothing at all.
Why it matters:
    Steps on a plateau are compute spent for nothing. A plateau early and high usually means the optimizer cannot
    make progress (lr too low for the batch, bad initialization, a learning-rate/batch mismatch); a plateau at
    chance level means the model predicts the uniform distribution: labels, loss wiring or a collapse of the
    network, not slow learning. Slow progress at the end of a decay, or during warmup, is normal and is not flagged.
How it decides:
    The log of the loss over the eligible steps (after warmup; lr at least `min_lr_fraction` of its peak, from the
    logged lr or from the hparams' schedule) is summarised by medians of up to 200 equal bins (training-loss bins
    hold at least 5 points), which removes point noise. For every bin, the stretch it starts runs until the first
    later bin that lies more than the threshold below it. The threshold is `min_improvement` (relative), raised to 3
    standard errors of a bin median on noisy logs so that noise never ends a stretch by itself; the noise comes from
    second differences, which a steady trend does not inflate, and a series so noisy that the threshold would exceed
    15% gets no verdict. The longest stretch is a plateau when it covers `min_fraction` of the logged steps and at
    least `min_points` logged points (`min_eval_points` for eval loss), its last quarter is not lower than its first
    quarter by the threshold (with the smaller noise allowance of quarter medians), and it does not rise more than
    `max_rise` (that is a divergence). Chance level is ln(num_classes) or ln(vocab_size) from the hparams (base 2
    for fairseq-style logs), or is implied when a loss sits within 0.2% of ln(k) for k <= 10; a distillation run's
    total loss is not compared with it. Severity: critical at chance level (within `chance_tolerance`) when the run
    ends on it; warning when the run ends still on the plateau, or for a plateau at chance that the loss left later;
    info when the loss improved again later, when the plateau is shorter than `min_steps`, or when the log is so
    noisy that the allowance exceeds twice `min_improvement` (slow progress could hide under the noise).
What it recommends:
    Nothing by itself: the plateau is a symptom. Its cause, with numeric fixes, comes from lr-too-low, lr-too-high,
    small-effective-batch, init-variance or initial-loss-mismatch, which the report links to it. At chance level the
    message says so and, for when no such cause is linked, points at the labels, the loss wiring and the data
    before the schedule: a model that predicts the uniform distribution is rarely just learning slowly.
Parameters:
    min_fraction (default 0.25): shortest plateau, as a fraction of the logged steps of that series.
    min_improvement (default 0.03): largest relative improvement (3%) that still counts as "not improving".
    min_steps (default 100): a plateau shorter than this many steps is reported as info only.
    min_lr_fraction (default 0.3): steps where the lr is below this fraction of its peak are not judged.
    max_rise (default 0.1): a stretch whose level rises more than this (relative) is left to loss-divergence.
    chance_tolerance (default 0.01): a plateau within this relative distance of chance level is "at chance".
    min_points (default 12): fewest training-loss points in the judged stretch.
    min_eval_points (default 5): fewest eval-loss points in the judged stretch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Severity, Skipped

MIN_FRACTION = 0.25  # a quarter of the run: shorter flat stretches happen between phases of healthy training
MIN_IMPROVEMENT = 0.03  # 3%: seed 001 calls 3.75 -> 3.60 (-4%) over 1500+ steps a plateau; healthy runs beat 3%
MIN_STEPS = 100  # a flat stretch of a few dozen steps is early training, not a plateau worth a warning
MIN_LR_FRACTION = 0.3  # below ~30% of peak lr a cosine/linear decay is winding down and slow progress is normal
MAX_RISE = 0.1
CHANCE_TOLERANCE = 0.01  # 1%: a 4-way classifier at 1.40 vs ln 4 = 1.386; an LM that learned unigrams is further
MIN_POINTS = 12
MIN_EVAL_POINTS = 5
MAX_BINS = 200  # bins of the judged stretch: keeps the all-pairs search at 200 x 200
TRAIN_BIN = 5  # training-loss points per bin at least: one noisy point must not start or end a stretch
COARSE = 2.0  # a noise allowance over 2x min_improvement could hide real slow progress: info at most
MAX_THRESHOLD = 0.15  # bins noisier than this cannot tell a plateau from slow progress
BIN_SE_UNITS = 3.0  # a bin median must fall 3 standard errors before noise alone could end a stretch
MEDIAN_SE = 1.2533  # standard error of a median = 1.2533 x sigma / sqrt(n) for normal noise


@dataclass(frozen=True)
class Plateau:
    """A stretch of a loss series with no improvement: where it ran, its level, and whether the run ended on it."""

    first_step: int
    last_step: int
    start_level: float  # loss units
    level: float  # median loss over the stretch
    ongoing: bool  # the run's last points are still on it
    points: int
    span: int  # logged steps of the whole series
    threshold: float  # relative improvement that would have ended it
    lr_low: float | None  # lr over the stretch as a fraction of the peak (min, max)
    lr_high: float | None
    run_end: int | None = None  # ongoing and logged past last_step (lr decayed below the judged range): last step

    @property
    def shown_last_step(self) -> int:
        """Where the plateau ends in the report: the end of the log when the run ends on it."""
        return self.run_end if self.run_end is not None else self.last_step


def find_plateau(series: pd.Series, sched: stats.Schedule, params, min_points: int,
                 min_bin: int = 1) -> Plateau | None:
    """The longest stretch of `series` that never improves by more than the threshold (see the module docs)."""
    # kept with the series (lr-too-low asks the same question); the entry holds `sched`, so its id stays its own
    key = ("find_plateau", id(sched), stats.params_key(params), min_points, min_bin)
    return stats.cached(series, key, lambda: (sched, _find_plateau(series, sched, params, min_points, min_bin)))[1]


def _find_plateau(series: pd.Series, sched: stats.Schedule, params, min_points: int,
                  min_bin: int) -> Plateau | None:
    logs = stats.log_values(series)
    if logs is None or len(logs) < min_points:
        return None
    steps = np.asarray(series.index, dtype="float64")
    eligible = np.ones(len(steps), dtype=bool)
    if sched.warmup_end is not None:
        eligible &= steps >= sched.warmup_end
    fractions = sched.fractions(steps)
    if fractions is not None:
        eligible &= fractions >= params["min_lr_fraction"]
    x = logs.to_numpy()[eligible]
    st = steps[eligible]
    if len(x) < min_points:
        return None
    nbins = max(1, min(MAX_BINS, len(x) // min_bin))
    bin_of = (np.arange(len(x)) * nbins) // len(x)
    medians = pd.Series(x).groupby(bin_of).median().to_numpy()
    # bins are consecutive runs of points: sizes from their first positions; in step order (always, for
    # series from stats.finite) a bin's first and last steps are its smallest and largest
    first_of_bin = np.flatnonzero(np.r_[True, bin_of[1:] != bin_of[:-1]])
    counts = np.diff(np.r_[first_of_bin, len(x)])
    if np.all(st[1:] >= st[:-1]):
        starts, ends = st[first_of_bin], st[np.r_[first_of_bin[1:], len(x)] - 1]
    else:
        starts = pd.Series(st).groupby(bin_of).min().to_numpy()
        ends = pd.Series(st).groupby(bin_of).max().to_numpy()
    per_bin = max(float(np.median(counts)), 1.0)
    noise = stats.curvature_noise_std(x)
    threshold = max(math.log1p(params["min_improvement"]),
                    BIN_SE_UNITS * MEDIAN_SE * noise / math.sqrt(per_bin))
    if threshold > math.log1p(MAX_THRESHOLD):
        return None  # so noisy that only a huge improvement would show: no verdict either way
    below = medians[None, :] < medians[:, None] - threshold
    below &= np.triu(np.ones((nbins, nbins), dtype=bool), k=1)
    has_end = below.any(axis=1)
    first_below = np.where(has_end, below.argmax(axis=1), nbins)
    last_bin = first_below - 1
    length = ends[last_bin] - starts
    # a stretch that climbs well above where it began is a divergence, not a plateau
    cols = np.arange(nbins)
    inside = (cols[None, :] >= cols[:, None]) & (cols[None, :] <= last_bin[:, None])
    rises = np.where(inside, medians[None, :], -np.inf).max(axis=1) - medians
    length = np.where(rises > math.log1p(params["max_rise"]), -1, length)
    a = int(np.argmax(length))
    span = float(steps[-1] - steps[0])
    b = int(last_bin[a])
    n_points = int(counts[a:b + 1].sum())
    if span <= 0 or length[a] < params["min_fraction"] * span or n_points < min_points:
        return None
    in_stretch = (st >= starts[a]) & (st <= ends[b])
    inside = x[in_stretch]
    quarter = max(1, len(inside) // 4)
    # quarter medians hold many points: their own, smaller, noise allowance
    quarter_se = math.sqrt(2.0) * MEDIAN_SE * noise / math.sqrt(quarter)
    net_threshold = max(math.log1p(params["min_improvement"]), BIN_SE_UNITS * quarter_se)
    if np.median(inside[:quarter]) - np.median(inside[-quarter:]) >= min(threshold, net_threshold):
        return None  # the stretch as a whole still improved: a noisy start bin made it look flat
    level = float(math.exp(np.median(inside)))
    start_level = float(math.exp(medians[a]))
    tail = logs.to_numpy()[steps > ends[b]]
    ongoing = not has_end[a] and (not len(tail) or np.median(tail[-max(3, len(tail) // 4):]) >
                                  medians[a] - threshold)
    lr_low = lr_high = None
    if fractions is not None:
        fr = fractions[eligible][in_stretch]
        lr_low, lr_high = float(fr.min()), float(fr.max())
    # the run ends on it, logged past the judged steps (the lr decayed below min_lr_fraction): the plateau goes on
    run_end = int(steps[-1]) if ongoing and len(tail) else None
    return Plateau(first_step=int(starts[a]), last_step=int(ends[b]), start_level=start_level, level=level,
                   ongoing=bool(ongoing), points=n_points, span=int(span), threshold=math.expm1(threshold),
                   lr_low=lr_low, lr_high=lr_high, run_end=run_end)


def is_stall(p: Plateau | None, params) -> bool:
    """A plateau the run ends on, long enough and measured finely enough to be a warning (see Severity above)."""
    return (p is not None and p.ongoing and p.last_step - p.first_step >= params["min_steps"]
            and p.threshold <= COARSE * params["min_improvement"])


def chance_for(run, levels: list[float]) -> stats.ChanceLevel | None:
    """The run's chance level: from hparams, else implied by any of the given loss levels."""
    chance = stats.chance_level(run)
    if chance is not None:
        return chance
    for level in levels:
        implied = stats.implied_chance_level(level, run)
        if implied is not None:
            return implied
    return None


def check(run, params):
    found = stats.train_loss(run)
    eval_loss = stats.finite(run.series("eval_loss")) if run.has("eval_loss") else None
    if found is None and (eval_loss is None or not len(eval_loss)):
        return Skipped(DETECTOR.name, "the run logs no finite training or eval loss")
    sched = stats.schedule(run)
    plateaus = []
    if found is not None:
        metric, loss = found
        p = find_plateau(loss, sched, params, params["min_points"], min_bin=TRAIN_BIN)
        if p is not None:
            plateaus.append((metric, loss, p))
    if eval_loss is not None and len(eval_loss):
        p = find_plateau(eval_loss, sched, params, params["min_eval_points"])
        if p is not None:
            plateaus.append(("eval_loss", eval_loss, p))
    if not plateaus:
        if found is not None and stats.log_values(found[1]) is None:
            return Skipped(DETECTOR.name, "the loss takes values <= 0 (an RL or shifted objective): "
                                          "no relative improvement to measure")
        return []
    chance = chance_for(run, [p.level for m, _, p in plateaus if m != "loss" or not stats.composite_loss(run)])
    return [_finding(run, metric, series, p,
                     None if metric == "loss" and stats.composite_loss(run) else chance, sched, params)
            for metric, series, p in plateaus]


def _finding(run, metric, series, p: Plateau, chance, sched, params):
    end = p.shown_last_step
    metrics = {"level": p.level, "start_level": p.start_level, "steps": end - p.first_step,
               "fraction_of_run": (end - p.first_step) / p.span if p.span else None,
               "threshold": p.threshold, "ongoing": p.ongoing}
    if p.run_end is not None:
        metrics["judged_to_step"] = p.last_step
    at_chance = chance is not None and abs(p.level / chance.value - 1.0) <= params["chance_tolerance"]
    chance_text = ""
    if chance is not None:
        metrics.update(chance_level=chance.value, chance_classes=chance.classes, chance_source=chance.hparam,
                       above_chance=p.level / chance.value)
        if at_chance:
            chance_text = (f", at chance level {chance.describe()}: the model predicts the uniform distribution "
                           "and learns nothing")
        else:
            chance_text = f" ({stats.share_of(p.level / chance.value)} chance level {chance.describe()})"
    lr_text = ""
    if p.lr_low is not None and sched.peak_lr:
        share = f"{p.lr_low:.0%}" if f"{p.lr_low:.0%}" == f"{p.lr_high:.0%}" else f"{p.lr_low:.0%}-{p.lr_high:.0%}"
        lr_text = f" while the lr stayed at {share} of its peak {stats.fmt_num(sched.peak_lr)}"
        if p.run_end is not None:
            lr_text += f" (judged to step {p.last_step}, where the lr fell below {params['min_lr_fraction']:.0%} of it)"
        metrics.update(lr_fraction_min=p.lr_low, lr_fraction_max=p.lr_high, peak_lr=sched.peak_lr)
    coarse = p.threshold > COARSE * params["min_improvement"]  # the log's noise hides slow progress
    short = p.last_step - p.first_step < params["min_steps"]
    if short:
        severity = Severity.INFO
    elif at_chance and p.ongoing:
        severity = Severity.CRITICAL
    elif at_chance or (p.ongoing and not coarse):
        severity = Severity.WARNING
    else:
        severity = Severity.INFO
    if coarse:
        metrics["noise_limited"] = True
    ending = "and the run ends on it" if p.ongoing else "before improving again"
    message = (f"{metric} stopped improving: it stayed near {stats.fmt_num(p.level, 4)} (no drop of more than "
               f"{p.threshold:.1%}) from step {p.first_step} to {end} "
               f"({metrics['fraction_of_run']:.0%} of the logged steps){chance_text}{lr_text}, {ending}."
               + (" Unless a linked cause explains it, check the labels, the loss wiring and the data before the "
                  "schedule." if at_chance else ""))
    confidence = Confidence.HIGH if sched.source != "unknown" else Confidence.MEDIUM
    steps = series.index.to_numpy()
    inside = steps[(steps >= p.first_step) & (steps <= end)]
    ev = [p.first_step, int(inside[len(inside) // 2]), end]
    return DETECTOR.finding(message, p.first_step, end, severity=severity, confidence=confidence,
                            metrics=metrics, evidence=evidence_at(run, metric, ev))


DETECTOR = Detector(
    code="L002", name="loss-plateau", severity=Severity.WARNING,
    summary="the loss stops improving for a long stretch while the lr schedule still allows learning",
    doc=__doc__,
    params={"min_fraction": MIN_FRACTION, "min_improvement": MIN_IMPROVEMENT, "min_lr_fraction": MIN_LR_FRACTION,
            "max_rise": MAX_RISE, "chance_tolerance": CHANCE_TOLERANCE, "min_points": MIN_POINTS,
            "min_steps": MIN_STEPS,
            "min_eval_points": MIN_EVAL_POINTS},
    check=check, requires=("loss", "lm_loss", "eval_loss"),
)
