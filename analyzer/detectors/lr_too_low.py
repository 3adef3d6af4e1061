"""Learning rate too low: the optimizer's steps are too small to make progress, so the loss crawls or stalls.

What it detects:
    Training whose updates are tiny relative to the weights and whose loss is stalled or crawling at the peak
    learning rate: seed 001 (BERT-style MLM, lr 1e-4, 8.44e-5 after warmup: 3.75 -> 3.60 over 1500+ steps) and seed
    000's over-conservative lr 1e-5.
Why it matters:
    Too small an lr wastes the whole budget: the run ends far from where the same compute could take it, and the
    flat loss is easily mistaken for a data or model limit. It is the cheapest problem to fix.
How it decides:
    Looks only at steps after warmup where the lr is at least `min_lr_fraction` of its peak. With `update_ratio`
    logged (|weight update| / |weights| per step), its median there is compared with the healthy ~1e-3
    (TheDeepChecker's healthy band is 1e-4..1e-1 in log10 terms; practitioners aim near 1e-3):
    - below `tiny_ratio` (2e-4) and the loss is not falling fast (less than `fast_progress` relative drop over the
      later half of those steps): warning, high confidence;
    - below `low_ratio` (3e-3, the low end of the 1e-3..1e-2 where healthy AdamW runs sit at their peak lr) and the
      loss sits on a plateau to the end of the run (loss-plateau's test) without
      rising (a loss that went up is not short of lr): warning, medium confidence.
    Without update_ratio, a plateau to the end of the run whose loss is smooth (point-to-point noise under
    `smooth_noise`, i.e. steps are small rather than noisy) at a peak lr below `typical_lr` gives an info finding,
    low confidence: a loss can also stall for reasons the lr does not cure. It is a warning, medium confidence,
    when that plateau is a cross-entropy at `at_chance` of chance level or above (the model has learned nothing)
    and the lr is more than `far_below` times under `typical_lr`.
What it recommends:
    Raise the peak `lr` by a factor from the data: towards an update ratio of 1e-3 (1e-3 / ratio, between x2 and
    x10), else x2 (a loss that falls linearly with small steps falls about twice as fast at twice the lr), or
    towards `typical_lr` (at most x10) for a loss stuck at chance under a far too small lr. With a
    long warmup (over `long_warmup` of the steps), `warmup_ratio` 0.06 so the peak lr is reached sooner (seed 001:
    0.1 -> 0.06), or `warmup_steps` at 6% of max_steps where the run sets its warmup in steps.
Parameters:
    tiny_ratio (default 0.0002): update ratio below which steps are too small unless the loss still falls fast.
    low_ratio (default 0.003): update ratio below which a plateau is blamed on too small a step.
    fast_progress (default 0.1): relative loss drop over the judged steps that counts as good progress.
    smooth_noise (default 0.01): point-to-point relative loss noise below which a plateau counts as smooth.
    min_lr_fraction (default 0.5): steps where the lr is below this fraction of its peak are not judged.
    typical_lr (default 0.0001): without update_ratio, only a peak lr below this is suspected (AdamW pretraining
        uses 1e-4..1e-3).
    long_warmup (default 0.08): warmup longer than this fraction of the run is called long.
    far_below (default 10.0): without update_ratio, an lr this many times under typical_lr that leaves the loss
        at chance gives a warning.
    at_chance (default 0.9): a cross-entropy plateau at this fraction of chance level or above counts as at chance.
    min_points (default 10): fewest judged points.
"""

from __future__ import annotations

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.detectors.loss_plateau import DETECTOR as PLATEAU, TRAIN_BIN, find_plateau, is_stall
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

TINY_RATIO = 2e-4  # twice TheDeepChecker's 1e-4 floor; AdamW fine-tunes at lr 1e-5 on pretrained weights sit ~2.5e-4
LOW_RATIO = 3e-3  # a stalled run whose steps are at the low end of healthy (1e-3..1e-2) gains from larger ones
TARGET_RATIO = 1e-3
FAST_PROGRESS = 0.1
SMOOTH_NOISE = 0.01
MIN_LR_FRACTION = 0.5
TYPICAL_LR = 1e-4  # the low end of AdamW pretraining lrs (BERT 1e-4, RoBERTa 6e-4, GPT-2 small 6e-4)
LONG_WARMUP = 0.08
SHORT_WARMUP = 0.06  # the warmup_ratio seed 001 moved to, common for BERT-style pretraining (RoBERTa: 6%)
MIN_POINTS = 10
FAR_BELOW = 10.0  # an lr 10x under typical_lr (1e-5 and less) is rare outside fine-tuning, which starts below chance
AT_CHANCE = 0.9  # a cross-entropy plateau at 90% of ln(classes) or above: the model predicts almost uniformly
TINY_FACTOR = (2.0, 10.0)
PLATEAU_FACTOR = (2.0, 10.0)
DEFAULT_FACTOR = 2.0


