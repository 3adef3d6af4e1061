"""loss-scale-collapse: the fp16 loss scale falls repeatedly in mid-run, skipping steps for overflowing gradients.

What it detects:
    Mixed-precision (fp16) overflows: steps skipped because the scaled gradients overflowed, each halving the loss
    scale, from overflow lines (DeepSpeed `OVERFLOW! ... reducing to`, fairseq `gradient overflow detected`), drops
    of a logged loss scale, or a rising skipped-step counter. It tells the start-up calibration apart from a
    collapse in mid-run.
Why it matters:
    Dynamic loss scaling starts high on purpose (2^16 in torch, 2^32 in DeepSpeed) and halves on each overflow until
    gradients fit: a cascade of skipped steps in the first few dozen steps is normal. Later, an occasional single
    halving is also normal (the scaler doubles again after a quiet window). A cascade in mid-run is not: the
    gradients have grown by orders of magnitude, every skipped step is a lost batch, and BLOOM-104B, BLOOM-13B and
    fairseq runs show the loss jumping at such cascades; a scale driven below 1 ends in NaN.
How it decides:
    Overflows (or halvings of a logged scale, one per factor of 2) that come before the scale first grows and within
    calibration_steps of the first step, with no loss jump, are the start-up calibration (info). The other overflows
    are grouped into episodes (overflows closer than episode_gap steps). An episode is a collapse when it halves
    the scale at least min_halvings times, or at least twice with the loss rising by loss_jump (ratio of the highest
    loss during the episode to the median of the points before it). Overflows on more than max_skip_share of the
    steps after calibration are a collapse too. A scale below 1 is critical: the unscaled gradient overflows.
What it recommends:
    precision bf16 (no loss scaling, fp32's exponent range); max_grad_norm near the healthy p99 of the gradient
    norm before the collapse where clipping is off, unknown or far looser; and, where the loss jumped, the peak lr
    halved.
Parameters:
    calibration_steps (default 100): overflows within this many steps of the start, before any growth of the
        scale, are start-up calibration.
    episode_gap (default 100): overflows closer than this many steps belong to one episode.
    min_halvings (default 3): halvings in one episode that make a collapse on their own (a fall of 8x).
    loss_jump (default 1.2): a rise of the loss by this factor during an episode makes two halvings a collapse.
    max_skip_share (default 0.05): overflows on more than this share of steps after calibration are a collapse.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from analyzer.detectors import remedies, stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Evidence, Severity, Skipped

CALIBRATION_STEPS = 100  # DeepSpeed's 2^32 start needs ~17 halvings; torch's 2^16 a handful
EPISODE_GAP = 100  # steps; the default growth window is 1000-2000 steps, so closer overflows are one event
MIN_HALVINGS = 3  # the scale fell 8x in one episode: gradients grew by about that much
LOSS_JUMP = 1.2  # a 20% rise of the loss is far beyond step-to-step noise of a large run
MAX_SKIP_SHARE = 0.05  # healthy scalers overflow about once per growth window (~0.05% of steps)
LOOKBACK = 20  # points before an episode whose median is the loss level it is compared with
MAX_COUNTER_RISE = 10**6  # a skipped counter that jumps by more is not counting steps
SKIPPED_COUNTER = re.compile(r"(^|_)skipped($|_)|skipped_iter|skipped_steps|num_skipped", re.I)
MIN_SCALE_TEXT = re.compile(r"minimum loss scale", re.I)


@dataclass(frozen=True)
class Overflow:
    step: int | None
    halvings: int  # factors of 2 the scale fell (1 for an overflow line; DeepSpeed hysteresis may keep the scale)
    scale_from: float | None
    scale_to: float | None
    evidence: Evidence | None
    source: str  # line (an overflow message) | scale (a drop of the logged scale) | counter (a skipped counter)


def check(run, params):
    overflows = _overflows(run)
    if not overflows:
        if not stats.uses_fp16(run):
            return Skipped(DETECTOR.name, "the run shows no fp16 loss scaling (no loss scale, overflow lines or "
                                          "skipped-step counter)")
        return []
    first_step = run.first_step if run.first_step is not None else 0
    loss = stats.train_loss(run)
    loss_series = loss[1] if loss is not None else None

    growth = _first_growth(run)
    dated = [o for o in overflows if o.step is not None]
    # The scaler calibrates when training starts (or resumes); a log excerpt that begins mid-run has no start.
    starts = ([first_step] if first_step <= params["calibration_steps"] else []) + stats.restart_steps(run)
    calib = [o for o in dated if (growth is None or o.step < growth)
             and any(0 <= o.step - s <= params["calibration_steps"] for s in starts)]
    if calib and stats.rise_during(loss_series, calib[0].step, calib[-1].step, LOOKBACK).ratio >= params["loss_jump"]:
        calib = []  # a cascade that hurts the loss is not calibration, however early
    rest = [o for o in dated if o not in calib]
    episodes = _episodes(rest, params["episode_gap"])

    span = max(1, (run.last_step or 0) - (calib[-1].step if calib else first_step))
    skipped_after = _count(rest)
    skip_share = skipped_after / span
    collapses = []
    for ep in episodes:
        halvings = sum(o.halvings for o in ep)
        jump = stats.rise_during(loss_series, ep[0].step, ep[-1].step, LOOKBACK).ratio
        if halvings >= params["min_halvings"] or (halvings >= 2 and jump >= params["loss_jump"]):
            collapses.append((ep, halvings, jump))
    frequent = (skip_share > params["max_skip_share"] and skipped_after >= params["min_halvings"]
                and span >= params["calibration_steps"])
    floor = min((o.scale_to for o in overflows if o.scale_to is not None), default=None)
    min_scale_error = [e for e in run.events_of("error", "warning") if MIN_SCALE_TEXT.search(e.text or "")]
    fatal = (floor is not None and floor < 1.0) or bool(min_scale_error)

    if not collapses and not frequent and not fatal:
        if calib:
            return [_calibration(run, calib)]
        return []

    if collapses:
        ep, halvings, jump = max(collapses, key=lambda c: (c[1] + (2 if c[2] >= params["loss_jump"] else 0),
                                                           -c[0][0].step))
    else:  # frequent or fatal: every overflow after calibration (all of them when the floor came early)
        ep = rest or overflows
        halvings = sum(o.halvings for o in ep)
        dated_ep = [o for o in ep if o.step is not None]
        jump = (stats.rise_during(loss_series, dated_ep[0].step, dated_ep[-1].step, LOOKBACK).ratio
                if dated_ep else 1.0)
    steps = [o.step for o in ep if o.step is not None]
    start, end = (steps[0], steps[-1]) if steps else (None, None)
    high = _first_known([o.scale_from for o in ep]) or (_scale_at(run, start) if start is not None else None)
    low = _last_known([o.scale_to for o in ep])
    fall = (f"from {_scale(high)} to {_scale(low)}" if high and low
            else f"by a factor 2^{halvings}")
    counted = {"line": f"{len(ep)} overflow lines, each a skipped step",
               "scale": f"{halvings} halvings of the logged loss scale",
               "counter": f"{halvings} steps counted as skipped"}[ep[0].source]
    when = ("at an unknown step" if start is None else f"at step {start}" if start == end
            else f"over steps {start}-{end}")
    message = (f"The fp16 loss scale fell {fall} {when} ({counted}"
               + ("; after the start-up calibration" if calib else "") + ")")
    rise = stats.rise_during(loss_series, start, end, LOOKBACK) if start is not None else stats.Rise(1.0, None, None)
    if jump >= params["loss_jump"]:
        message += f", while the {loss[0]} rose {stats.fmt_ratio(jump)} (from ~{stats.fmt_num(rise.level)})"
    if len(collapses) > 1:
        message += f"; {len(collapses)} such episodes in all"
    if frequent:
        message += f"; {skipped_after} overflows on {skip_share:.1%} of the steps after calibration"
    if fatal:
        message += "; the scale reached its floor, so gradients overflow fp16 even unscaled"
    message += "."

    healthy = stats.healthy_grad_norms(run)
    why = f"the fp16 loss scale collapsed {when}"
    recs = [remedies.bf16(run, why), remedies.clip(run, healthy, why)]
    if jump >= params["loss_jump"]:
        recs.append(remedies.lower_lr(run, f"{why} and the loss rose {stats.fmt_ratio(jump)}"))
    evidence = [o.evidence for o in ep if o.evidence is not None][:3]
    if jump >= params["loss_jump"] and rise.peak_step is not None:
        evidence += [e for e in evidence_at(run, loss[0], [rise.peak_step]) if e not in evidence]
    severity = Severity.CRITICAL if fatal else Severity.WARNING
    confidence = Confidence.HIGH if any(o.evidence is not None and o.scale_from is not None for o in ep) \
        else Confidence.MEDIUM
    return [DETECTOR.finding(
        message, start, end, severity=severity, confidence=confidence,
        metrics={"overflows": _count(ep), "halvings": halvings, "scale_from": high, "scale_to": low,
                 "loss_jump": round(jump, 3), "episodes": len(collapses), "calibration_overflows": _count(calib),
                 "overflows_after_calibration": skipped_after, "skip_share": round(skip_share, 4),
                 "lowest_scale": floor},
        recommendations=remedies.unique(recs), evidence=evidence[:5])]


def _calibration(run, calib: list[Overflow]):
    high = _first_known([o.scale_from for o in calib])
    low = _last_known([o.scale_to for o in calib])
    fall = f" (scale {_scale(high)} -> {_scale(low)})" if high and low else ""
    return DETECTOR.finding(
        f"{_count(calib)} fp16 overflow(s) in steps {calib[0].step}-{calib[-1].step} are the loss scaler's start-up "
        f"calibration{fall}; the scale then held: normal.",
        calib[0].step, calib[-1].step, severity=Severity.INFO, confidence=Confidence.HIGH,
        metrics={"calibration_overflows": _count(calib), "scale_from": high, "scale_to": low},
        evidence=[o.evidence for o in calib if o.evidence is not None][:2])


# --- reading overflows ---------------------------------------------------------------------------------------------

def _overflows(run) -> list[Overflow]:
    """Overflow lines where the log has them; else halvings of the logged loss scale; else a skipped counter."""
    events = list(run.events_of("overflow"))
    if events:
        steps = stats.event_steps(run, events)
        out = [Overflow(step, 1, _number(e.data.get("scale_from")), _number(e.data.get("scale_to")),
                        Evidence(e.file, e.line, e.text), "line") for step, e in zip(steps, events)]
        return sorted(out, key=lambda o: (o.step is None, o.step or 0))
    if run.has("loss_scale"):
        scale = stats.finite(run.series("loss_scale"))
        scale = scale[scale > 0]
        values = scale.to_numpy()
        if len(values) > 1:
            ratio = values[:-1] / values[1:]
            drops = np.flatnonzero(ratio > 1.0)
            out = []
            for i in drops:
                step = int(scale.index[i + 1])
                where = run.point("loss_scale", step)
                out.append(Overflow(step, max(1, int(round(math.log2(ratio[i])))), float(values[i]),
                                    float(values[i + 1]), Evidence(where[0], where[1]) if where else None, "scale"))
            if out:
                return out
    if stats.precision_is_fp16(run) is False:
        return []  # a bf16/fp32 run skips steps for NaN gradients, not for overflow: nonfinite-onset's business
    for metric in run.metrics:
        if SKIPPED_COUNTER.search(metric):
            counter = stats.finite(run.series(metric))
            rises = np.diff(np.concatenate(([0.0], counter.to_numpy())))
            out = []
            for i in np.flatnonzero(rises > 0):
                step = int(counter.index[i])
                where = run.point(metric, step)
                skipped = int(min(rises[i], MAX_COUNTER_RISE))  # a counter can be garbage: never trust its size
                out.append(Overflow(step, skipped, None, None, Evidence(where[0], where[1]) if where else None,
                                    "counter"))
            if out:
                return out
    return []


def _first_growth(run) -> int | None:
    """The first step at which the loss scale grew (the scaler's growth window passed without overflow)."""
    if run.has("loss_scale"):
        scale = stats.finite(run.series("loss_scale"))
        grew = np.flatnonzero(np.diff(scale.to_numpy()) > 0)
        if len(grew):
            return int(scale.index[grew[0] + 1])
    events = list(run.events_of("overflow"))
    steps = stats.event_steps(run, events)
    previous = None
    for step, e in zip(steps, events):
        scale_from = _number(e.data.get("scale_from"))
        if previous is not None and scale_from is not None and scale_from > previous and step is not None:
            return step
        previous = _number(e.data.get("scale_to"))
    return None


def _count(overflows: list[Overflow]) -> int:
    """Skipped steps: one per overflow line or scale drop, a counter's rise for a counter."""
    return sum(o.halvings if o.source == "counter" else 1 for o in overflows)


def _scale_at(run, step) -> float | None:
    """The logged loss scale at or just before `step`."""
    if not run.has("loss_scale"):
        return None
    scale = stats.finite(run.series("loss_scale"))
    before = scale[scale.index <= step]
    return float(before.iloc[-1]) if len(before) else None


def _episodes(overflows: list[Overflow], gap: int) -> list[list[Overflow]]:
    episodes: list[list[Overflow]] = []
    for o in overflows:
        if episodes and o.step - episodes[-1][-1].step <= gap:
            episodes[-1].append(o)
        else:
            episodes.append([o])
    return episodes


def _scale(value: float) -> str:
    """Loss scales are powers of two: print them whole (1048576, not 1.05e6)."""
    return f"{int(value)}" if value >= 1 and value == int(value) else f"{value:g}"


def _first_known(values):
    return next((v for v in values if v is not None), None)


def _last_known(values):
    return next((v for v in reversed(values) if v is not None), None)


def _number(value):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


DETECTOR = Detector(
    code="N002", name="loss-scale-collapse", severity=Severity.WARNING,
    summary="fp16 loss scale falls repeatedly / steps skipped for overflow in mid-run (not start-up calibration)",
    doc=__doc__,
    params={"calibration_steps": CALIBRATION_STEPS, "episode_gap": EPISODE_GAP, "min_halvings": MIN_HALVINGS,
            "loss_jump": LOSS_JUMP, "max_skip_share": MAX_SKIP_SHARE},
    check=check,
)
