"""Shared numeric helpers for detectors: robust baselines, logging interval, schedule phase, chance level, batch.

Everything here is a pure, vectorised function of a Run or of a series (pandas Series indexed by step). Detectors
build on these so the same question (what is the local level of the loss? is the lr still warming up? what loss
means "learning nothing"?) gets the same answer everywhere. Other detector engineers may APPEND functions; existing
signatures stay stable.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import bottleneck
import numpy as np
import pandas as pd

from analyzer.findings import Skipped
from analyzer.run import Checkpoint, Run

MAD_TO_STD = 1.4826  # scales a median absolute deviation to a normal standard deviation
DIFF_MAD_TO_STD = MAD_TO_STD / math.sqrt(2.0)  # the same for first differences, whose variance is twice the noise's
WARMUP_REACHED = 0.95  # the lr is "at its peak" once it reaches this fraction of its maximum
WARMUP_STARTS_BELOW = 0.5  # a warmup exists only if the first logged lr is below this fraction of the maximum
# Formats whose logged train loss is a mean over the logging window rather than one step's loss.
WINDOW_AVERAGED_FORMATS = ("hf-trainer",)
TRAIN_LOSS_METRICS = ("loss", "lm_loss")  # in order of preference


# --- shared work ----------------------------------------------------------------------------------------------------
# Several detectors ask the same questions of the same series (the finite train loss, its log, its rolling level):
# answers are kept on the object they were computed from (a Run or a Series, in its __dict__, as Run keeps its own
# lookups), so they go when it goes and a million-point run computes each rolling median once. Runs and the series
# detectors get are never modified in place, so a kept answer stays true.

_CACHE = "_stats_cache"
_LOCKS = "_stats_locks"
_MISSING = object()
_setup = threading.Lock()


def cached(owner: Any, key: Hashable, compute: Callable[[], Any]) -> Any:
    """compute() once per (owner, key); owner is a Run or a pandas object. Safe when detectors run in threads:
    a second caller of the same key waits for the first one's answer instead of computing it again."""
    store = owner.__dict__.get(_CACHE)
    if store is not None:
        value = store.get(key, _MISSING)
        if value is not _MISSING:
            return value
    with _setup:  # Run is frozen: its __dict__ takes the cache as Run does its own lookups
        store = owner.__dict__.setdefault(_CACHE, {})
        lock = owner.__dict__.setdefault(_LOCKS, {}).setdefault(key, threading.RLock())
    with lock:
        value = store.get(key, _MISSING)
        if value is _MISSING:
            value = store[key] = compute()
    return value


def params_key(params) -> tuple:
    """A hashable key for a detector's parameter mapping (numbers, strings, booleans)."""
    return tuple(sorted(params.items()))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy >= 2.3 hashes integers for np.unique, ~1 s per million where sorting takes
    ~10 ms. Unlike np.unique, NaNs are not merged (every caller drops them)."""
    ordered = np.sort(np.asarray(values))
    if not len(ordered):
        return ordered
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


# --- series basics ---------------------------------------------------------------------------------------------------

def finite(series: pd.Series) -> pd.Series:
    """The finite points of a series, sorted by step, one per step (the last one wins)."""
    return cached(series, "finite", lambda: _finite(series))


def _finite(series: pd.Series) -> pd.Series:
    if not len(series):
        return series.astype("float64")
    if _already_finite(series):  # what the filtering below would rebuild, point for point
        return series
    values = pd.to_numeric(series, errors="coerce").astype("float64")
    values = values[np.isfinite(values.to_numpy())]
    values = values[~values.index.duplicated(keep="last")]
    return values.sort_index(kind="stable")


def _already_finite(series: pd.Series) -> bool:
    """A float64 series on a plain integer step index, finite, in step order, one point per step: a Run's series
    nearly always is."""
    index = series.index
    return (series.dtype == np.float64 and type(index) is pd.Index and index.dtype == np.int64
            and bool(np.isfinite(series.to_numpy()).all()) and index.is_monotonic_increasing and index.is_unique)


def train_loss(run: Run) -> tuple[str, pd.Series] | None:
    """(metric name, finite train loss series) of the run's main training loss, or None when none is logged."""
    return cached(run, "train_loss", lambda: _train_loss(run))


def _train_loss(run: Run) -> tuple[str, pd.Series] | None:
    for metric in TRAIN_LOSS_METRICS:
        if run.has(metric):
            series = finite(run.series(metric))
            if len(series):
                return metric, series
    return None


def positive_train_loss(run: Run, detector: str, min_points: int = 0,
                        why: str = "") -> tuple[str, pd.Series] | Skipped:
    """(metric, finite train loss) for a detector that judges relative (log-scale) changes, or why it cannot.

    `why` ends the skip reason for a loss that is not positive (": no relative swing").
    """
    found = train_loss(run)
    if found is None:
        return Skipped(detector, "the run logs no finite training loss")
    metric, loss = found
    if len(loss) < min_points:
        return Skipped(detector, f"only {len(loss)} finite loss points; needs {min_points}")
    if log_values(loss) is None:
        return Skipped(detector, f"the loss takes values <= 0 (an RL or shifted objective){why}")
    return metric, loss


def loss_while_learning(run: Run, detector: str, min_lr_fraction: float,
                        min_points: int) -> tuple[str, pd.Series, pd.Series, "Schedule"] | Skipped:
    """(metric, positive train loss, its points while the lr is near its peak, the schedule) for the detectors that
    judge the lr by what the loss does past warmup, or why they cannot."""
    found = positive_train_loss(run, detector)
    if isinstance(found, Skipped):
        return found
    metric, loss = found
    sched = schedule(run)
    judged = loss[sched.learning(loss.index.to_numpy(), min_lr_fraction)]
    if len(judged) < min_points:
        return Skipped(detector, f"only {len(judged)} loss points after warmup at >= {min_lr_fraction:.0%} of the "
                                 f"peak lr; needs {min_points}")
    return metric, loss, judged, sched


