"""distill-temperature-blowup: a knowledge-distillation loss inflated by T^2 to a size that destabilises training.

What it detects:
    A distillation term that is the raw KL divergence multiplied by the squared temperature, grown so large that
    it dominates the loss (seed 002: temperature 3.0, T^2 = 9, raw KL ~4.2, KD term ~38 where the total should be
    5-10; the run then oscillated, overflowed fp16 and went NaN at step 436).
Why it matters:
    Hinton et al. multiply the soft-target loss by T^2 so its gradients keep their size as T grows; DistilBERT
    does too, torchdistill only alongside a hard-label term, and TRL's GKD never does. With T = 3 the factor is 9:
    the KD term's value dwarfs the LM loss in the total, which then hides what the LM loss does and makes the
    loss's size say little about training. Its gradient does not grow with T^2: d(T^2 KL)/dz = T (p_s - p_t) on
    the student's logits z, and a lower T sharpens both distributions, so the raw KL, the logits and the gradient
    norm tend to rise as T falls. A lower temperature rebalances the loss; it is no fix for NaN. The reference
    trainer's KD run (fp16, a hand-written softmax in its LM loss) went NaN at T = 3 (step 220) and at T = 2 (step
    333 of 1000, max grad norm 4.59 -> 12.6): exp() in float16 overflows once a logit passes ln(65504) = 11.09,
    whatever T is. nonfinite-onset recommends the fix for that (a stable softmax, in fp32), and with it the run
    is clean over 1000 steps at either temperature.
How it decides:
    T comes from the logged temperature (or sqrt of a logged T^2), else from hparams. Whether the code multiplies by
    T^2 is read from the data, never assumed: with kd_loss and kd_raw both logged, their ratio is compared with
    T^2 (multiplies), alpha x T^2 (multiplies and weights) or 1 (does not). With kd_raw alone, two readings are
    tested: it is the raw KL (the term is kd_raw x T^2) or it is already the scaled term (raw KL = kd_raw / T^2,
    as in seed 002's log, where "KD Raw: 38.0254" with T^2 = 9 is the write-up's raw KL of 4.2 times 9). A reading
    whose term exceeds the total loss (train, else eval) by more than 1 / min_kd_weight is rejected; without a
    total, a "raw" KL above max_raw_kl nats is taken as already scaled (low confidence); the message says which
    reading was inferred. The term is large when its median is above size_factor x a fresh LM loss (the chance
    level ln(vocab_size), else the early lm_loss, else 10). The finding fires when T^2 is at least `inflation` and
    the term is large or the run went non-finite (a NaN, a clamp or filter that turned a loss into 0.0), or when
    the term is large at any T^2 of at least min_inflation. It is critical when the term is above critical_factor x
    its size limit, or large in a run that went non-finite; an inflated term of ordinary size in a run that went
    non-finite is a warning, since NaN is no evidence against the temperature (see above). A code that does not multiply by T^2 (kd_loss =
    kd_raw) is never flagged. Oscillation, overflow and NaN are judged by their own detectors; the chain links them.
What it recommends:
    temperature: the largest value on a 0.5 grid below the current one whose T^2 is at most stable_t_squared (when
    T^2 was inflated) and whose T^2 x raw KL is within size_factor x a fresh LM loss (seed 002: 3.0 -> 2.0, T^2
    9 -> 4, KD ~38 -> ~17); min_temperature: the largest grid value below that whose term is within one fresh LM
    loss, to anneal to (seed 002: 1.5, T^2 2.25, KD ~9.5). The sizes assume the raw KL stays as it is; it rises
    as T falls, so the term shrinks by less than T^2 says (the reference trainer's raw KL at step 0: 0.63 at T = 3,
    2.36 at T = 2).
Parameters:
    inflation (default 6.25): T^2 from which the factor itself is a risk (T = 2.5, seed 002's "marginal").
    stable_t_squared (default 4.0): the largest T^2 a recommended temperature may have (T = 2).
    size_factor (default 2.0): a KD term above this many fresh LM losses is large.
    min_inflation (default 2.0): a T^2 below this is no inflation worth a finding (T < 1.41).
    critical_factor (default 1.5): a KD term above this many times its size limit is critical.
    max_raw_kl (default 10.0): nats; a logged "raw" KL above this is most likely already multiplied by T^2.
    min_kd_weight (default 0.1): the smallest weight a KD term can plausibly have in the total loss.
    ratio_tolerance (default 0.15): relative tolerance when matching kd_loss / kd_raw with T^2.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Evidence, Recommendation, Severity, Skipped

INFLATION = 6.25  # T = 2.5: seed 002's table calls T^2 = 6.25 "marginal", 9 "unstable", 4 "good"
STABLE_T_SQUARED = 4.0  # T = 2: seed 002's fix, and DistilBERT's temperature with the same T^2 factor
SIZE_FACTOR = 2.0  # a KD term above twice a fresh LM loss dominates the total (seed 002: ~38 against ~10)
DEFAULT_LM_REFERENCE = 10.0  # a fresh LM loss when the vocabulary is unknown (ln 50257 = 10.8 for GPT-2)
MIN_INFLATION = 2.0
CRITICAL_FACTOR = 1.5
HIDDEN_ZERO_FROM = 0.5  # as nonfinite-onset: a loss that was at least this before reading exactly 0.0
MAX_RAW_KL = 10.0  # KL between T-softened distributions is rarely above ln(V) of a 20k vocabulary
MIN_KD_WEIGHT = 0.1
RATIO_TOLERANCE = 0.15
GRID = 0.5  # temperatures people set: 1.0, 1.5, 2.0, ...
MIN_TEMPERATURE = 1.0  # below 1 a temperature sharpens instead of softening
T_SQUARED = re.compile(r"^(temp(erature)?|t)(_?squared|_?sq|²|\^2|_2|¬≤)$", re.I)
NONFINITE_LOSSES = ("loss", "lm_loss", "kd_loss", "kd_raw", "eval_loss")
NO_T_SQUARED = "kd_loss = kd_raw: the code does not multiply by T^2"


def check(run, params):
    if not (run.has("kd_raw") or run.has("kd_loss")):
        return Skipped(DETECTOR.name, "the run logs no kd_raw or kd_loss (not a distillation run, or the KD term "
                                      "is not logged)")
    temp, t_source, t_evidence = _temperature(run)
    kd_raw = _positive(run, "kd_raw")
    kd_loss = _positive(run, "kd_loss")
    if kd_raw is None and kd_loss is None:
        return Skipped(DETECTOR.name, "kd_raw / kd_loss hold no finite positive value")
    alpha = stats.hparam_number(run, "alpha")

    if temp is None and kd_raw is not None and kd_loss is not None:
        ratio = _median_ratio(kd_loss, kd_raw)
        if ratio is not None and ratio > 1.0:
            temp = pd.Series([math.sqrt(ratio)], index=[int(kd_raw.index[0])])
            t_source = "inferred from kd_loss / kd_raw"
    if temp is None or not len(temp):
        return Skipped(DETECTOR.name, "no temperature is logged or configured")
    t0 = float(temp.iloc[0])
    t_sq = t0 * t0
    if t_sq < params["min_inflation"]:
        return []

    reading = _reading(run, kd_raw, kd_loss, temp, alpha, params)
    if reading is None:
        return []
    term, raw, term_metric, convention, confidence = reading
    if convention == NO_T_SQUARED or not len(term):
        return []
    term_median = float(np.median(term.to_numpy()))
    raw_median = float(np.median(raw.to_numpy()))
    lm_ref, lm_ref_text = _lm_reference(run)
    size_target = params["size_factor"] * lm_ref
    large = term_median > size_target
    inflated = t_sq >= params["inflation"]
    unstable_step = _first_nonfinite(run)
    if not ((inflated and (large or unstable_step is not None)) or large):
        return []

    cap = params["stable_t_squared"] if inflated else math.inf
    suggested = _grid_temperature(raw_median, size_target, t0, cap)
    min_suggested = _grid_temperature(raw_median, lm_ref, suggested, math.inf)
    share_text, metrics_share = _share(run, term, alpha)
    t_end = float(temp.iloc[-1])
    annealed = f", annealed to {_t(t_end)}" if abs(t_end - t0) > 1e-6 else ""
    size = (f"{term_median / lm_ref:.1f}x {lm_ref_text}" if large
            else f"about the size of {lm_ref_text}")
    message = (f"Temperature {_t(t0)} ({t_source}{annealed}) multiplies the KD term by T^2 = {t_sq:.3g}: a raw KL "
               f"of ~{stats.fmt_num(raw_median)} becomes ~{stats.fmt_num(term_median)} (up to "
               f"{stats.fmt_num(float(term.max()))}), {size}{share_text}; {convention}")
    if unstable_step is not None:
        message += (f"; the run went non-finite at step {unstable_step}, which a lower temperature does not prevent "
                    "(see nonfinite-onset)")
    message += (f"; temperature {_t(suggested)} (T^2 = {suggested ** 2:.3g}) would make it "
                f"~{stats.fmt_num(suggested ** 2 * raw_median)} at the same raw KL.")
    critical = (large and unstable_step is not None) or term_median > params["critical_factor"] * size_target
    current_min = stats.hparam_number(run, "min_temperature")
    recs = [Recommendation(
        "temperature", t0, suggested,
        f"T^2 drops from {t_sq:.3g} to {suggested ** 2:.3g}: the KD term goes from ~{stats.fmt_num(term_median)} to "
        f"~{stats.fmt_num(suggested ** 2 * raw_median)} at a raw KL of ~{stats.fmt_num(raw_median)} (at most "
        f"{params['size_factor']:g}x {lm_ref_text}"
        + (f", and T^2 at most {params['stable_t_squared']:g}, as in DistilBERT (T = 2)" if inflated
           else "") + "); the raw KL tends to rise as T falls, so the term shrinks by less; this rebalances the "
        "loss, it does not prevent overflow or NaN (the gradient on the logits, T (p_s - p_t), does not shrink)")]
    if min_suggested < suggested and (current_min is None or current_min > min_suggested):
        recs.append(Recommendation(
            "min_temperature", current_min, min_suggested,
            f"anneal to {_t(min_suggested)} (T^2 {min_suggested ** 2:.3g}, KD term ~"
            f"{stats.fmt_num(min_suggested ** 2 * raw_median)}, within {lm_ref_text}) so the term shrinks as "
            "training goes on" + ("" if current_min is not None else "; the current min_temperature is unknown")))
    peak_step = int(term.idxmax())
    evidence = list(evidence_at(run, term_metric, [int(term.index[0]), peak_step]))
    evidence += [e for e in t_evidence if e not in evidence]
    return [DETECTOR.finding(
        message, int(term.index[0]), int(term.index[-1]),
        severity=Severity.CRITICAL if critical else Severity.WARNING, confidence=confidence,
        metrics={"temperature": t0, "t_squared": round(t_sq, 4), "kd_term_median": term_median,
                 "kd_term_max": float(term.max()), "kd_raw_median": raw_median, "convention": convention,
                 "lm_reference": round(lm_ref, 4), "kd_term_over_lm_reference": round(term_median / lm_ref, 3),
                 "nonfinite_step": unstable_step, "suggested_temperature": suggested,
                 "suggested_min_temperature": min_suggested, **metrics_share},
        recommendations=recs, evidence=evidence[:5])]


def _positive(run, metric) -> pd.Series | None:
    if not run.has(metric):
        return None
    series = stats.finite(run.series(metric))
    series = series[series > 0]
    return series if len(series) else None


def _lm_reference(run) -> tuple[float, str]:
    """The size of a healthy LM loss at the start: the chance level, else the early lm_loss, else a default."""
    chance = stats.chance_level(run)
    if chance is not None:
        return chance.value, f"a fresh LM loss ({chance.describe()})"
    if run.has("lm_loss"):
        lm = stats.finite(run.series("lm_loss"))
        lm = lm[lm > 0]
        if len(lm):
            early = float(np.median(lm.iloc[:max(5, len(lm) // 10)].to_numpy()))
            return early, f"the early LM loss ({stats.fmt_num(early)})"
    return DEFAULT_LM_REFERENCE, f"a fresh LM loss (~{DEFAULT_LM_REFERENCE:g}, vocabulary unknown)"


def _share(run, term, alpha) -> tuple[str, dict]:
    total = _total(run)
    if total is None:
        return "", {}
    steps = term.index.intersection(total.index)
    if not len(steps):
        return "", {}
    over = float(np.median(term.loc[steps].to_numpy() / total.loc[steps].to_numpy()))
    share = over * alpha if alpha is not None else over
    total_median = float(np.median(total.loc[steps].to_numpy()))
    metrics = {"kd_share_of_total": round(share, 3), "total_median": total_median}
    if share <= 1.0:
        return f", {share:.0%} of the total loss (median {stats.fmt_num(total_median)})", metrics
    return (f", {share:.2g}x the total loss (median {stats.fmt_num(total_median)}, which weights it by ~"
            f"{1 / share:.2g})", metrics)


def _temperature(run):
    """(T series, where it came from, evidence) from the logged temperature, a logged T^2, or the hparam."""
    if run.has("temperature"):
        t = stats.finite(run.series("temperature"))
        t = t[t > 0]
        if len(t):
            return t, "logged temperature", evidence_at(run, "temperature", [int(t.index[0])])
    for metric in run.metrics:
        if T_SQUARED.match(metric):
            sq = stats.finite(run.series(metric))
            sq = sq[sq > 0]
            if len(sq):
                return np.sqrt(sq), f"logged {metric}", evidence_at(run, metric, [int(sq.index[0])])
    value = stats.hparam_number(run, "temperature")
    if value and value > 0:
        hp = run.hparams["temperature"]
        step = run.first_step or 0
        return (pd.Series([value], index=[step]), f"hparam {hp.key} in {hp.file}",
                (Evidence(hp.file, None, f"{hp.key}: {value:g}"),))
    return None, "", ()


def _median_ratio(a: pd.Series, b: pd.Series) -> float | None:
    steps = a.index.intersection(b.index)
    if not len(steps):
        return None
    den = b.loc[steps].to_numpy()
    ok = den > 0
    if not ok.any():
        return None
    return float(np.median(a.loc[steps].to_numpy()[ok] / den[ok]))


def _reading(run, kd_raw, kd_loss, temp, alpha, params):
    """(KD term, raw KL, term metric, convention, confidence), inferred from the data; T^2 follows the logged
    temperature step by step where it is annealed."""
    tol = params["ratio_tolerance"]

    def t_sq(series):
        return pd.Series(np.interp(series.index.to_numpy(dtype="float64"), temp.index.to_numpy(dtype="float64"),
                                   temp.to_numpy() ** 2), index=series.index)

    if kd_raw is not None and kd_loss is not None and len(kd_raw.index.intersection(kd_loss.index)):
        steps = kd_raw.index.intersection(kd_loss.index)
        loss, raw = kd_loss.loc[steps], kd_raw.loc[steps]
        ok = raw.to_numpy() > 0
        if not ok.any():
            return None
        ratio = float(np.median(loss.to_numpy()[ok] / (raw.to_numpy()[ok] * t_sq(raw).to_numpy()[ok])))
        if abs(ratio - 1) <= tol:
            return loss, raw, "kd_loss", "kd_loss / kd_raw = T^2: the code multiplies the KL by T^2", Confidence.HIGH
        if alpha and abs(ratio / alpha - 1) <= tol:
            return (loss, raw, "kd_loss", "kd_loss / kd_raw = alpha x T^2: the code multiplies the KL by T^2 and "
                    "alpha", Confidence.HIGH)
        plain = float(np.median(loss.to_numpy()[ok] / raw.to_numpy()[ok]))
        if abs(plain - 1) <= tol:
            return loss, raw, "kd_loss", NO_T_SQUARED, Confidence.HIGH
        return (loss, raw, "kd_loss", f"kd_loss / kd_raw = {plain:.3g}, not T^2: the factor is not T^2 alone",
                Confidence.MEDIUM)
    if kd_raw is None:
        return (kd_loss, kd_loss / t_sq(kd_loss), "kd_loss",
                "assumed: kd_loss includes the T^2 factor (no kd_raw logged to check)", Confidence.LOW)
    as_raw = kd_raw * t_sq(kd_raw)  # reading (i): kd_raw is the raw KL, the term is kd_raw x T^2
    scaled_raw = kd_raw / t_sq(kd_raw)  # reading (ii): kd_raw is already the term
    total = _total(run)
    if total is not None:
        steps = kd_raw.index.intersection(total.index)
        total_level = float(np.median((total.loc[steps] if len(steps) else total).to_numpy()))
        weight = alpha if alpha else params["min_kd_weight"]
        if total_level < weight * float(np.median(as_raw.to_numpy())):
            return (kd_raw, scaled_raw, "kd_raw",
                    f"the logged kd_raw is already multiplied by T^2 (inferred: kd_raw x T^2 = "
                    f"{stats.fmt_num(float(np.median(as_raw)))} cannot fit in a total loss of "
                    f"{stats.fmt_num(total_level)})", Confidence.MEDIUM)
        return (as_raw, kd_raw, "kd_raw",
                "kd_raw is the raw KL and the KD term is kd_raw x T^2 (both fit the total loss)", Confidence.MEDIUM)
    if float(np.median(kd_raw.to_numpy())) > params["max_raw_kl"]:
        return (kd_raw, scaled_raw, "kd_raw",
                f"the logged kd_raw is already multiplied by T^2 (inferred: a raw KL of "
                f"{stats.fmt_num(float(np.median(kd_raw)))} nats is implausible; no total loss to confirm)",
                Confidence.LOW)
    return (as_raw, kd_raw, "kd_raw", "assumed: the KD term is kd_raw x T^2 (no kd_loss or total loss logged to "
            "check)", Confidence.LOW)


def _total(run) -> pd.Series | None:
    for metric in ("loss", "eval_loss"):
        if run.has(metric):
            s = stats.finite(run.series(metric))
            s = s[s > 0]
            if len(s):
                return s
    return None


def _grid_temperature(raw: float, budget: float, below: float, max_t_squared: float) -> float:
    """The largest temperature on the grid, below `below` and at least 1, whose T^2 is within `max_t_squared` and
    whose T^2 x raw fits the budget."""
    limit = min(below - 1e-9, math.sqrt(max_t_squared), math.sqrt(budget / raw) if raw > 0 else math.inf)
    if not math.isfinite(limit) or limit <= MIN_TEMPERATURE:
        return MIN_TEMPERATURE
    return max(_floor_grid(limit), MIN_TEMPERATURE)


def _floor_grid(value: float) -> float:
    return round(math.floor(value / GRID + 1e-9) * GRID, 2)


def _t(value: float) -> str:
    """A temperature as people write it: 3.0, 1.5, 2.25."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.3g}"


