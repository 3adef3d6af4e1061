"""perplexity-misreport: logged perplexity that is not exp(loss): capped for display, or in the wrong base.

What it detects:
    A logged perplexity (ppl, eval_ppl) that differs from the perplexity of the loss logged at the same step:
    a display cap (seed 002 printed `ppl: 485165195.41` = exp(20) for an eval loss of 28.41, whose perplexity is
    2.2e12), a base mix-up (exp() of a base-2 loss, or 2**loss of a loss in nats), or any other disagreement.
Why it matters:
    Perplexity is exponential in the loss: a cap at exp(20) hides a model that is a million times worse than the
    number says, and the wrong base changes the figure by orders of magnitude. A report that quotes it misleads
    everyone who reads it.
How it decides:
    The perplexity is paired point by point with each loss logged at the same steps (lm_loss before loss, as
    distillation runs report the LM part's perplexity; eval_lm_loss before eval_loss), in base e and base 2; the
    pairing that explains most points is the convention. Points that differ by more than tolerance (in log space)
    are misreports. A constant perplexity while exp(loss) is larger, or a value that is exp() of a round number,
    is a display cap; other disagreements count when they hold at min_share of the points (scattered ones are
    rounding or per-batch averaging). fairseq logs base-2 losses with ppl = 2**loss: that is correct where the
    run's loss base is 2 (loss_base, set by the text reader); 2**loss with an unknown base is only noted. A
    misreport is a warning when the logged number is off by `hidden_factor` or more somewhere (seed 002: exp(28.4)
    shown as exp(20), 4500x too small), else info: a cap that hides a factor of 2 misleads nobody about the state
    of the run.
What it recommends:
    Reporting the true perplexity (given in the message): drop the display cap or print the loss alongside. There
    is no hyperparameter to change; the loss behind the number is what other findings act on.
Parameters:
    tolerance (default 0.05): the largest |ln(ppl) - loss x ln(base)| that still counts as a match (5%).
    hidden_factor (default 100.0): a logged perplexity off by at least this factor is a warning, else info.
    min_share (default 0.1): a disagreement that is not a cap must hold at this share of the shared points.
"""

from __future__ import annotations

import math

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Evidence, Severity, Skipped

TOLERANCE = 0.05  # log space: 5% covers printing precision and window averages
MIN_SHARE = 0.1  # a disagreement that is not a cap must hold at this share of the points
HIDDEN_FACTOR = 100.0  # two orders of magnitude: a number that far off changes what a reader concludes
ROUND_CAP = 1e-3  # ln(ppl) this close to a whole number is exp(N) printed from a cap
PAIRS = (("ppl", ("lm_loss", "loss")), ("eval_ppl", ("eval_lm_loss", "eval_loss")))
BASES = ((math.e, "exp(loss)"), (2.0, "2**loss"))


def check(run, params):
    tol = params["tolerance"]
    findings, reasons = [], []
    for ppl_name, loss_names in PAIRS:
        if not run.has(ppl_name):
            continue
        best = _best_pairing(run, ppl_name, loss_names, tol)
        if best is None:
            reasons.append(f"{ppl_name} is logged but no loss at the same steps")
            continue
        finding = _judge(run, ppl_name, best, tol, params)
        if finding is not None:
            findings.append(finding)
    if not findings and reasons:
        return Skipped(DETECTOR.name, "; ".join(reasons))
    return findings


def _best_pairing(run, ppl_name, loss_names, tol):
    """(loss name, base, base label, joined frame) explaining the most points; natural base wins ties."""
    ppl = stats.finite(run.series(ppl_name))
    ppl = ppl[ppl > 0]
    candidates = []
    for order, loss_name in enumerate(loss_names):
        if not run.has(loss_name):
            continue
        loss = stats.finite(run.series(loss_name))
        steps = ppl.index.intersection(loss.index)
        if not len(steps):
            continue
        log_ppl = np.log(ppl.loc[steps].to_numpy())
        values = loss.loc[steps].to_numpy()
        for b_order, (base, label) in enumerate(BASES):
            diff = log_ppl - values * math.log(base)
            matches = int((np.abs(diff) <= tol).sum())
            candidates.append((-matches, order, b_order, loss_name, base, label, steps, log_ppl, values, diff))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[:3])
    return candidates[0][3:]