def median_update_ratio(run: Run, judged: pd.Series) -> float | None:
    """The median positive update-to-weight ratio over the judged steps' span; None with fewer than 3 such points
    or none logged. How big the steps of an lr detector's judged stretch were."""
    if not run.has("update_ratio"):
        return None
    ratios = finite(run.series("update_ratio"))
    ratios = ratios[(ratios.index >= judged.index[0]) & (ratios.index <= judged.index[-1]) & (ratios > 0)]
    return float(np.median(ratios.to_numpy())) if len(ratios) >= 3 else None


def log_interval(series: pd.Series) -> float:
    """The typical number of steps between two logged points (median positive gap); 1.0 when unknown."""
    return cached(series, "log_interval", lambda: _log_interval(series))


def _log_interval(series: pd.Series) -> float:
    steps = sorted_unique(np.asarray(series.index, dtype="float64"))
    gaps = np.diff(steps)
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if len(gaps) else 1.0


def points_for_steps(series: pd.Series, steps: float, lo: int, hi: int) -> int:
    """How many logged points cover `steps` training steps, clipped to [lo, hi]."""
    return int(np.clip(round(steps / max(log_interval(series), 1.0)), lo, hi))


def log_values(series: pd.Series) -> pd.Series | None:
    """Natural log of a positive series (losses are compared on a log scale: a rise of +50% means the same at
    loss 2 and at loss 20); None when any value is <= 0, e.g. RL losses that sit at ~0 by design."""
    return cached(series, "log_values", lambda: _log_values(series))


def _log_values(series: pd.Series) -> pd.Series | None:
    values = series.to_numpy(dtype="float64")
    if not len(values) or np.any(values <= 0):
        return None
    return pd.Series(np.log(values), index=series.index, name=series.name)


def robust_std(values: np.ndarray) -> float:
    """Normal-consistent robust standard deviation (1.4826 x MAD) of the finite values; 0.0 when empty."""
    values = np.asarray(values, dtype="float64")
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0
    return float(MAD_TO_STD * np.median(np.abs(values - np.median(values))))


def noise_std(values: np.ndarray) -> float:
    """Point-to-point noise of a series, from the MAD of its first differences: insensitive to a slow trend and to
    a few outliers, unlike the std of the values themselves."""
    diffs = np.diff(np.asarray(values, dtype="float64"))
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        return 0.0
    return float(DIFF_MAD_TO_STD * np.median(np.abs(diffs - np.median(diffs))))


@dataclass(frozen=True)
class Baseline:
    """Trailing robust level and noise at each point, computed from the points BEFORE it (so a spike never raises
    its own baseline). `level` is the rolling median, `noise` the rolling robust std of successive differences."""

    level: pd.Series
    noise: pd.Series


def trailing_baseline(x: pd.Series, window: int, min_periods: int) -> Baseline:
    """Rolling median and difference-noise over the `window` points before each point (NaN until `min_periods`)."""
    return Baseline(level=trailing_level(x, window, min_periods), noise=trailing_noise(x, window, min_periods))


def trailing_level(x: pd.Series, window: int, min_periods: int) -> pd.Series:
    """`trailing_baseline(...).level` alone: the median of the `window` points before each point."""
    min_periods = max(1, min(min_periods, window))
    return cached(x, ("trailing_level", window, min_periods), lambda: pd.Series(
        _shift1(rolling_median_values(x.to_numpy(dtype="float64"), window, min_periods)), index=x.index,
        name=x.name))


def trailing_noise(x: pd.Series, window: int, min_periods: int) -> pd.Series:
    """`trailing_baseline(...).noise` alone: the robust std of successive differences over the `window` points
    before each point."""
    min_periods = max(1, min(min_periods, window))

    def compute() -> pd.Series:
        absdiff = x.diff().abs()
        # median |d| of differences of i.i.d. normal noise with std s is 0.6745 * s * sqrt(2)
        medians = rolling_median_values(absdiff.to_numpy(dtype="float64"), window, max(1, min_periods - 1))
        return pd.Series(_shift1(medians), index=x.index, name=x.name) * DIFF_MAD_TO_STD

    return cached(x, ("trailing_noise", window, min_periods), compute)