def _first_nonfinite(run) -> int | None:
    """The first step with a non-finite loss, a NaN event, or a loss turned into 0.0 by a filter or clamp."""
    steps = [s for s in stats.event_steps(run, run.events_of("nan", "nan_clamp")) if s is not None]
    for metric in NONFINITE_LOSSES:
        if run.has(metric):
            series = run.series(metric)
            values = series.to_numpy(dtype="float64")
            bad = np.flatnonzero(~np.isfinite(values))
            zeros = stats.hidden_zeros(series, HIDDEN_ZERO_FROM)
            steps += [int(series.index[i]) for i in (bad[:1].tolist() + zeros[:1].tolist())]
    return min(steps) if steps else None


DETECTOR = Detector(
    code="D001", name="distill-temperature-blowup", severity=Severity.CRITICAL,
    summary="knowledge-distillation loss inflated by T^2 to a size that destabilises training",
    doc=__doc__,
    params={"inflation": INFLATION, "stable_t_squared": STABLE_T_SQUARED, "size_factor": SIZE_FACTOR,
            "min_inflation": MIN_INFLATION, "critical_factor": CRITICAL_FACTOR, "max_raw_kl": MAX_RAW_KL,
            "min_kd_weight": MIN_KD_WEIGHT, "ratio_tolerance": RATIO_TOLERANCE},
    check=check,
)
