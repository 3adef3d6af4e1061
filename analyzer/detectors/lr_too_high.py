"""Learning rate too high: updates are large, yet the loss does not go below chance, rises or swings from the start.

What it detects:
    A run whose steps are big enough to learn but whose loss does not: it stays at or above chance level (ln of the
    vocabulary or class count), climbs above where it started after warmup, or oscillates from the first steps,
    while the weights move by a large fraction per step. Seed 004: lr 1e-4 with micro-batch 1, loss not decreasing
    from ln(65536) = 11.1; the fix halved the lr.
Why it matters:
    Too large a step overshoots the valley the loss should descend into: the model bounces between bad solutions,
    never leaves the uniform prediction, or diverges later. More steps do not help; a smaller lr does.
How it decides:
    On the steps after warmup (lr at least `min_lr_fraction` of its peak), any of these symptoms:
    - at chance: the median cross-entropy loss there, and over its last fifth, is above chance level or less than
      `chance_margin` (relative) below it (chance from vocab_size / num_classes);
    - rising: the loss level over the first fifth of those steps is more than `rise` (relative) above the first
      losses (the median of the first 5 points, or of the first tenth of a short, smooth log -- point-to-point
      noise under 5%, as in per-epoch means -- at least 3 points);
    - oscillating from the start: loss-oscillation's test finds swings that begin in the first 20% of steps.
    The rising and oscillating symptoms need the log to start at the run's start (first point by step 50 or two
    logging intervals). Then the update size decides: with `update_ratio` logged, its median must be at least
    `active_ratio` (1e-3, the size at which healthy runs learn: the steps are not too small, so the lack of
    progress is not lr-too-low's), and above `huge_ratio` (1e-2) the confidence is high; without update_ratio,
    the at-chance and rising symptoms alone give a warning at medium confidence, except that a loss at chance
    under an lr more than 10x below lr-too-low's typical_lr (1e-5 and less) is left to lr-too-low. A run with a
    tiny update ratio is never flagged here (lr-too-low covers it).
What it recommends:
    Lower the peak `lr` by a factor from the data: towards an update ratio of 1e-3 (1e-3 / ratio, between x0.1 and
    x0.5), else x0.5 (seed 004: 1e-4 -> 5e-5).
Parameters:
    chance_margin (default 0.02): a median loss above chance, or less than this fraction below it, is "at chance".
    rise (default 0.1): relative rise of the post-warmup level over the first losses that counts as rising.
    active_ratio (default 0.001): smallest median update ratio for which a stalled loss is blamed on a high lr.
    huge_ratio (default 0.01): update ratio above which the finding has high confidence.
    min_lr_fraction (default 0.3): steps where the lr is below this fraction of its peak are not judged.
    min_points (default 10): fewest judged loss points.
"""

from __future__ import annotations

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.detectors.loss_oscillation import DETECTOR as OSCILLATION, find_oscillation
from analyzer.detectors.lr_too_low import DETECTOR as LR_TOO_LOW
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

CHANCE_MARGIN = 0.02
RISE = 0.1
ACTIVE_RATIO = 1e-3
HUGE_RATIO = 1e-2
TARGET_RATIO = 1e-3
MIN_LR_FRACTION = 0.3
MIN_POINTS = 10
FACTOR_RANGE = (0.1, 0.5)
DEFAULT_FACTOR = 0.5
EARLY = 0.2  # an oscillation that begins in the first 20% of the steps is "from the start"
HEAD_POINTS = 5
MIN_HEAD_POINTS = 3  # a median of three still ignores one noisy point
SMOOTH_NOISE = 0.05  # point-to-point noise of the log-loss under which a short log's head may shrink (epoch means)
START_STEPS = 50  # a log whose first point is later than this (and than two logging intervals) misses the start


