"""Loss oscillation: the training loss swings up and down by large relative amounts instead of trending.

What it detects:
    A stretch of at least `min_swings` successive changes of the training loss that alternate in direction (at least
    `min_sign_changes` of successive changes reverse) with a typical size of at least `min_swing` (relative), larger
    than the trend over the same stretch and, where the log is dense enough to tell, far larger than the
    point-to-point noise. Seed 002: 28.19, 22.34, 27.64, 27.60, 22.31, 19.97, 28.34 every 100 steps.
Why it matters:
    A loss that goes back and forth is not converging: updates overshoot (lr too high for the curvature or the
    batch, a loss term inflated by a factor such as T^2 in distillation), or two objectives fight. Steps spent
    oscillating are lost, and an oscillation is often the prelude to a NaN.
How it decides:
    The log of the loss is summarised at several scales: medians of bins of 1, 2, 4, 8, ... points (at least
    `min_swings` + 1 bins). At each scale the successive changes d of the bin medians are detrended by their rolling
    mean (the net change per bin over the window, which telescopes to a difference of two medians); their typical
    size is the rolling median of |d - trend|, and the fraction of successive changes that reverse sign is counted
    over the same rolling window of `min_swings` + 2 changes. A stretch oscillates when the size is at least
    `min_swing`, the trend per bin is under half of it, the sign reverses in at least `min_sign_changes` of the
    changes, and (for bins of 2+ points) the size is at least `noise_units` times the standard error of a bin median
    computed from the scatter inside the bins, so that plain noise of a small batch is never called an oscillation.
    Point-level swings (bins of 1) are judged only on short logs (at most `short_log` points, like seed 002's 7
    points), where no noise estimate is possible; on long logs the noise is measured. A swing must also exceed five
    rounding steps of the logged values. The longest oscillating stretch over all scales is reported. Single spikes
    do not count: medians ignore them.
What it recommends:
    Halve the lr (current from the hparams), the usual cure for overshooting updates; when the report links the
    oscillation to a cause (a distillation temperature, a too-small batch, lr-too-high), that cause's fix comes
    first.
Parameters:
    min_swing (default 0.12): smallest typical swing, relative (0.12 = 12% between successive points or bins).
    min_swings (default 5): fewest successive changes in an oscillating stretch.
    min_sign_changes (default 0.5): smallest fraction of successive changes that reverse direction.
    noise_units (default 4.0): how many bin-median standard errors a swing must exceed (bins of 2+ points).
    short_log (default 16): logs with at most this many points are judged point by point.
    min_points (default 6): fewest finite loss points.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

MIN_SWING = 0.12  # 12%: a well-behaved loss at a sensible batch moves a few % between logged points
MIN_SWINGS = 5  # five changes = two and a half up-down cycles: fewer could be a spike and its recovery
MIN_SIGN_CHANGES = 0.5  # white noise reverses ~2/3 of the time; a trend reverses rarely
NOISE_UNITS = 4.0
SHORT_LOG = 16
MIN_POINTS = 6
MEDIAN_SE = 1.2533  # standard error of a median = 1.2533 x sigma / sqrt(n)
LR_FACTOR = 0.5
QUANTA = 5  # a swing must exceed this many rounding steps of the logged values


def find_oscillation(loss: pd.Series, params) -> dict | None:
    """The longest oscillating stretch over all bin scales, or None (see the module docs)."""
    found = stats.cached(loss, ("find_oscillation", stats.params_key(params)), lambda: _find_oscillation(loss, params))
    return dict(found) if found is not None else None


def _find_oscillation(loss: pd.Series, params) -> dict | None:
    logs = stats.log_values(loss)
    if logs is None:
        return None
    x = logs.to_numpy()
    steps = loss.index.to_numpy()
    n = len(x)
    window = params["min_swings"] + 2
    quantum = stats.quantum(loss)
    best = None
    size = 1
    rows = None  # the bins of the previous size, each sorted
    while n // size >= params["min_swings"] + 1:
        if size == 1 and n > params["short_log"]:
            size *= 2
            continue
        nb = n // size
        # each bin sorted: a bin of 2k points is two sorted bins of k, which a stable sort (timsort) merges in one
        # pass, so every scale costs one pass over the points instead of a selection per bin
        if rows is not None and 2 * rows.shape[1] == size:
            rows = np.sort(rows[: 2 * nb].reshape(nb, size), axis=1, kind="stable")
        elif size == 2:
            first, second = x[0: 2 * nb: 2], x[1: 2 * nb: 2]
            rows = np.column_stack((np.minimum(first, second), np.maximum(first, second)))
        else:
            rows = np.sort(x[: nb * size].reshape(nb, size), axis=1)
        half = size // 2
        # np.median's numbers: the middle value, or the mean of the two middle values
        medians = rows[:, half] if size % 2 else (rows[:, half - 1] + rows[:, half]) / 2
        d = pd.Series(np.diff(medians))
        # the trend is the net change per bin over the window: a mean of successive changes telescopes to
        # (last median - first median) / window, so it is robust, and unlike a median of the changes it is not
        # pulled to the common small step of an asymmetric up-down pattern
        if size == 1:  # a short log: judged as a whole, a rolling window would be most of it anyway
            trend = pd.Series(np.full(len(d), d.mean()))
        else:
            win = min(window, len(d))
            trend = d.rolling(win, center=True, min_periods=max(2, win // 2)).mean()
        threshold = math.log1p(params["min_swing"])
        # a swing of a few rounding steps (a loss printed as 0.0001 / 0.0002) is the logger's rounding
        level = float(np.exp(np.median(medians)))
        threshold = max(threshold, math.log1p(QUANTA * quantum / level) if level > 0 else 0.0)
        big = ((d - trend).abs() >= threshold).to_numpy()
        # a stretch is kept only from its first to its last large change, and the typical change (a median over
        # the window) reaches the threshold only where half the window's changes do: without either, no stretch
        if not big.any() or (size > 1 and not _half_big_somewhere(big, win)):
            size *= 2
            continue
        reverses = pd.Series(np.r_[np.nan, (np.sign(d.to_numpy()[1:]) * np.sign(d.to_numpy()[:-1]) < 0)
                                   .astype(float)])
        if size == 1:
            swing = pd.Series(np.full(len(d), (d - trend).abs().median()))
            reverse_frac = pd.Series(np.full(len(d), reverses.mean()))
        else:
            swing = pd.Series(stats.moving_median((d - trend).abs().to_numpy(), win, max(2, win // 2), center=True))
            reverse_frac = reverses.rolling(win, center=True, min_periods=1).mean()
        shape_ok = ((swing >= threshold) & (trend.abs() < 0.5 * swing)
                    & (reverse_frac >= params["min_sign_changes"])).to_numpy()
        se = 0.0
        if size > 1 and shape_ok.any():  # the noise of bin medians, measured only where it can decide
            scatter = np.abs(rows - medians[:, None]).ravel()  # the bins' points, in another order
            within = stats.MAD_TO_STD * float(np.median(scatter))
            se = math.sqrt(2.0) * MEDIAN_SE * within / math.sqrt(size)  # of a difference of two bin medians
        ok = shape_ok & (swing >= params["noise_units"] * se).to_numpy()
        for a, b in stats.runs_of_true(ok):
            # a centred window marks a few quiet changes at the edges: the stretch runs from its first to its
            # last large change
            inner = np.flatnonzero(big[a:b])
            if not len(inner):
                continue
            a, b = a + int(inner[0]), a + int(inner[-1]) + 1
            if b - a < params["min_swings"]:
                continue
            first = int(steps[a * size])
            last = int(steps[min((b + 1) * size, n) - 1])
            amp = float(np.median(np.abs((d - trend).to_numpy()[a:b])))
            cand = {"first_step": first, "last_step": last, "size": size, "swing": math.expm1(amp),
                    "reverse_fraction": float(np.nanmean(reverses.to_numpy()[max(a, 1):b])),
                    "changes": b - a, "noise_se": math.expm1(se) if se else None,
                    "low": float(math.exp(medians[a:b + 1].min())), "high": float(math.exp(medians[a:b + 1].max())),
                    "i_low": int(np.argmin(medians[a:b + 1])) + a, "i_high": int(np.argmax(medians[a:b + 1])) + a}
            if best is None or (last - first) > (best["last_step"] - best["first_step"]):
                best = cand
        size *= 2
    return best


def _half_big_somewhere(big: np.ndarray, win: int) -> bool:
    """Whether some centred window of `win` changes could hold half large ones (a median of |change| reaches the
    threshold nowhere else): counted over the wider span of `win` changes on each side, which holds every such
    window, so no stretch is missed."""
    total = np.r_[0, np.cumsum(big, dtype=np.int64)]
    j = np.arange(len(big))
    counts = total[np.minimum(j + win + 1, len(big))] - total[np.maximum(j - win, 0)]
    return bool((2 * counts >= max(2, win // 2)).any())


def check(run, params):
    found = stats.positive_train_loss(run, DETECTOR.name, params["min_points"], ": no relative swing")
    if isinstance(found, Skipped):
        return found
    metric, loss = found
    osc = find_oscillation(loss, params)
    if osc is None:
        return []
    interval = stats.log_interval(loss) * osc["size"]
    grain = "logged point" if osc["size"] == 1 else f"{osc['size']}-point bin"
    message = (f"{metric} swings up and down by ~{osc['swing']:.0%} between successive {grain}s "
               f"(between {stats.fmt_num(osc['low'])} and {stats.fmt_num(osc['high'])}, reversing direction "
               f"{osc['reverse_fraction']:.0%} of the time) from step {osc['first_step']} to {osc['last_step']} "
               f"instead of trending down.")
    metrics = {"swing": osc["swing"], "low": osc["low"], "high": osc["high"], "reverse_fraction":
               osc["reverse_fraction"], "changes": osc["changes"], "bin_points": osc["size"],
               "steps_per_change": interval}
    if osc["noise_se"] is not None:
        metrics["noise_se"] = osc["noise_se"]
    recs = []
    lr = stats.hparam_number(run, "lr") or stats.schedule(run).peak_lr
    if lr:
        recs.append(Recommendation(
            "lr", lr, stats.round_sig(lr * LR_FACTOR, 2),
            f"the loss overshoots back and forth by ~{osc['swing']:.0%} every ~{interval:.0f} steps; halving the "
            "lr halves each update, the usual cure for overshooting (a linked cause's own fix comes first)"))
    steps = loss.index.to_numpy()
    inside = steps[(steps >= osc["first_step"]) & (steps <= osc["last_step"])]
    ev = list(inside[: 5]) if osc["size"] == 1 else [osc["first_step"], osc["last_step"]]
    confidence = Confidence.HIGH if osc["size"] > 1 or osc["changes"] >= 2 * params["min_swings"] else \
        Confidence.MEDIUM
    return [DETECTOR.finding(message, osc["first_step"], osc["last_step"], confidence=confidence, metrics=metrics,
                             recommendations=recs, evidence=evidence_at(run, metric, ev))]


DETECTOR = Detector(
    code="L003", name="loss-oscillation", severity=Severity.WARNING,
    summary="the training loss swings up and down by large relative amounts instead of trending",
    doc=__doc__,
    params={"min_swing": MIN_SWING, "min_swings": MIN_SWINGS, "min_sign_changes": MIN_SIGN_CHANGES,
            "noise_units": NOISE_UNITS, "short_log": SHORT_LOG, "min_points": MIN_POINTS},
    check=check, requires=("loss", "lm_loss"),
)
