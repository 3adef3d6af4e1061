"""Overfitting: the eval loss rises well above its best value while the training loss keeps falling.

What it detects:
    The eval (validation) loss reaches its lowest value and then climbs at least `min_rise` (relative) above it,
    staying above for the remaining evaluations, while the training loss over the same steps fell. Example:
    hf_whisper_overfit, eval_loss 0.3210 -> 0.4200 while the train loss goes to 0.0002.
Why it matters:
    The model memorises the training set: the weights after the eval minimum generalise worse (at least in loss), so
    the steps after it are wasted and the last checkpoint is not the best one. It is the classic signal for early
    stopping or more regularisation. It is kept apart from loss-divergence, where the training loss itself rises.
How it decides:
    Needs at least `min_evals` finite eval_loss points. The eval minimum must be followed by at least two
    evaluations, the last `min_tail` of which are all more than `min_rise` above the minimum (so one bad eval is not
    enough), and the median training loss over the last evaluation interval must be below the median training loss
    around the eval minimum (train still improving). Severity: warning; info when another eval metric (accuracy,
    WER, F1, BLEU, ...) kept improving after the eval-loss minimum, since then the rise is the loss's
    over-confidence rather than worse predictions.
What it recommends:
    Stop training at the eval minimum: `max_steps` set to the step of the minimum (and select or restart from the
    checkpoint nearest to it, named when one exists), and raise `weight_decay` x10 (0.01 when unset or 0) if
    training should continue longer.
Parameters:
    min_rise (default 0.1): how far above its minimum the eval loss must end (0.1 = +10%).
    min_evals (default 4): fewest eval-loss points.
    min_tail (default 2): the last evaluations that must all be above the minimum by min_rise.
"""

from __future__ import annotations

import re

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

MIN_RISE = 0.1  # +10%: eval noise between evaluations on a fixed set is usually a few %
MIN_EVALS = 4
MIN_TAIL = 2
DEFAULT_WEIGHT_DECAY = 0.01
WEIGHT_DECAY_FACTOR = 10.0
# eval metrics where lower is better; any other eval metric matching QUALITY_METRIC is higher-is-better
LOWER_IS_BETTER = re.compile(r"(wer|cer|error|perplexity|ppl)")
QUALITY_METRIC = re.compile(r"^eval_.*(acc|wer|cer|f1|bleu|rouge|exact|match|error|auc|precision|recall)")


def check(run, params):
    if not run.has("eval_loss"):
        return Skipped(DETECTOR.name, "the run logs no eval loss")
    ev = stats.finite(run.series("eval_loss"))
    if len(ev) < params["min_evals"]:
        return Skipped(DETECTOR.name, f"only {len(ev)} finite eval-loss points; needs {params['min_evals']}")
    found = stats.train_loss(run)
    if found is None:
        return Skipped(DETECTOR.name, "the run logs no finite training loss to compare with")
    metric, train = found
    values = ev.to_numpy()
    steps = ev.index.to_numpy()
    best = int(np.argmin(values))
    tail = values[-params["min_tail"]:]
    if len(values) - best < 3 or best >= len(values) - params["min_tail"]:
        return []
    minimum = float(values[best])
    if minimum <= 0 or not np.all(tail > minimum * (1 + params["min_rise"])):
        return []
    interval = float(np.median(np.diff(steps)))
    near_best = train[(train.index > steps[best] - interval) & (train.index <= steps[best])]
    at_end = train[train.index > steps[-1] - interval]
    if not len(near_best) or not len(at_end):
        return []
    train_then, train_now = float(np.median(near_best)), float(np.median(at_end))
    if not train_now < train_then:
        return []
    final = float(values[-1])
    better = _improved_quality(run, int(steps[best]))
    severity = Severity.INFO if better else Severity.WARNING
    metrics = {"eval_min": minimum, "eval_min_step": int(steps[best]), "eval_final": final,
               "rise": final / minimum, "train_at_eval_min": train_then, "train_final": train_now}
    quality = ""
    if better:
        name, then, now = better
        metrics.update(quality_metric=name, quality_at_min=then, quality_final=now)
        quality = (f"; {name} still improved ({stats.fmt_num(then)} -> {stats.fmt_num(now)}), so the rise is "
                   "over-confidence more than worse predictions")
    ckpt = _nearest_checkpoint(run, int(steps[best]))
    pick = f"; the nearest checkpoint is {ckpt.path} (step {ckpt.step})" if ckpt is not None else ""
    message = (f"eval_loss rose from its minimum {stats.fmt_num(minimum, 4)} at step {int(steps[best])} to "
               f"{stats.fmt_num(final, 4)} at step {int(steps[-1])} ({final / minimum - 1:+.0%}) while {metric} "
               f"fell from {stats.fmt_num(train_then)} to {stats.fmt_num(train_now)}{quality}{pick}.")
    recs = [Recommendation(
        "max_steps", stats.hparam_number(run, "max_steps"), int(steps[best]),
        f"the eval loss was lowest at step {int(steps[best])} and {final / minimum - 1:+.0%} higher by the end; "
        f"stopping there keeps the best model{pick}")]
    wd = stats.hparam_number(run, "weight_decay")
    recs.append(Recommendation(
        "weight_decay", wd, DEFAULT_WEIGHT_DECAY if not wd else stats.round_sig(wd * WEIGHT_DECAY_FACTOR, 2),
        f"the train loss fell to {stats.fmt_num(train_now)} while the eval loss rose: more regularisation "
        f"(weight decay {'unknown' if wd is None else stats.fmt_num(wd)} -> higher) slows memorisation if "
        "training must run longer"))
    evidence = evidence_at(run, "eval_loss", [int(steps[best]), int(steps[-1])]) + \
        evidence_at(run, metric, [int(at_end.index[-1])])
    return [DETECTOR.finding(message, int(steps[best]), int(steps[-1]), severity=severity,
                             confidence=Confidence.HIGH, metrics=metrics, recommendations=recs, evidence=evidence)]


def _improved_quality(run, best_step: int):
    """(metric, value at the eval-loss minimum, final value) of an eval quality metric that kept improving."""
    for name in run.metrics:
        if name == "eval_loss" or not QUALITY_METRIC.search(name):
            continue
        series = stats.finite(run.series(name))
        then = series[series.index <= best_step]
        if not len(then) or series.index[-1] <= best_step:
            continue
        a, b = float(then.iloc[-1]), float(series.iloc[-1])
        lower_better = bool(LOWER_IS_BETTER.search(name))
        if (b < a) if lower_better else (b > a):
            return name, a, b
    return None


def _nearest_checkpoint(run, step: int):
    usable = [c for c in run.checkpoints if c.step is not None and not c.error]
    if not usable:
        return None
    return min(usable, key=lambda c: (abs(c.step - step), c.step))


DETECTOR = Detector(
    code="L006", name="overfitting", severity=Severity.WARNING,
    summary="the eval loss rises well above its minimum while the training loss keeps falling",
    doc=__doc__,
    params={"min_rise": MIN_RISE, "min_evals": MIN_EVALS, "min_tail": MIN_TAIL},
    check=check, requires=("eval_loss",),
)