def check(run, params):
    found = stats.loss_while_learning(run, DETECTOR.name, params["min_lr_fraction"], params["min_points"])
    if isinstance(found, Skipped):
        return found
    metric, loss, judged, sched = found
    steps = loss.index.to_numpy()
    symptoms, metrics, ev_metric, at_chance = [], {}, metric, None
    chance = stats.chance_level(run)
    ce = stats.cross_entropy_loss(run)
    if chance is not None and ce is not None:
        ce_metric, ce_loss = ce
        ce_judged = ce_loss[(ce_loss.index >= judged.index[0]) & (ce_loss.index <= judged.index[-1])]
        if len(ce_judged) >= params["min_points"]:
            level = float(np.median(ce_judged.to_numpy()))
            final = float(np.median(ce_judged.tail(max(3, len(ce_judged) // 5)).to_numpy()))
            metrics.update(loss_level=level, final_level=final, chance_level=chance.value)
            floor = chance.value * (1 - params["chance_margin"])
            if level >= floor and final >= floor:  # at chance after warmup AND still there at the end
                at_chance = (f"{ce_metric} stays at {stats.fmt_num(level)} after warmup, "
                             f"{stats.share_of(level / chance.value)} chance level {chance.describe()}")
                symptoms.append(at_chance)
                ev_metric = ce_metric
    # "the start" is the first few points, at most a tenth of a smooth log: in a per-epoch log (Keras' CSVLogger,
    # 20 points) five points are a quarter of the run and already hold the climb (keras_lr_too_high: 0.85, 1.27,
    # 1.96, 2.15); a noisy short log keeps five (lightning_tb's 12 per-batch MSEs swing 2.8..11.7)
    log_loss = stats.log_values(loss)  # None for a loss that reaches 0 (RL): then no shrinking
    smooth = log_loss is not None and stats.noise_std(log_loss.to_numpy()) < SMOOTH_NOISE
    head = float(np.median(loss.head(head_points(len(loss)) if smooth else HEAD_POINTS).to_numpy()))
    # the level just after warmup: a rise much later (a spike, a divergence) is not "from the start"
    after = float(np.median(judged.head(max(HEAD_POINTS, len(judged) // 5)).to_numpy()))
    metrics.update(first_losses=head, level_after_warmup=after)
    # "from the start" needs the start: an excerpt that begins mid-run (a chronicle) cannot show it
    start_visible = steps[0] <= max(START_STEPS, 2 * stats.log_interval(loss))
    if start_visible and after > head * (1 + params["rise"]):
        symptoms.append(f"the loss rose from {stats.fmt_num(head)} at the start to {stats.fmt_num(after)} "
                        "after warmup")
    osc = find_oscillation(loss, OSCILLATION.params) if len(loss) >= OSCILLATION.params["min_points"] else None
    span = float(steps[-1] - steps[0]) or 1.0
    oscillating = start_visible and osc is not None and osc["first_step"] - steps[0] <= EARLY * span
    if oscillating:
        symptoms.append(f"it swings by ~{osc['swing']:.0%} from step {osc['first_step']}")
        metrics["swing"] = osc["swing"]
    if not symptoms:
        return []

    ratio = stats.median_update_ratio(run, judged)
    if ratio is not None:
        metrics["update_ratio"] = ratio
        if ratio < params["active_ratio"]:
            return []
        confidence = Confidence.HIGH if ratio >= params["huge_ratio"] else Confidence.MEDIUM
        factor = float(np.clip(TARGET_RATIO / ratio, *FACTOR_RANGE))
        basis = f"update ratio {stats.fmt_num(ratio)} towards ~{stats.fmt_num(TARGET_RATIO)}"
        size = f"while each step moves the weights by {stats.fmt_num(ratio)} of their norm"
    else:
        if at_chance and _far_too_small(run, sched):
            # no step size to tell them apart, and an lr 10x under any usual one: a loss stuck at chance is
            # lr-too-low's (an lr of 1e-6 was called too high for never leaving ln V)
            symptoms.remove(at_chance)
            ev_metric = metric
            if not symptoms:
                return []
        if oscillating and len(symptoms) == 1:
            return []  # swings alone, with no update size: loss-oscillation reports them
        confidence = Confidence.MEDIUM
        factor = DEFAULT_FACTOR
        basis = "no update ratio is logged; halving is the usual first step"
        size = "with no update ratio logged"
    lr = stats.hparam_number(run, "lr") or sched.peak_lr
    metrics["lr_factor"] = factor
    batch = stats.effective_batch(run)
    batch_text = f" at an effective batch of {batch.describe()}" if batch is not None else ""
    message = (f"lr {stats.fmt_num(lr)}{batch_text} is too high: " + "; ".join(symptoms) + f", {size}.")
    recs = []
    if lr:
        recs.append(Recommendation(
            "lr", lr, stats.round_sig(lr * factor, 2),
            f"x{factor:.2f} from the data ({basis}); " + "; ".join(symptoms)))
    ev = evidence_at(run, ev_metric, [int(judged.index[0]), int(judged.index[len(judged) // 2]),
                                      int(judged.index[-1])])
    return [DETECTOR.finding(message, int(steps[0]), int(steps[-1]), confidence=confidence, metrics=metrics,
                             recommendations=recs, evidence=ev)]


def _far_too_small(run, sched) -> bool:
    """The lr is known and more than lr-too-low's far_below times under its typical_lr (1e-5 and less)."""
    lr = stats.hparam_number(run, "lr") or sched.peak_lr
    low = LR_TOO_LOW.params
    return bool(lr) and lr * low["far_below"] < low["typical_lr"]


def head_points(n: int) -> int:
    """Points that make "the first losses": HEAD_POINTS, but no more than a tenth of a short log (at least 3)."""
    return max(MIN_HEAD_POINTS, min(HEAD_POINTS, n // 10))


DETECTOR = Detector(
    code="O002", name="lr-too-high", severity=Severity.WARNING,
    summary="the lr is too large: the loss stays at chance, rises or swings from the start while updates are big",
    doc=__doc__,
    params={"chance_margin": CHANCE_MARGIN, "rise": RISE, "active_ratio": ACTIVE_RATIO, "huge_ratio": HUGE_RATIO,
            "min_lr_fraction": MIN_LR_FRACTION, "min_points": MIN_POINTS},
    check=check, requires=("loss", "lm_loss"),
)