def trailing_noise_at(x: pd.Series, positions: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """`trailing_noise(x, window, min_periods)` at the given positions only: the same numbers, without a rolling
    median over the whole series when few points need one (a spike test needs the noise only where the loss rose)."""
    positions = np.asarray(positions, dtype="int64")
    min_periods = max(1, min(min_periods, window))
    if len(positions) * window > len(x) * POINTWISE_MEDIAN_COST:
        return trailing_noise(x, window, min_periods).to_numpy()[positions]
    absdiff = np.abs(np.diff(x.to_numpy(dtype="float64")))
    absdiff = np.r_[np.nan, absdiff]  # Series.diff(): NaN first
    return window_medians(absdiff, positions, window, max(1, min_periods - 1)) * DIFF_MAD_TO_STD


def rolling_median(x: pd.Series, window: int, center: bool = True) -> pd.Series:
    """Rolling median with shrinking windows at the ends (never NaN where x has values)."""
    return cached(x, ("rolling_median", window, center), lambda: pd.Series(
        moving_median(x.to_numpy(dtype="float64"), window, 1, center=center), index=x.index, name=x.name))


# Exact rolling medians: bottleneck's double heap in general (moving_median); a window of a few points sorts as a
# block (numpy) faster still, and a median at a few positions is a sort of those windows only.
SMALL_WINDOW = 6  # windows up to this many points are sorted as blocks (1.4-1.7x faster than the heap at 3-5)
POINTWISE_MEDIAN_COST = 4  # medians at k positions cost ~k x window; a full rolling median ~this x n
_MEDIAN_CHUNK = 1 << 16  # rows of windows sorted at once: bounds the memory of a block sort


def rolling_median_values(values: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """`pd.Series(values).rolling(window, min_periods=min_periods).median().to_numpy()`, the same numbers: NaN
    and +-inf are no values (pandas drops infinities from rolling windows), a window with fewer than min_periods
    values is NaN, an even count gives the mean of the two middle values."""
    values = np.asarray(values, dtype="float64")
    if window > SMALL_WINDOW or len(values) < window:
        return moving_median(values, window, min_periods)
    bad = ~np.isfinite(values)
    if bad.sum() * window * POINTWISE_MEDIAN_COST > len(values):
        return window_medians(values, np.arange(1, len(values) + 1), window, min_periods)
    # the first window - 1 points have short windows, the rest full ones, sorted column-wise; the few windows
    # that hold a NaN or an infinity (not a value for pandas) are redone one by one
    out = np.empty(len(values), dtype="float64")
    out[:window - 1] = window_medians(values, np.arange(1, window), window, min_periods)
    out[window - 1:] = _full_window_medians(values, window)
    if bad.any():
        touched = np.flatnonzero(np.convolve(bad.astype(np.int32), np.ones(window, dtype=np.int32))[:len(values)])
        touched = touched[touched >= window - 1]
        out[touched] = window_medians(values, touched + 1, window, min_periods)
    return out


def moving_median(values: np.ndarray, window: int, min_periods: int, center: bool = False) -> np.ndarray:
    """pandas' rolling median (`.rolling(window, min_periods, center).median()`), the same numbers, by
    bottleneck's double-heap median: 5-8x faster than pandas' skiplist on a million points. NaN and +-inf are no
    values, a window with fewer than min_periods values is NaN, an even count gives the mean of the two middle
    values. pandas centres a window on [i - window // 2, i + (window - 1) // 2]: the trailing window of values
    padded with (window - 1) // 2 NaNs at the end."""
    values = np.asarray(values, dtype="float64")
    right = (window - 1) // 2 if center else 0
    padded = np.where(np.isinf(values), np.nan, values)
    if right:
        padded = np.r_[padded, np.full(right, np.nan)]
    span = min(window, len(padded))  # a window longer than the series holds all of it, as one that long does
    min_periods = max(1, min_periods)
    if not len(values) or min_periods > span:
        return np.full(len(values), np.nan)
    return bottleneck.move_median(padded, span, min_count=min_periods)[right:]


def _full_window_medians(values: np.ndarray, window: int) -> np.ndarray:
    """Medians of values[t - window + 1:t + 1] for t >= window - 1 (finite values): the windows' columns sorted
    by an odd-even transposition network of whole-array minimum/maximum, then the middle column(s)."""
    count = len(values) - window + 1
    columns = [values[k:k + count] for k in range(window)]
    for round_ in range(window):
        for k in range(round_ % 2, window - 1, 2):
            low, high = np.minimum(columns[k], columns[k + 1]), np.maximum(columns[k], columns[k + 1])
            columns[k], columns[k + 1] = low, high
    half = window // 2
    with np.errstate(invalid="ignore"):  # windows with an infinity are redone by the caller
        return columns[half] if window % 2 else (columns[half] + columns[half - 1]) / 2


def window_medians(values: np.ndarray, ends: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """For each end e, the median of the values among values[max(0, e - window):e], as pandas' rolling median
    computes it (NaN/inf are no values; NaN with fewer than min_periods values)."""
    values = np.asarray(values, dtype="float64")
    values = np.where(np.isinf(values), np.nan, values)
    ends = np.asarray(ends, dtype="int64")
    padded = np.r_[np.full(window, np.nan), values]
    out = np.empty(len(ends), dtype="float64")
    offsets = np.arange(window)
    for a in range(0, len(ends), _MEDIAN_CHUNK):
        starts = ends[a:a + _MEDIAN_CHUNK]  # in `padded`, the window of end e starts at e (window NaNs in front)
        block = np.sort(padded[starts[:, None] + offsets[None, :]], axis=1)  # NaN sort last
        count = window - np.isnan(block).sum(axis=1)
        rows = np.arange(len(starts))
        low = block[rows, np.maximum(count - 1, 0) // 2]
        high = block[rows, np.minimum(count // 2, window - 1)]
        median = np.where(count % 2 == 1, high, (high + low) / 2)  # pandas: (s[mid] + s[mid - 1]) / 2
        out[a:a + _MEDIAN_CHUNK] = np.where((count >= max(min_periods, 1)) & (count > 0), median, np.nan)
    return out


def _shift1(values: np.ndarray) -> np.ndarray:
    """Series.shift(1) of a float array: NaN first."""
    out = np.empty(len(values), dtype="float64")
    if len(values):
        out[0] = np.nan
        out[1:] = values[:-1]
    return out


def forward_median(x: pd.Series, window: int) -> pd.Series:
    """Median of the `window` points starting AT each point (the mirror of a trailing median)."""
    values = x.to_numpy(dtype="float64")[::-1]
    return pd.Series(moving_median(values, window, 1)[::-1], index=x.index, name=x.name)


def log_slope(series: pd.Series) -> float:
    """Least-squares slope of log(values) per step (natural log units per step); NaN with < 3 points or values <= 0."""
    if len(series) < 3:
        return float("nan")
    logs = log_values(series)
    if logs is None:
        return float("nan")
    steps = np.asarray(series.index, dtype="float64")
    if np.ptp(steps) == 0:
        return float("nan")
    return float(np.polyfit(steps - steps.mean(), logs.to_numpy(), 1)[0])


@dataclass(frozen=True)
class LevelShift:
    """The strongest sustained change of level in a series: `before` and `after` are robust levels over `window`
    points on each side of step `step` (the first point of the new level)."""

    step: int
    index: int  # position of that point in the series
    before: float
    after: float

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else float("inf")


def level_shift(series: pd.Series, window: int, direction: str = "down") -> LevelShift | None:
    """The point where the median of the next `window` points differs most from the median of the previous
    `window` points, in `direction` ("down": the largest relative drop, "up": the largest rise). Single outliers
    do not move a median, so one slow step or one eval stall is never a shift. None with < 2 x window points."""
    n = len(series)
    if window < 1 or n < 2 * window:
        return None
    values = series.astype("float64")
    before = _shift1(moving_median(values.to_numpy(), window, window))
    after = forward_median(values, window).to_numpy()
    valid = np.arange(n)
    valid = (valid >= window) & (valid <= n - window)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = after / before
    score = np.where(valid & np.isfinite(ratio) & (before > 0), ratio, np.nan)
    if not np.isfinite(score).any():
        return None
    i = int(np.nanargmin(score) if direction == "down" else np.nanargmax(score))
    # Medians tie while the next window is still half old level: the shift begins at the first point of the new
    # level, i.e. the first point from i on that lies past the midpoint between the two levels.
    mid = 0.5 * (before[i] + after[i])
    ahead = values.to_numpy()[i:i + window]
    crossed = np.flatnonzero(ahead <= mid if direction == "down" else ahead >= mid)
    j = i + int(crossed[0]) if len(crossed) else i
    return LevelShift(step=int(series.index[j]), index=j, before=float(before[i]), after=float(after[i]))


def runs_of_true(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end_exclusive)] of the runs of True in a boolean array, in order."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist()))


def quantum(series: pd.Series) -> float:
    """The resolution of a logged series: the smallest gap between two distinct values (0.0001 for a loss that the
    logger rounded to 4 decimals). A change of one or two quanta is rounding, not a signal."""
    return cached(series, "quantum", lambda: _quantum(series))


def _quantum(series: pd.Series) -> float:
    values = sorted_unique(series.to_numpy(dtype="float64"))
    values = values[np.isfinite(values)]
    gaps = np.diff(values)
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if len(gaps) else 0.0


def loss_noise_cv(series: pd.Series) -> float:
    """Robust coefficient of variation of the loss's step-to-step changes: the robust std of differences of the
    log-loss (so 0.05 means ~5% point-to-point noise). NaN when it cannot be computed."""
    return cached(series, "loss_noise_cv", lambda: _loss_noise_cv(series))


def _loss_noise_cv(series: pd.Series) -> float:
    logs = log_values(series)
    if logs is None or len(logs) < 4:
        return float("nan")
    return noise_std(logs.to_numpy())


# --- schedule --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """What the learning-rate schedule was doing: from the logged lr where there is one, else from hparams.

    `warmup_end` is the first step at which the lr reached its peak (None: no warmup seen); `peak_lr` the largest
    lr; `source` says where the numbers came from ("logged lr", "hparams", or "unknown").
    """

    peak_lr: float | None
    warmup_end: int | None
    source: str
    lr: pd.Series | None = None  # the finite logged lr, when logged
    max_steps: int | None = None
    kind: str | None = None  # lr_schedule from hparams (cosine, linear, constant, ...)

    def lr_at(self, step: float) -> float | None:
        """The lr at a step: interpolated from the logged series, else computed from the hparams' schedule."""
        if self.lr is not None and len(self.lr):
            steps = np.asarray(self.lr.index, dtype="float64")
            return float(np.interp(step, steps, self.lr.to_numpy()))
        if self.peak_lr is None:
            return None
        return self.peak_lr * self._fraction_from_hparams(step)

    def fraction_at(self, step: float) -> float | None:
        """lr at `step` as a fraction of the peak lr (1.0 at peak, ~0 at the end of a full decay)."""
        lr = self.lr_at(step)
        if lr is None or not self.peak_lr:
            return None
        return lr / self.peak_lr

    def fractions(self, steps: np.ndarray) -> np.ndarray | None:
        """`fraction_at` for an array of steps (vectorised); None when the schedule is unknown."""
        steps = np.asarray(steps, dtype="float64")
        if not self.peak_lr:
            return None
        if self.lr is not None and len(self.lr):
            return np.interp(steps, np.asarray(self.lr.index, dtype="float64"), self.lr.to_numpy()) / self.peak_lr
        return self._fractions_from_hparams(steps)

    def learning(self, steps: np.ndarray, min_lr_fraction: float) -> np.ndarray:
        """Mask of the steps past warmup where the lr is at least `min_lr_fraction` of its peak: where a
        healthy run is expected to make progress."""
        keep = np.ones(len(steps), dtype=bool)
        if self.warmup_end is not None:
            keep &= steps >= self.warmup_end
        fractions = self.fractions(steps)
        if fractions is not None:
            keep &= fractions >= min_lr_fraction
        return keep

    def in_warmup(self, step: float) -> bool:
        return self.warmup_end is not None and step < self.warmup_end

    def _fraction_from_hparams(self, step: float) -> float:
        return float(self._fractions_from_hparams(np.array([step], dtype="float64"))[0])

    def _fractions_from_hparams(self, steps: np.ndarray) -> np.ndarray:
        warm = self.warmup_end or 0
        out = np.ones(len(steps))
        if warm:
            out = np.where(steps < warm, np.maximum(steps, 0) / warm, 1.0)
        if not self.max_steps or self.max_steps <= warm:
            return out
        progress = np.clip((steps - warm) / (self.max_steps - warm), 0.0, 1.0)
        kind = (self.kind or "").lower()
        if "cos" in kind:
            decay = 0.5 * (1.0 + np.cos(np.pi * progress))
        elif "linear" in kind or "poly" in kind:
            decay = 1.0 - progress
        else:
            return out  # constant (or unknown: assume the lr stays, the cautious choice for "still learning")
        return np.where(steps < warm, out, decay)


def schedule(run: Run) -> Schedule:
    """The run's lr schedule: logged lr if any (warmup end where it first reaches 95% of its max), else hparams."""
    return cached(run, "schedule", lambda: _schedule(run))


def _schedule(run: Run) -> Schedule:
    max_steps = _as_int(run.hparam("max_steps"))
    kind = run.hparam("lr_schedule")
    kind = str(kind) if kind is not None else None
    if run.has("lr"):
        lr = finite(run.series("lr"))
        lr = lr[lr >= 0]
        if len(lr):
            values = lr.to_numpy()
            peak = float(values.max())
            warmup_end = None
            if peak > 0 and values[0] < WARMUP_STARTS_BELOW * peak:
                reached = np.flatnonzero(values >= WARMUP_REACHED * peak)
                warmup_end = int(lr.index[reached[0]]) if len(reached) else None
            return Schedule(peak_lr=peak, warmup_end=warmup_end, source="logged lr", lr=lr,
                            max_steps=max_steps, kind=kind)
    peak = _as_float(run.hparam("lr"))
    warmup = _as_int(run.hparam("warmup_steps"))
    ratio = _as_float(run.hparam("warmup_ratio"))
    if not warmup and ratio and max_steps:
        warmup = int(round(ratio * max_steps))
    return Schedule(peak_lr=peak, warmup_end=warmup or None, source="hparams" if peak else "unknown",
                    max_steps=max_steps, kind=kind)


# --- chance level ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChanceLevel:
    """The loss of a model that predicts the uniform distribution: ln(classes), in the loss's own base."""

    value: float
    classes: int
    hparam: str  # "vocab_size" or "num_classes"
    base: float  # e (natural log) unless the run reports base-2 loss (fairseq)

    def describe(self) -> str:
        unit = "ln" if self.base == math.e else f"log{self.base:g}"
        return f"{unit}({self.classes}) = {self.value:.3f}"


def loss_base(run: Run) -> float:
    """The logarithm base of the logged loss: 2 for fairseq-style logs (hparam loss_base), else e."""
    base = _as_float(run.hparam("loss_base"))
    return base if base and base > 1 else math.e


def chance_level(run: Run) -> ChanceLevel | None:
    """ln(num_classes) if the run is a classifier, else ln(vocab_size) for a language model; None if unknown."""
    base = loss_base(run)
    for name in ("num_classes", "vocab_size"):
        classes = _as_int(run.hparam(name))
        if classes and classes >= 2:
            return ChanceLevel(value=math.log(classes) / math.log(base), classes=classes, hparam=name, base=base)
    return None


# --- batch -----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EffectiveBatch:
    """Sequences (and tokens, when block_size is known) per optimizer step, and the factors it came from."""

    sequences: int
    batch_size: int | None
    grad_accum: int
    world_size: int
    tokens: int | None
    source: str  # "batch_size x grad_accum x world_size" or "global_batch_size"
    grad_accum_known: bool = True  # False: the run does not say, 1 was assumed
    world_size_known: bool = True

    def describe(self) -> str:
        if self.batch_size is None:
            text = f"global batch {self.sequences}"
        else:
            text = f"{self.batch_size} x {self.grad_accum}"
            if self.world_size > 1:
                text += f" x {self.world_size}"
            text += f" = {plural(self.sequences, 'sequence')}"
            if not self.grad_accum_known:
                text += " (grad_accum not recorded, 1 assumed)"
        if self.tokens:
            text += f" ({self.tokens} tokens)"
        return text


def plural(count: int, noun: str) -> str:
    """'1 sequence', '2 sequences'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def effective_batch(run: Run) -> EffectiveBatch | None:
    """batch_size x grad_accum x world_size (or global_batch_size when that is all the run says); None if unknown."""
    batch = _positive_int(run.hparam("batch_size"))
    accum = _positive_int(run.hparam("grad_accum")) or 1
    world = _positive_int(run.hparam("world_size")) or 1
    block = _positive_int(run.hparam("block_size"))
    global_batch = _positive_int(run.hparam("global_batch_size"))
    if batch:
        sequences = batch * accum * world
        source = "batch_size x grad_accum x world_size"
    elif global_batch:
        sequences, source = global_batch, "global_batch_size"
    else:
        return None
    return EffectiveBatch(sequences=sequences, batch_size=batch, grad_accum=accum, world_size=world,
                          tokens=sequences * block if block else None, source=source,
                          grad_accum_known=bool(batch is None or _positive_int(run.hparam("grad_accum"))),
                          world_size_known=bool(batch is None or _positive_int(run.hparam("world_size"))))


# --- run facts -------------------------------------------------------------------------------------------------------

def window_averaged(run: Run) -> bool:
    """True when the logged train loss is a mean over the logging window (HF Trainer), which flattens spikes."""
    return any(fmt in WINDOW_AVERAGED_FORMATS for fmt in run.formats)


def last_checkpoint_before(run: Run, step: int) -> Checkpoint | None:
    """The latest readable checkpoint saved at or before `step` (None when there is none)."""
    best = None
    for ckpt in run.checkpoints:
        if ckpt.step is None or ckpt.step > step or ckpt.error:
            continue
        if ckpt.stats is not None and ckpt.stats.nonfinite:
            continue
        if best is None or ckpt.step >= best.step:
            best = ckpt
    return best


def restart_steps(run: Run) -> list[int]:
    """Steps at which the run resumed (steps went backwards), from restart events."""
    return sorted({e.step for e in run.events_of("restart") if e.step is not None})


def hparam_number(run: Run, name: str) -> float | None:
    """A numeric hyperparameter, or None when absent or not a number."""
    return _as_float(run.hparam(name))


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _as_int(value: Any) -> int | None:
    out = _as_float(value)
    return int(out) if out is not None and out == int(out) else None


def _positive_int(value: Any) -> int | None:
    """A count (batch size, accumulation steps, ...): a positive integer, else None (0, negative, not a number)."""
    out = _as_int(value)
    return out if out is not None and out > 0 else None


def fmt_ratio(ratio: float) -> str:
    """A factor for a message: 2.76x; past 100x, significant digits only (a loss that overflows to 4e27 rose
    6.09e25x, not 60934415088935499861065728.00x)."""
    return f"{ratio:.2f}x" if abs(ratio) < 100 else f"{fmt_num(ratio)}x"


def fmt_times(ratio: float) -> str:
    """A large factor in whole units for a message: 254x; from 10,000x, significant digits only (a gradient norm
    that overflows reads 3.27e12x, not 3270000000000x)."""
    return f"{ratio:.0f}x" if abs(ratio) < 1e4 else f"{fmt_num(ratio)}x"


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A number for a message: `digits` significant digits, 8.44e-5 style for very small or large magnitudes,
    "unknown" for None or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "unknown"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        if "." in mantissa:  # 5e-4, not 5.00e-4: the reports' tables write it so
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    if magnitude >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def share_of(ratio: float) -> str:
    """A ratio to a reference, worded to precede it: '92% of' below it, '7.1x' above (713% reads worse)."""
    if ratio <= 1:
        return f"{ratio:.0%} of"
    return f"{ratio:.2f}x" if ratio < 2 else f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def round_sig(value: float, digits: int = 2) -> float:
    """Round to `digits` significant digits (suggested hparam values read as a person would write them)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


# --- events, gradient norm, precision (stability detectors) ----------------------------------------------------------

UNMEASURED_ZERO_SHARE = 0.8  # a grad norm that is exactly 0 at this share of its points is not measured
FP16_PRECISIONS = ("fp16", "16", "16-mixed", "float16", "half", "amp", "mixed")


def event_steps(run: Run, events) -> list[int | None]:
    """The step of each event; where its line carried none, the step of the last scalar point written above it in
    the same file (a DeepSpeed OVERFLOW line belongs to the iteration being computed when it was printed)."""
    out: list[int | None] = [e.step for e in events]
    missing = [i for i, e in enumerate(events) if e.step is None and e.line is not None and e.file in run.sources]
    if not missing:
        return out
    scalars = run.scalars
    for file in sorted({events[i].file for i in missing}):
        rows = scalars[scalars["source"] == run.sources.index(file)]
        if not len(rows):
            continue
        order = np.argsort(rows["line"].to_numpy(), kind="stable")
        lines = rows["line"].to_numpy()[order]
        steps = rows["step"].to_numpy()[order]
        for i in missing:
            if events[i].file == file:
                at = int(np.searchsorted(lines, events[i].line, side="right")) - 1
                out[i] = int(steps[at]) if at >= 0 else None
    return out


@dataclass(frozen=True)
class GradNorm:
    """The logged gradient norm as detectors should read it: finite points, and exact zeros set apart (a zero
    norm is no gradient at all: a zero-advantage RL batch, or a value printed with too few decimals)."""

    values: pd.Series  # finite, non-zero points
    zeros: pd.Series  # finite points that are exactly 0
    unmeasured: str | None  # why the logged numbers are not a measurement, or None


def grad_norm(run: Run) -> GradNorm | None:
    """The run's gradient norm, or None when it logs none. `unmeasured` is set when the norm is exactly 0 at most
    points while the loss changes: the norm was printed with too few decimals (Megatron's `grad norm: 0.000`) or
    never computed, so it says nothing about the gradients."""
    return cached(run, "grad_norm", lambda: _grad_norm(run))


def _grad_norm(run: Run) -> GradNorm | None:
    if not run.has("grad_norm"):
        return None
    series = finite(run.series("grad_norm"))
    is_zero = series.to_numpy() == 0.0
    zeros, values = series[is_zero], series[~is_zero]
    unmeasured = None
    if len(series) and is_zero.mean() >= UNMEASURED_ZERO_SHARE:
        loss = train_loss(run)
        if loss is not None and len(loss[1]) > 1 and float(np.ptp(loss[1].to_numpy())) > 0:
            unmeasured = (f"the gradient norm is exactly 0 at {int(is_zero.sum())} of {len(series)} points while "
                          f"the {loss[0]} changes: it is not measured (printed with too few decimals or never "
                          "computed)")
    return GradNorm(values=values, zeros=zeros, unmeasured=unmeasured)


def uses_fp16(run: Run) -> bool:
    """True when the run trains in float16 with loss scaling: said by the precision hparam (not bf16), an `fp16`
    flag, overflow messages, or a logged loss scale that is not constantly 1."""
    return precision_is_fp16(run) is True


def precision_is_fp16(run: Run) -> bool | None:
    """True (fp16 with loss scaling), False (known not to be: bf16/fp32 precision, or a loss scale printed as a
    constant 1, as Megatron does in bf16), or None when the run does not say."""
    precision = run.hparam("precision")
    if isinstance(precision, (str, int, float)) and not isinstance(precision, bool):
        text = str(precision).lower()
        if "bf16" in text or "bfloat" in text:
            return False
        if text in FP16_PRECISIONS or "fp16" in text or "float16" in text:
            return True
        if text in ("fp32", "32", "float32", "32-true", "tf32", "64", "fp64"):
            return False
    if run.hparam("fp16") is True:
        return True
    if run.events_of("overflow"):
        return True
    if run.has("loss_scale"):  # Megatron prints `loss scale: 1.0` in bf16 runs too: a constant 1 is no scaling
        scale = finite(run.series("loss_scale"))
        if len(scale):
            return not bool((scale == 1.0).all())
    return None


IMPLIED_MAX_CLASSES = 10  # ln k for k <= 10 are far enough apart (>= 0.1) to tell which one a loss sits on
IMPLIED_TOLERANCE = 0.002  # relative: a loss within 0.2% of ln k for a long stretch is not a coincidence


def implied_chance_level(level: float, run: Run | None = None) -> ChanceLevel | None:
    """A chance level the loss itself points at: a loss that sits within 0.2% of ln(k) for a small k (2..10) is a
    k-way classifier predicting the uniform distribution (e.g. 1.3863 = ln 4 for 4-way multiple choice), even
    when the config does not say num_classes. None when the level is not that close to any such ln(k)."""
    if not (level > 0 and math.isfinite(level)):
        return None
    base = loss_base(run) if run is not None else math.e
    for k in range(2, IMPLIED_MAX_CLASSES + 1):
        value = math.log(k) / math.log(base)
        if abs(level - value) <= IMPLIED_TOLERANCE * value:
            return ChanceLevel(value=value, classes=k, hparam="implied by the loss", base=base)
    return None


@dataclass(frozen=True)
class Rise:
    """How far a series rose during a stretch [start, end] (plus a margin of two logging intervals), against the
    median of the `lookback` points before it."""

    ratio: float  # highest value in the stretch / level before; 1.0 when it cannot be measured
    level: float | None  # the median before the stretch
    peak_step: int | None  # the step of the highest value


def rise_during(series: pd.Series, start: int, end: int, lookback: int = 5) -> Rise:
    """The rise of a (finite, sorted) positive series such as the loss during an episode of another signal."""
    if series is None or not len(series):
        return Rise(1.0, None, None)
    before = series[series.index < start]
    if not len(before):
        return Rise(1.0, None, None)
    level = float(np.median(before.to_numpy()[-lookback:]))
    margin = max(2.0 * log_interval(series), 1.0)
    during = series[(series.index >= start) & (series.index <= end + margin)]
    if not len(during) or level <= 0:
        return Rise(1.0, level, None)
    return Rise(float(during.max()) / level, level, int(during.idxmax()))


COMPOSITE_LOSS_MARKERS = ("kd_loss", "kd_raw")  # a logged KD term means `loss` is a weighted sum, not one CE


def composite_loss(run: Run) -> bool:
    """True when the run's `loss` is a sum of terms (knowledge distillation: alpha x KD + (1 - alpha) x LM), so it
    cannot be compared with a cross-entropy's chance level; its `lm_loss` can."""
    return any(run.has(m) for m in COMPOSITE_LOSS_MARKERS)


def cross_entropy_loss(run: Run) -> tuple[str, pd.Series] | None:
    """The training loss that is a plain cross-entropy: `lm_loss` for composite (KD) losses, else the train loss."""
    if composite_loss(run) and run.has("lm_loss"):
        series = finite(run.series("lm_loss"))
        if len(series):
            return "lm_loss", series
        return None
    if composite_loss(run):
        return None
    return train_loss(run)


def curvature_noise_std(values: np.ndarray) -> float:
    """Point noise from the MAD of second differences: unlike first differences, a steady (even steep) trend
    does not inflate it, which matters on short, fast-falling series such as a few eval losses."""
    d2 = np.diff(np.asarray(values, dtype="float64"), n=2)
    d2 = d2[np.isfinite(d2)]
    if not len(d2):
        return 0.0
    return float(MAD_TO_STD * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


def hidden_zeros(series: pd.Series, zero_from: float, lookback: int = 5) -> np.ndarray:
    """Positions where a loss reads exactly 0.0 right after a normal level (the median of the `lookback` finite,
    non-zero points before it at least `zero_from`): a NaN that a filter or a clamp replaced by zero (HF Trainer's
    logging_nan_inf_filter, seed 002's "clamping to zero"). A loss that sits at ~0 by design never qualifies."""
    values = series.to_numpy(dtype="float64")
    usable = np.isfinite(values) & (values != 0.0)
    level = _shift1(rolling_median_values(np.where(usable, values, np.nan), lookback, 1))
    return np.flatnonzero((values == 0.0) & (level >= zero_from))


def segment_series(run: Run, metric: str) -> list[pd.Series]:
    """One finite series per segment of `metric` (a segment is what one process wrote between restarts), each
    sorted by step. Where a later segment rewrote steps, each segment still keeps its own points: a baseline
    must not mix a resumed job with the steps of the one before it."""
    if not _has_restarts(run):  # one segment: its points are the series' own (steps never went back)
        series = finite(run.series(metric))
        return [series] if len(series) else []
    rows = run.scalars[run.scalars["metric"] == metric]
    if not len(rows):
        return []
    rows = rows[rows["rank"] == rows["rank"].min()]
    out = []
    for _, part in rows.groupby("segment", sort=True):
        out.append(finite(pd.Series(part["value"].to_numpy(), index=pd.Index(part["step"].to_numpy(), name="step"),
                                    name=metric)))
    return [s for s in out if len(s)]


def _has_restarts(run: Run) -> bool:
    return cached(run, "has_restarts", lambda: bool(len(run.scalars)) and bool(
        run.scalars["segment"].to_numpy().any()))


GRAD_WINDOW = 50  # trailing points of a gradient-norm baseline (grad-explosion's default window)
GRAD_FACTOR = 10.0  # an order of magnitude above that baseline is an excursion (grad-explosion's default factor)
GRAD_MIN_PERIODS = 10


@dataclass(frozen=True)
class Excursions:
    """Where a positive series (a gradient norm) runs far above its trailing median: `excess` is the log-ratio to
    that median (0 where there is no baseline yet), `high` the points at least `factor` above it, `low` those at
    least half of that, and `runs` the [start, end) stretches of `low` points that contain a `high` one."""

    high: np.ndarray
    low: np.ndarray
    runs: list[tuple[int, int]]
    excess_of: Callable[[], np.ndarray] = field(repr=False, compare=False)
    excess_in: Callable[[int, int], np.ndarray] = field(repr=False, compare=False)

    @property
    def excess(self) -> np.ndarray:
        """Computed on first use: high, low and runs need the trailing median only where a point could be high."""
        return self.excess_of()

    def excess_between(self, start: int, end: int) -> np.ndarray:
        """excess[start:end], computed for those points only (an excursion's own points, say)."""
        return self.excess_in(start, end)


def excursions(series: pd.Series, window: int = GRAD_WINDOW, factor: float = GRAD_FACTOR,
               min_periods: int = GRAD_MIN_PERIODS) -> Excursions:
    """Excursions of a positive series above its trailing robust level, with hysteresis (a stretch above half the
    factor around points above the factor), so one event that wobbles around the threshold is one excursion. Short
    series (a chronicle quoting 20 lines) get a baseline from a quarter of their points, at least 3."""
    return cached(series, ("excursions", window, factor, min_periods),
                  lambda: _excursions(series, window, factor, min_periods))


def _excursions(series: pd.Series, window: int, factor: float, min_periods: int) -> Excursions:
    periods = int(np.clip(len(series) // 4, 3, min_periods))
    periods = max(1, min(periods, window))  # as trailing_baseline takes it
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(series.to_numpy(dtype="float64"))
        high_at, low_at = np.log(factor), np.log(factor / 2)

    # the answer is kept with the series, and keeps only a weak reference back to it (no reference cycle)
    owner = weakref.ref(series)

    def full_excess() -> np.ndarray:
        def compute() -> np.ndarray:
            level = _shift1(rolling_median_values(x, window, periods))
            return np.nan_to_num(x - level, nan=0.0)

        alive = owner()
        return compute() if alive is None else cached(alive, ("excess", window, periods), compute)

    def excess_in(start: int, end: int) -> np.ndarray:
        alive = owner()
        store = alive.__dict__.get(_CACHE, {}) if alive is not None else {}
        if ("excess", window, periods) in store:
            return store[("excess", window, periods)][start:end]
        where = np.arange(max(start, 0), min(end, len(x)))
        return np.nan_to_num(x[where] - window_medians(x, where, window, periods), nan=0.0)

    # A point is `low` only if it is low_at above the median of the points before it, so at least low_at above
    # their minimum (a rolling minimum is cheap): the median is needed only there. Points without a baseline have
    # excess 0, which is never low while low_at > 0.
    candidates = None
    if low_at > 0:
        floor = _shift1(pd.Series(x).rolling(window, min_periods=periods).min().to_numpy())
        with np.errstate(invalid="ignore"):
            candidates = np.flatnonzero(x - floor >= low_at)
        if len(candidates) * window > len(x) * POINTWISE_MEDIAN_COST:
            candidates = None
    if candidates is None:
        excess = full_excess()
        high, low = excess >= high_at, excess >= low_at
    else:
        excess_at = np.nan_to_num(x[candidates] - window_medians(x, candidates, window, periods), nan=0.0)
        high = np.zeros(len(x), dtype=bool)
        low = np.zeros(len(x), dtype=bool)
        high[candidates] = excess_at >= high_at
        low[candidates] = excess_at >= low_at
    runs = [(a, b) for a, b in runs_of_true(low) if high[a:b].any()]
    return Excursions(high=high, low=low, runs=runs, excess_of=full_excess, excess_in=excess_in)


def median_before(series: pd.Series, step: int, window: int = GRAD_WINDOW) -> tuple[float, int] | None:
    """The running median of a gradient norm at `step`: the median of the last `window` points logged strictly
    before it, with their count. The one baseline that every message quoting "x its median" uses, taken before the
    event starts (an excursion's start), so the event's own points never raise it."""
    before = series.to_numpy(dtype="float64")[: int(np.searchsorted(series.index.to_numpy(), step, side="left"))]
    before = before[np.isfinite(before)][-window:]
    if not len(before):
        return None
    return float(np.median(before)), len(before)


def unhealed_spans(series: pd.Series, found: Excursions, window: int = GRAD_WINDOW,
                   factor: float = GRAD_FACTOR) -> list[tuple[int, int]]:
    """`found.runs` with each run extended over the points after it that stay at least half `factor` above the
    median before its start: a norm that stays up after an excursion has raised its own rolling median and is no
    longer flagged, but it has not come back (bloom104b_overflow: 4.6e5-8.8e5 after a pre-excursion median of 3.5e3)."""
    values = series.to_numpy(dtype="float64")
    steps = series.index.to_numpy()
    spans = []
    for start, end in found.runs:
        level = median_before(series, int(steps[start]), window)
        if level is not None and level[0] > 0 and end < len(values):
            with np.errstate(invalid="ignore"):
                back = ~(values[end:] >= factor / 2 * level[0])
            end = end + int(np.argmax(back)) if back.any() else len(values)
        spans.append((start, end))
    return spans


def healthy_grad_norms(run: Run) -> pd.Series | None:
    """The gradient norms of the run's healthy stretch: finite and non-zero, before the first non-finite loss or
    gradient norm, outside excursions and the high stretch an excursion leaves when it does not heal. The reference
    for a clip threshold (its p99), the same for every detector."""
    return cached(run, "healthy_grad_norms", lambda: _healthy_grad_norms(run))


def _healthy_grad_norms(run: Run) -> pd.Series | None:
    grad = grad_norm(run)
    if grad is None or grad.unmeasured or not len(grad.values):
        return None
    values = grad.values
    first_bad = None
    for metric in ("grad_norm",) + TRAIN_LOSS_METRICS:
        if run.has(metric):
            series = run.series(metric)
            bad = series.index[~np.isfinite(series.to_numpy(dtype="float64"))]
            if len(bad):
                first_bad = int(bad.min()) if first_bad is None else min(first_bad, int(bad.min()))
    if first_bad is not None:
        values = values[values.index < first_bad]
    if not len(values):
        return None
    keep = np.ones(len(values), dtype=bool)
    for start, end in unhealed_spans(values, excursions(values)):
        keep[start:end] = False
    return values[keep]