def check(run, params):
    found = stats.loss_while_learning(run, DETECTOR.name, params["min_lr_fraction"], params["min_points"])
    if isinstance(found, Skipped):
        return found
    metric, loss, judged, sched = found
    plateau = find_plateau(loss, sched, PLATEAU.params, PLATEAU.params["min_points"], min_bin=TRAIN_BIN)
    stalled = is_stall(plateau, PLATEAU.params)
    # progress over the later half of the judged steps: an early fast fall says nothing about the lr now
    late = judged.iloc[len(judged) // 2:]
    drop = 1.0 - float(np.median(late.tail(max(3, len(late) // 5)))) / float(
        np.median(late.head(max(3, len(late) // 5))))
    ratio = stats.median_update_ratio(run, judged)
    metrics = {"loss_drop": drop, "judged_from": int(judged.index[0]), "judged_to": int(judged.index[-1])}
    if sched.peak_lr:
        metrics["peak_lr"] = sched.peak_lr
    if ratio is not None:
        metrics["update_ratio"] = ratio
    if plateau is not None:
        metrics.update(plateau_level=plateau.level, plateau_from=plateau.first_step)

    source = "from the data"
    if ratio is not None and ratio < params["tiny_ratio"] and drop < params["fast_progress"]:
        factor = float(np.clip(TARGET_RATIO / ratio, *TINY_FACTOR))
        why = (f"the median update ratio {stats.fmt_num(ratio)} is below {stats.fmt_num(params['tiny_ratio'])}: "
               f"each step moves the weights by a {stats.fmt_num(ratio)} fraction")
        severity, confidence = Severity.WARNING, Confidence.HIGH
        basis = f"update ratio {stats.fmt_num(ratio)} -> ~{stats.fmt_num(TARGET_RATIO)}"
    elif ratio is not None and ratio < params["low_ratio"] and stalled and drop > -params["fast_progress"] / 5:
        factor = float(np.clip(TARGET_RATIO / ratio, *PLATEAU_FACTOR))
        why = (f"the loss has stalled near {stats.fmt_num(plateau.level)} since step {plateau.first_step} while "
               f"the median update ratio is only {stats.fmt_num(ratio)}")
        severity, confidence = Severity.WARNING, Confidence.MEDIUM
        if TARGET_RATIO / ratio >= PLATEAU_FACTOR[0]:
            basis = f"update ratio {stats.fmt_num(ratio)} towards ~{stats.fmt_num(TARGET_RATIO)}"
        else:
            basis = (f"the update ratio {stats.fmt_num(ratio)} is at the low end of healthy (1e-3..1e-2) and the "
                     "loss has stalled: x2 is the smallest step worth a re-run")
    elif ratio is None and stalled and drop > -params["fast_progress"] / 5 and lr_known_low(run, sched, params) and \
            stats.noise_std(stats.log_values(judged).to_numpy()) < params["smooth_noise"]:
        factor = DEFAULT_FACTOR
        why = (f"the loss has stalled near {stats.fmt_num(plateau.level)} since step {plateau.first_step} with "
               "smooth, small steps (no update ratio is logged to confirm)")
        severity, confidence = Severity.INFO, Confidence.LOW
        basis = "the slope of a loss limited by step size grows about linearly with the lr"
        stuck = _stuck_at_chance(run, metric, plateau, sched, params)
        if stuck is not None:
            # nothing learned at an lr orders of magnitude under any usual one: the lr is the suspect, not a maybe
            chance, lr_now = stuck
            factor = float(np.clip(params["typical_lr"] / lr_now, *PLATEAU_FACTOR))
            why += (f", {stats.share_of(plateau.level / chance.value)} chance level {chance.describe()}: the model "
                    "has learned nothing")
            severity, confidence = Severity.WARNING, Confidence.MEDIUM
            source = "from usual practice"
            basis = (f"lr {stats.fmt_num(lr_now)} is {params['typical_lr'] / lr_now:.0f}x under "
                     f"{stats.fmt_num(params['typical_lr'])}, the low end of usual AdamW lrs; x10 at most at once")
    else:
        return []
    lr = stats.hparam_number(run, "lr") or sched.peak_lr
    at_peak = sched.lr_at(int(judged.index[0])) if sched.peak_lr else None
    lr_text = f"lr {stats.fmt_num(lr)}" if lr else "the lr (value unknown)"
    if at_peak and lr and abs(at_peak / lr - 1) > 0.05:
        lr_text += f" ({stats.fmt_num(at_peak)} effective after warmup)"
        metrics["effective_lr"] = at_peak
    message = (f"{lr_text} is too low: {why}; the loss {_moved(drop)} from step {int(late.index[0])} to "
               f"{int(late.index[-1])}.")
    recs = []
    if lr:
        recs.append(Recommendation(
            "lr", lr, stats.round_sig(lr * factor, 2),
            f"x{factor:.1f} {source} ({basis}); the loss {_moved(drop, only='')} over steps "
            f"{int(late.index[0])}-{int(late.index[-1])}"))
    warm_recs = _warmup_rec(run, sched, params)
    recs.extend(warm_recs)
    metrics["lr_factor"] = factor
    ev_steps = [int(judged.index[0]), int(judged.index[len(judged) // 2]), int(judged.index[-1])]
    evidence = evidence_at(run, metric, ev_steps)
    if ratio is not None:
        evidence += evidence_at(run, "update_ratio", [int(judged.index[-1])])
    first = plateau.first_step if stalled else int(judged.index[0])
    return [DETECTOR.finding(message, first, int(judged.index[-1]), severity=severity, confidence=confidence,
                             metrics=metrics, recommendations=recs, evidence=evidence)]


def _moved(drop: float, only: str = "only ") -> str:
    """'fell only 1.2%', 'rose 0.3%' or 'did not move' (not 'fell only -0.0%')."""
    if round(drop, 3) > 0:
        return f"fell {only}{drop:.1%}"
    return f"rose {-drop:.1%}" if round(drop, 3) < 0 else "did not move"


def _stuck_at_chance(run, metric, plateau, sched, params):
    """(chance level, lr) when a cross-entropy loss sits at `at_chance` of chance level or above with an lr more
    than `far_below` times under typical_lr (hf_lr_too_low: lr 1e-6, 4.715 = 97% of ln 128); else None."""
    chance = stats.chance_level(run)
    ce = stats.cross_entropy_loss(run)
    lr = stats.hparam_number(run, "lr") or sched.peak_lr
    if chance is None or ce is None or ce[0] != metric or not lr or plateau is None:
        return None
    if plateau.level < params["at_chance"] * chance.value or lr * params["far_below"] >= params["typical_lr"]:
        return None
    return chance, lr


def lr_known_low(run, sched, params) -> bool:
    """The peak lr is known and below typical_lr (without update sizes, only a low lr makes the lr a suspect)."""
    lr = stats.hparam_number(run, "lr") or sched.peak_lr
    return bool(lr) and lr < params["typical_lr"]


def _warmup_rec(run, sched, params) -> list[Recommendation]:
    """warmup_ratio -> 0.06 when the warmup takes more than long_warmup of the run."""
    total = stats.hparam_number(run, "max_steps")
    ratio = stats.hparam_number(run, "warmup_ratio")
    warm = stats.hparam_number(run, "warmup_steps")
    if not ratio and warm and total:
        ratio = warm / total
    if not ratio and sched.warmup_end and total:
        ratio = sched.warmup_end / total
    if not ratio or ratio <= params["long_warmup"]:
        return []
    if not stats.hparam_number(run, "warmup_ratio") and warm and total:
        # the run sets its warmup in steps (HF: warmup_steps overrides warmup_ratio): change the setting it uses
        return [Recommendation(
            "warmup_steps", int(warm), max(1, round(SHORT_WARMUP * total)),
            f"warmup takes {ratio:.0%} of the run ({int(warm)} of {int(total)} steps) at an already low lr; "
            f"{SHORT_WARMUP:.0%} reaches the peak sooner (RoBERTa uses 6%)")]
    return [Recommendation(
        "warmup_ratio", stats.round_sig(ratio, 2), SHORT_WARMUP,
        f"warmup takes {ratio:.0%} of the run at an already low lr; {SHORT_WARMUP:.0%} reaches the peak sooner "
        "(RoBERTa uses 6%)")]


DETECTOR = Detector(
    code="O001", name="lr-too-low", severity=Severity.WARNING,
    summary="the lr is too small to make progress: tiny updates and a stalled or crawling loss",
    doc=__doc__,
    params={"tiny_ratio": TINY_RATIO, "low_ratio": LOW_RATIO, "fast_progress": FAST_PROGRESS,
            "smooth_noise": SMOOTH_NOISE, "min_lr_fraction": MIN_LR_FRACTION, "typical_lr": TYPICAL_LR,
            "long_warmup": LONG_WARMUP, "far_below": FAR_BELOW, "at_chance": AT_CHANCE, "min_points": MIN_POINTS},
    check=check, requires=("loss", "lm_loss"),
)
