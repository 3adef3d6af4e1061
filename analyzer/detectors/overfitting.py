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
    WER, F1, BLEU, ...) kept improving after the eval-loss minimum and is still at its best in one of the last
    `min_tail` evaluations, since then the rise is the loss's over-confidence rather than worse predictions. A
    metric that improved after the eval-loss minimum but has been no better since (hf_whisper_overfit: eval_wer
    0.789 -> 0.743 by step 3000, 0.745 at 5000, while eval_loss rose another 7%) makes it a warning: the last
    evaluations brought nothing but a higher eval loss.
What it recommends:
    Stop training where the model was best: `max_steps` set to the step of the eval-loss minimum, or of the quality
    metric's best where that came later (and select or restart from the checkpoint nearest to it, named when one
    exists; no earlier stop while the quality metric is still at its best at the end), and raise `weight_decay`
    x10 (0.01 when unset or 0) if training should continue longer.
Parameters:
    min_rise (default 0.1): how far above its minimum the eval loss must end (0.1 = +10%).
    min_evals (default 4): fewest eval-loss points.
    min_tail (default 2): the last evaluations that must all be above the minimum by min_rise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    loss_min_step = int(steps[best])
    quality = _quality(run, loss_min_step, params["min_tail"])
    improving = quality is not None and quality.still_improving
    severity = Severity.INFO if improving else Severity.WARNING
    # where a quality metric improved past the eval-loss minimum, its best step is the model to keep
    stop_step = quality.best_step if quality is not None else loss_min_step
    metrics = {"eval_min": minimum, "eval_min_step": loss_min_step, "eval_final": final,
               "rise": final / minimum, "train_at_eval_min": train_then, "train_final": train_now}
    said = ""
    if quality is not None:
        metrics.update(quality_metric=quality.name, quality_at_min=quality.at_loss_min, quality_best=quality.best,
                       quality_best_step=quality.best_step, quality_final=quality.final,
                       quality_still_improving=improving)
        if improving:
            said = (f"; {quality.name} still improved ({stats.fmt_num(quality.at_loss_min)} -> "
                    f"{stats.fmt_num(quality.final)}), so the rise is over-confidence more than worse predictions")
        else:
            said = (f"; {quality.name} improved only until step {quality.best_step} "
                    f"({stats.fmt_num(quality.at_loss_min)} -> {stats.fmt_num(quality.best)}) and not since "
                    f"({stats.fmt_num(quality.final)} at step {quality.final_step}), so the evaluations after it "
                    "brought a higher eval loss and no better predictions")
    ckpt = _nearest_checkpoint(run, stop_step)
    pick = f"; the nearest checkpoint is {ckpt.path} (step {ckpt.step})" if ckpt is not None else ""
    message = (f"eval_loss rose from its minimum {stats.fmt_num(minimum, 4)} at step {loss_min_step} to "
               f"{stats.fmt_num(final, 4)} at step {int(steps[-1])} ({final / minimum - 1:+.0%}) while {metric} "
               f"fell from {stats.fmt_num(train_then)} to {stats.fmt_num(train_now)}{said}{pick}.")
    if stop_step == loss_min_step:
        why_stop = (f"the eval loss was lowest at step {loss_min_step} and {final / minimum - 1:+.0%} higher by the "
                    f"end; stopping there keeps the best model{pick}")
    else:
        at_stop = float(ev.loc[stop_step]) if stop_step in ev.index else None
        later = (f" while the eval loss rose {final / at_stop - 1:+.0%} after it" if at_stop else "")
        why_stop = (f"{quality.name} was best at step {stop_step} ({stats.fmt_num(quality.best)}, "
                    f"{stats.fmt_num(quality.at_loss_min)} at the eval-loss minimum, step {loss_min_step}) and no "
                    f"better since{later}; stopping there keeps the best predictions{pick}")
    # a quality metric still at its best at the end says the later steps did help: no earlier stop to suggest
    recs = [] if improving else [
        Recommendation("max_steps", stats.hparam_number(run, "max_steps"), stop_step, why_stop)]
    wd = stats.hparam_number(run, "weight_decay")
    recs.append(Recommendation(
        "weight_decay", wd, DEFAULT_WEIGHT_DECAY if not wd else stats.round_sig(wd * WEIGHT_DECAY_FACTOR, 2),
        f"the train loss fell to {stats.fmt_num(train_now)} while the eval loss rose: more regularisation "
        f"(weight decay {'unknown' if wd is None else stats.fmt_num(wd)} -> higher) slows memorisation if "
        "training must run longer"))
    evidence = evidence_at(run, "eval_loss", [int(steps[best]), int(steps[-1])]) + \
        evidence_at(run, metric, [int(at_end.index[-1])])
    if quality is not None:
        evidence += evidence_at(run, quality.name, [quality.best_step])
    return [DETECTOR.finding(message, int(steps[best]), int(steps[-1]), severity=severity,
                             confidence=Confidence.HIGH, metrics=metrics, recommendations=recs, evidence=evidence)]


@dataclass(frozen=True)
class Quality:
    """An eval quality metric that improved after the eval-loss minimum."""

    name: str
    at_loss_min: float  # its value at (or last before) the eval-loss minimum
    best: float
    best_step: int
    final: float
    final_step: int
    still_improving: bool  # its best is among the last `min_tail` evaluations


def _quality(run, loss_min_step: int, min_tail: int) -> Quality | None:
    """The eval quality metric that improved after the eval-loss minimum: one still at its best at the end first."""
    found = []
    for name in run.metrics:
        if name == "eval_loss" or not QUALITY_METRIC.search(name):
            continue
        series = stats.finite(run.series(name))
        then = series[series.index <= loss_min_step]
        after = series[series.index > loss_min_step]
        if not len(then) or not len(after):
            continue
        sign = 1.0 if LOWER_IS_BETTER.search(name) else -1.0  # compare as "lower is better"
        scored = sign * after.to_numpy(dtype="float64")
        # the last of equal bests: a metric that holds its best to the end is still at its best
        at = len(scored) - 1 - int(np.argmin(scored[::-1]))
        start = float(then.iloc[-1])
        if not scored[at] < sign * start:
            continue
        tail_from = len(series) - min_tail
        found.append(Quality(name, start, float(after.iloc[at]), int(after.index[at]), float(series.iloc[-1]),
                             int(series.index[-1]), series.index.get_loc(after.index[at]) >= tail_from))
    return next((q for q in found if q.still_improving), found[0] if found else None)


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