def _judge(run, ppl_name, best, tol, params):
    loss_name, base, label, steps, log_ppl, values, diff = best
    bad = np.abs(diff) > tol
    declared = stats.loss_base(run)
    if not bad.any():
        informative = np.abs(values) * (1 - math.log(2)) > tol  # points where the two bases differ measurably
        if not informative.any():
            return None
        if base == 2.0 and declared != 2.0:
            step = int(steps[informative][0])
            return DETECTOR.finding(
                f"{ppl_name} equals 2**{loss_name} at all {len(steps)} shared steps: right only if {loss_name} is "
                f"in bits (base 2, as fairseq logs it); if it is in nats the perplexity is exp({loss_name}).",
                step, int(steps[-1]), severity=Severity.INFO, confidence=Confidence.LOW,
                metrics={"convention": "2**loss", "points": len(steps)},
                evidence=evidence_at(run, ppl_name, [step]))
        if base == math.e and declared == 2.0:
            i = int(np.flatnonzero(informative)[0])
            step = int(steps[i])
            true = 2.0 ** values[i]
            hidden = _hidden_factor(log_ppl[informative], values[informative] * math.log(2.0))
            return DETECTOR.finding(
                f"{ppl_name} is exp({loss_name}) but {loss_name} is a base-2 loss (loss_base 2): at step {step} "
                f"it reads {stats.fmt_num(math.exp(log_ppl[i]))} where the perplexity is 2**{values[i]:.4g} = "
                f"{stats.fmt_num(true)}.",
                step, int(steps[-1]), severity=Severity.WARNING if hidden >= params["hidden_factor"]
                else Severity.INFO, confidence=Confidence.HIGH,
                metrics={"convention": "exp(loss)", "loss_base": 2, "first_logged": math.exp(log_ppl[i]),
                         "first_true": true, "points": int(informative.sum()), "hidden_factor": hidden},
                evidence=evidence_at(run, ppl_name, [step]) + evidence_at(run, loss_name, [step]))
        return None

    idx = np.flatnonzero(bad)
    first = int(idx[0])
    step = int(steps[first])
    logged = math.exp(log_ppl[first])
    true_base = 2.0 if declared == 2.0 else base
    truth = f"exp({loss_name})" if true_base == math.e else f"2**{loss_name}"
    true = _safe_exp(values[first] * math.log(true_base))
    under = diff[idx] < 0
    cap_logs = log_ppl[idx]
    capped = bool(under.all() and (np.ptp(cap_logs) <= tol if len(idx) > 1
                                   else abs(cap_logs[0] - round(cap_logs[0])) <= ROUND_CAP))
    if not capped and len(idx) < params["min_share"] * len(steps):
        return None  # scattered small disagreements: per-batch averaging or rounding, not a misreport
    worst = int(idx[np.argmax(values[idx])])
    evidence = list(evidence_at(run, ppl_name, [step])) + list(evidence_at(run, loss_name, [step]))
    evidence += [Evidence(e.file, e.line, e.text) for e in run.events_of("warning")
                 if "perplexity" in (e.text or "").lower()][:2]
    metrics = {"convention": label, "mismatched_points": len(idx), "points": len(steps),
               "first_logged": logged, "first_true": true, "first_loss": float(values[first]),
               "worst_loss": float(values[worst]), "worst_true": _safe_exp(values[worst] * math.log(true_base))}
    if capped:
        cap = float(np.median(cap_logs)) / math.log(base)
        metrics["cap_loss"] = round(cap, 4)
        message = (f"{ppl_name} is capped at {label.replace('loss', stats.fmt_num(cap))} = {stats.fmt_num(logged)} "
                   f"at {len(idx)} of {len(steps)} points from step {step}: {loss_name} is "
                   f"{values[first]:.4g} there, so the true perplexity is {truth} = {stats.fmt_num(true)}")
        if worst != first:
            message += (f" (up to {stats.fmt_num(metrics['worst_true'])} at loss {values[worst]:.4g})")
        confidence = Confidence.HIGH
    else:
        message = (f"{ppl_name} differs from {truth} at {len(idx)} of {len(steps)} points from step {step}: it "
                   f"reads {stats.fmt_num(logged)} where {loss_name} {values[first]:.4g} gives "
                   f"{stats.fmt_num(true)}")
        confidence = Confidence.MEDIUM
    hidden = _hidden_factor(log_ppl[idx], values[idx] * math.log(true_base))
    metrics["hidden_factor"] = hidden
    severity = Severity.WARNING if hidden >= params["hidden_factor"] else Severity.INFO
    return DETECTOR.finding(message + ".", step, int(steps[idx[-1]]), severity=severity,
                            confidence=confidence, metrics=metrics, evidence=evidence[:5])


def _hidden_factor(logged_log: np.ndarray, true_log: np.ndarray) -> float:
    """The largest factor by which the logged perplexity understates (or overstates) the true one."""
    gap = float(np.max(np.abs(true_log - logged_log)))
    return math.exp(gap) if gap < 709 else math.inf


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf


DETECTOR = Detector(
    code="N003", name="perplexity-misreport", severity=Severity.WARNING,
    summary="logged perplexity differs from exp(loss): capped for display or in the wrong base",
    doc=__doc__, params={"tolerance": TOLERANCE, "hidden_factor": HIDDEN_FACTOR, "min_share": MIN_SHARE}, check=check,
    requires=("ppl", "eval_ppl"),
)
