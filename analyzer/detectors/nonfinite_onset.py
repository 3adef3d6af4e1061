"""nonfinite-onset: the first step at which the run produced NaN or Inf, including NaN that the logs hide.

What it detects:
    The first step where any training metric is NaN or Inf, and the NaN that a log does not show as NaN:
    a loss that turns into an exact 0.0 while the gradient norm is NaN/Inf (Hugging Face Trainer's
    `logging_nan_inf_filter`) or right after a normal level, a non-finite value clamped to zero (a `nan_clamp` line
    such as "lm_loss produced non-finite value (nan); clamping to zero"), Megatron iterations whose loss is missing
    while the nan-iteration counter rises, steps skipped because of a non-finite loss or gradient (skip messages, or
    a skipped-iteration counter that rises in a run known not to use fp16 loss scaling), a mixed-precision
    loss scale driven below 1, and checkpoints whose statistics hold non-finite values.
Why it matters:
    One NaN poisons every weight it touches; after it, the run learns nothing, and a clamp or filter that hides it
    only makes the run look alive. What matters is the step where it began: the restart must come from a
    checkpoint saved before it, with the change that removes its cause.
How it decides:
    Every signal above gives a step; the onset is the earliest. Throughput and timing metrics are ignored, an
    infinite perplexity is exp() of a large finite loss, not a NaN, and an auxiliary metric that is non-finite at
    every point was never measured (a loss or gradient norm NaN from the first step is a broken run). A logged
    point is a window of steps when the log is sparse, so the message gives the last clean point before the onset.
    Non-finite gradient norms alone, while the loss stays finite, in a run that uses fp16 or does not say, are the
    loss scaler skipping overflowing steps as designed: info (loss-scale-collapse judges them). When the logs filter
    NaN (a blind spot of the run), the message says the onset may be earlier. The last checkpoint saved before the
    onset with no non-finite value is the restart point.
What it recommends:
    Restart from the last clean checkpoint before the onset (named in the message), with: where a loss went
    non-finite in an fp16 run, its softmax computed stably (lm_loss_softmax: stable; log_softmax with the max
    subtracted, in fp32, as F.cross_entropy does): exp(z) / sum(exp(z)) in float16 overflows once a logit passes
    ln(65504) = 11.09, and inf / inf is NaN, whatever else the run changes (the reference trainer's KD run went NaN
    at T = 3 and at T = 2; with a stable softmax, at neither, over 1000 steps); precision bf16 instead of fp16 where
    the run used fp16; max_grad_norm near the p99 of the healthy gradient norms (before the onset and
    outside excursions; 1.0 when they are not logged) unless clipping is already that tight; the peak lr halved.
    Causes found by other detectors (temperature, lr, batch) are linked by the chain and carry their own fixes.
Parameters:
    zero_from (default 0.5): a loss that was at least this large on the points before and then reads exactly 0.0
        is taken as a hidden NaN.
    min_loss_scale (default 1.0): a loss scale below this means gradients overflow fp16 even unscaled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from analyzer.detectors import remedies, stats
from analyzer.detectors.loss_scale_collapse import SKIPPED_COUNTER
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Evidence, Recommendation, Severity

ZERO_FROM = 0.5  # nats: far above rounding noise, below any real LM/KD loss that is still learning
MIN_LOSS_SCALE = 1.0  # below 1 the unscaled fp16 gradient itself overflows: the scaler cannot save the step
ZERO_LOOKBACK = 5  # points before a 0.0 whose median must be a normal loss level
# Metrics whose non-finite values say nothing about training numerics (timers, throughput, memory).
IGNORED_METRICS = re.compile(r"runtime|_time$|^time|per_s(?:ec(?:ond)?)?$|^steps_per|^tokens_per|^samples_per|flos|"
                             r"mem(?:ory)?|throughput|tflops|elapsed", re.I)
PERPLEXITY = re.compile(r"(?:^|_)ppl$|perplexity", re.I)
LOSS_METRICS = ("loss", "lm_loss", "kd_loss", "kd_raw")  # losses that a filter or clamp can turn into 0.0
CORE_METRICS = frozenset(LOSS_METRICS + ("eval_loss", "grad_norm", "param_norm", "update_ratio", "lr", "loss_scale"))
NONFINITE_TEXT = re.compile(r"\bnan\b|\binf(inity)?\b|non-?finite", re.I)
FILTER_TEXT = re.compile(r"\bnan\b|non-?finite|filter", re.I)  # a blind spot saying the logs hide NaN
SOFTMAX_HPARAM = "lm_loss_softmax"  # the reference trainer's knob: "naive" (exp/sum in the logits' dtype) | "stable"
FP16_EXP_LIMIT = float(np.log(65504.0))  # 11.09: exp() of a larger float16 value is inf
LOSS_TEXT = re.compile(r"\b\w*loss\b", re.I)  # the loss a clamp line names ("lm_loss produced non-finite value")
NAN_COUNTER = re.compile(r"nan_iter|nan_count|num_nan|nan_steps", re.I)


@dataclass(frozen=True)
class Signal:
    step: int | None
    what: str  # a phrase for the message
    kind: str  # metric | hidden | event | scale | checkpoint | grad
    evidence: tuple[Evidence, ...]
    direct: bool  # a non-finite value seen as such (not inferred)
    metric: str | None = None  # the metric it was seen in, if any
    rank: int | None = None  # the rank it was seen on, where a multi-process log says


def check(run, params):
    signals = (_metric_signals(run) + _hidden_zero_signals(run, params) + _event_signals(run) +
               _counter_signals(run) + _scale_signals(run, params) + _checkpoint_signals(run))
    if not signals:
        return []
    # at one step, a core metric (the loss first) names the onset before an auxiliary one that went NaN with it
    dated = sorted((s for s in signals if s.step is not None),
                   key=lambda s: (s.step, s.kind, s.metric not in CORE_METRICS, s.what))
    first = dated[0] if dated else signals[0]
    onset = first.step

    grad_only = all(s.kind == "grad" for s in signals)
    # The loss scaler skips a step whose gradients overflowed and the run goes on: a NaN norm with a loss that stays
    # finite is that, unless the run is known not to use fp16.
    if grad_only and stats.precision_is_fp16(run) is not False and _loss_stays_finite(run):
        steps = sorted({s.step for s in signals if s.step is not None})
        return [DETECTOR.finding(
            f"The gradient norm is non-finite at {len(steps)} logged step(s) from step {onset} while the loss stays "
            "finite: fp16 overflow steps that the loss scaler skipped (see loss-scale-collapse).",
            onset, steps[-1] if steps else onset, severity=Severity.INFO, confidence=Confidence.MEDIUM,
            metrics={"onset_step": onset, "nonfinite_grad_steps": len(steps)},
            evidence=first.evidence[:5])]

    good = stats.last_checkpoint_before(run, onset - 1) if onset is not None else None
    hidden = [s for s in signals if not s.direct]
    filtered = [b for b in run.blind_spots if DETECTOR.name in b.affects and FILTER_TEXT.search(b.message)]
    previous = _previous_clean_point(run, first)

    parts = [f"First non-finite value at step {onset}: {first.what}" if onset is not None
             else f"Non-finite values without a step: {first.what}"]
    if previous is not None:
        parts.append(f" (the previous logged point, step {previous}, was clean)")
    others = sorted({s.what for s in dated[1:] if s.kind != first.kind})[:2]
    if others:
        parts.append("; also " + "; ".join(others))
    if filtered:
        parts.append("; the logs filter non-finite values, so the real onset may be earlier")
    if good is not None:
        parts.append(f"; restart from {good.path} (step {good.step}), the last clean checkpoint before it")
    elif run.checkpoints:
        parts.append("; no clean checkpoint was saved before it")
    message = "".join(parts) + "."

    last = max((s.step for s in dated), default=onset)
    healthy_grad = stats.healthy_grad_norms(run)
    why = f"the run went non-finite at step {onset}"
    recs = remedies.unique([
        _stable_softmax(run, signals, why),
        remedies.bf16(run, why),
        remedies.clip(run, healthy_grad, why),
        remedies.lower_lr(run, why),
    ])
    evidence = []
    for s in [first] + [s for s in dated[1:] if s is not first] + [s for s in signals if s.step is None]:
        evidence.extend(e for e in s.evidence if e not in evidence)
    confidence = Confidence.HIGH if first.direct and not filtered else Confidence.MEDIUM
    return [DETECTOR.finding(
        message, onset, last, severity=Severity.CRITICAL, confidence=confidence,
        metrics={"onset_step": onset, "onset_signal": first.kind, "previous_clean_step": previous,
                 "signals": len(signals), "hidden_signals": len(hidden),
                 "restart_checkpoint": good.path if good is not None else None,
                 "restart_step": good.step if good is not None else None,
                 "onset_may_be_earlier": bool(filtered)},
        recommendations=recs, evidence=evidence[:5])]


def _stable_softmax(run, signals: list[Signal], why: str) -> Recommendation | None:
    """lm_loss_softmax stable where a loss went non-finite in an fp16 run whose loss is computed by hand: the run
    names a softmax setting that is not "stable", or its own code clamped the NaN loss (a framework's cross-entropy
    already runs in fp32 under autocast). The overflow of exp() in float16 is a NaN source of its own, which no lr,
    clip or temperature removes."""
    current = run.hparam(SOFTMAX_HPARAM)
    if not stats.uses_fp16(run) or (isinstance(current, str) and current.lower() == "stable"):
        return None
    clamps = [e for e in run.events_of("nan_clamp") if LOSS_TEXT.search(e.text or "")]
    if current is None and not clamps:
        return None
    losses = sorted({s.metric for s in signals if s.metric in LOSS_METRICS + ("eval_loss",)})
    losses += sorted({m.group(0) for e in clamps for m in [LOSS_TEXT.search(e.text or "")]} - set(losses))
    if not losses:
        return None
    return Recommendation(
        SOFTMAX_HPARAM, current, "stable",
        f"{why} in {' and '.join(losses)}, in fp16: a softmax computed as exp(z) / sum(exp(z)) in float16 overflows "
        f"once a logit passes ln(65504) = {FP16_EXP_LIMIT:.2f} (inf / inf = NaN), at any temperature, lr or clip; "
        "compute the loss's log-softmax in fp32 with the max logit subtracted (F.cross_entropy or log_softmax on "
        "logits.float()), which cannot overflow")


# --- signals -------------------------------------------------------------------------------------------------------

def _metric_signals(run) -> list[Signal]:
    """The first non-finite point of each metric (all segments: a NaN that forced a restart still happened)."""
    scalars = run.scalars
    if not len(scalars):
        return []
    values = scalars["value"].to_numpy()
    bad = ~np.isfinite(values)
    if not bad.any():
        return []
    rows = scalars[bad]
    metrics = rows["metric"].astype(str)
    keep = ~metrics.str.contains(IGNORED_METRICS) & ~(metrics.str.contains(PERPLEXITY) &
                                                      (rows["value"].to_numpy() == np.inf))
    rows = rows[keep.to_numpy()]
    # An auxiliary metric that is non-finite at every point was never measured (a logger's placeholder), unlike a
    # loss or gradient norm that is NaN from the first step, which is a run broken from the start.
    totals = run.row_counts()  # points per metric, as scalars["metric"].value_counts() counts them
    bad_counts = rows["metric"].value_counts()
    never = {m for m, c in bad_counts.items() if c == totals.get(m, 0) and m not in CORE_METRICS}
    out = []
    for metric, group in rows.groupby("metric", sort=True):
        if metric in never:
            continue
        row = group.sort_values(["step", "line"], kind="stable").iloc[0]
        value = "NaN" if np.isnan(row["value"]) else ("Inf" if row["value"] > 0 else "-Inf")
        rank = int(row["rank"])
        out.append(Signal(int(row["step"]), f"{metric} is {value}{_on_rank(rank)}",
                          "grad" if metric == "grad_norm" else "metric",
                          (Evidence(run.sources[int(row["source"])], int(row["line"])),), True, metric, rank))
    return out


def _hidden_zero_signals(run, params) -> list[Signal]:
    """A loss that reads exactly 0.0 right after a normal level: a filtered or clamped NaN."""
    grad_bad = set()
    if run.has("grad_norm"):
        grad = run.series("grad_norm")
        grad_bad = set(grad.index[~np.isfinite(grad.to_numpy())].tolist())
    out = []
    for metric in LOSS_METRICS:
        if not run.has(metric):
            continue
        series = run.series(metric)
        hits = stats.hidden_zeros(series, params["zero_from"], ZERO_LOOKBACK)
        if not len(hits):
            continue
        i = int(hits[0])
        step = int(series.index[i])
        before = stats.finite(series.iloc[:i])
        level = float(np.median(before[before != 0].to_numpy()[-ZERO_LOOKBACK:]))
        zeros = int((series.to_numpy(dtype="float64")[i:] == 0.0).sum())
        more = f"; {zeros} points read 0.0 from there" if zeros > 1 else ""
        what = (f"{metric} reads exactly 0.0 while grad_norm is non-finite (a filtered NaN{more})"
                if step in grad_bad else
                f"{metric} drops from ~{stats.fmt_num(level)} to exactly 0.0 (a NaN replaced by zero{more})")
        out.append(Signal(step, what, "hidden", evidence_at(run, metric, [step]), False, metric))
    return out


def _event_signals(run) -> list[Signal]:
    """nan / nan_clamp events, and skipped-step, warning or error lines that name a non-finite value."""
    events = [e for e in run.events
              if e.kind in ("nan", "nan_clamp") or
              (e.kind in ("skipped_step", "warning", "error") and NONFINITE_TEXT.search(e.text or ""))]
    if not events:
        return []
    steps = stats.event_steps(run, events)
    out = []
    for kind in ("nan_clamp", "nan", "skipped_step", "warning", "error"):
        of_kind = [(s, e) for s, e in zip(steps, events) if e.kind == kind]
        if not of_kind:
            continue
        of_kind.sort(key=lambda se: (se[0] is None, se[0] or 0, se[1].line or 0))
        step, event = of_kind[0]
        label = {"nan_clamp": "a non-finite value clamped or filtered", "nan": "a NaN reported in the log",
                 "skipped_step": "a step skipped for a non-finite value",
                 "warning": "a warning about a non-finite value", "error": "an error about a non-finite value"}[kind]
        count = f" ({len(of_kind)} such lines)" if len(of_kind) > 1 else ""
        where = _on_rank(event.data.get("rank"))
        out.append(Signal(step, f"{label}{where}{count}: \"{_short(event.text)}\"", "event",
                          tuple(Evidence(e.file, e.line, e.text) for _, e in of_kind[:2]), True))
    return out


def _counter_signals(run) -> list[Signal]:
    """A nan-iteration counter (Megatron's `number of nan iterations`) that rises; outside fp16, a skipped-iteration
    counter too (Megatron skips an iteration whose gradients hold NaN/Inf; in fp16 those are overflows, which
    loss-scale-collapse judges)."""
    not_fp16 = stats.precision_is_fp16(run) is False
    out = []
    for metric in run.metrics:
        if not (NAN_COUNTER.search(metric) or (not_fp16 and SKIPPED_COUNTER.search(metric))):
            continue
        series = stats.finite(run.series(metric))
        values = series.to_numpy()
        if not len(values):
            continue
        rises = np.flatnonzero(np.diff(np.concatenate(([0.0], values))) > 0)
        if len(rises):
            step = int(series.index[rises[0]])
            out.append(Signal(step, f"{metric} rises to {stats.fmt_num(float(values[rises[0]]))}", "metric",
                              evidence_at(run, metric, [step]), True, metric))
    return out


def _scale_signals(run, params) -> list[Signal]:
    """A loss scale driven below min_loss_scale: fp16 gradients overflow even unscaled."""
    floor = params["min_loss_scale"]
    if run.has("loss_scale"):
        scale = stats.finite(run.series("loss_scale"))
        low = np.flatnonzero((scale.to_numpy() < floor) & (scale.to_numpy() > 0))
        if len(low):
            step = int(scale.index[low[0]])
            return [Signal(step, f"the loss scale falls to {stats.fmt_num(float(scale.iloc[low[0]]))}", "scale",
                           evidence_at(run, "loss_scale", [step]), False)]
    overflows = [e for e in run.events_of("overflow") if _number(e.data.get("scale_to")) is not None
                 and 0 < _number(e.data.get("scale_to")) < floor]
    if overflows:
        step = stats.event_steps(run, overflows[:1])[0]
        e = overflows[0]
        return [Signal(step, f"the loss scale falls to {stats.fmt_num(_number(e.data['scale_to']))}", "scale",
                       (Evidence(e.file, e.line, e.text),), False)]
    return []


def _checkpoint_signals(run) -> list[Signal]:
    bad = [c for c in run.checkpoints if c.stats is not None and c.stats.nonfinite > 0]
    if not bad:
        return []
    first = min(bad, key=lambda c: (c.step is None, c.step or 0, c.path))
    return [Signal(first.step, f"checkpoint {first.path} holds {first.stats.nonfinite:,} non-finite values",
                   "checkpoint", (Evidence(first.path, None, "checkpoint with non-finite values"),), True)]


# --- helpers -------------------------------------------------------------------------------------------------------

def _previous_clean_point(run, signal: Signal) -> int | None:
    """The logged step before the onset of the signal's metric: the onset lies after it."""
    metric = signal.metric
    if metric is None or signal.step is None:
        return None
    steps = run.series(metric, rank=signal.rank).index.to_numpy()
    before = steps[steps < signal.step]
    return int(before.max()) if len(before) else None


def _loss_stays_finite(run) -> bool:
    found = stats.train_loss(run)
    if found is None:
        return False
    metric, _ = found
    values = run.series(metric).to_numpy(dtype="float64")
    return bool(np.isfinite(values).all() and (values != 0.0).any())


def _number(value):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _on_rank(rank) -> str:
    """` on rank N` for a rank other than 0: other detectors read the lowest rank's series, so the rank is news."""
    return f" on rank {rank}" if isinstance(rank, int) and rank > 0 else ""


def _short(text: str, limit: int = 100) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


DETECTOR = Detector(
    code="N001", name="nonfinite-onset", severity=Severity.CRITICAL,
    summary="first step with NaN/Inf in any metric, weight or optimizer state, including NaN the logs hide",
    doc=__doc__, params={"zero_from": ZERO_FROM, "min_loss_scale": MIN_LOSS_SCALE}, check=check,
)
