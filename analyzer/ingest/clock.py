"""The training loop's clock: the wall-clock time of each logged training step, kept as the metric `wall_time`.

TensorBoard, MLflow, W&B and many JSONL/CSV loggers write a time with every point for free. Kept as seconds since
the epoch (float64), one value per logged step of one metric, so the gaps between readings measure the loop: that
metric is the training loss where one is logged (eval points and other writers' points are timed by other loops),
else the training metric logged most often.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from analyzer.run import CLOCK_METRIC, canonical_metric

# Seconds since the epoch from 2001-09 to 2286: a time in ms, us or ns is scaled down by its magnitude; anything
# else (seconds since start, a duration per step) is not a clock of the epoch.
MIN_EPOCH_S, MAX_EPOCH_S = 1e9, 1e10
UNITS = (1.0, 1e3, 1e6, 1e9)  # s, ms, us, ns
LOOP_LOSSES = ("loss", "lm_loss")  # the training loss, in the order detectors prefer it


def epoch_seconds(values: np.ndarray) -> np.ndarray:
    """Times in seconds since the epoch (NaN where a value is not one), the unit read from their median size."""
    values = np.asarray(values, dtype="float64")
    finite = values[np.isfinite(values) & (values > 0)]
    out = np.full(len(values), np.nan)
    if not len(finite):
        return out
    typical = float(np.median(finite))
    for unit in UNITS:
        if MIN_EPOCH_S <= typical / unit < MAX_EPOCH_S:
            scaled = values / unit
            ok = np.isfinite(scaled) & (scaled >= MIN_EPOCH_S) & (scaled < MAX_EPOCH_S)
            out[ok] = scaled[ok]
            return out
    return out


def is_epoch_clock(values: np.ndarray) -> bool:
    """Whether most present values of a column read as times since the epoch (a column named `time` may hold a
    duration per step instead)."""
    values = np.asarray(values, dtype="float64")
    present = np.isfinite(values)
    return bool(present.any()) and np.isfinite(epoch_seconds(values)).sum() * 2 > present.sum()


def loop_metric(names: Iterable[str], counts: Iterable[int]) -> str | None:
    """The logged name (as written) whose points time the training loop: the training loss, else the training
    metric with the most points. Where several names mean one metric (HF's `train/loss` every few steps and its
    one `train/train_loss` at the end), the one with the most points; ties go to the first name in sorted order."""
    by_canonical: dict[str, tuple[str, int]] = {}
    best: tuple[str, int] | None = None
    for name, count in sorted(zip(names, counts), key=lambda item: str(item[0])):
        metric, split = canonical_metric(str(name))
        if split != "train" or metric == CLOCK_METRIC or not count:
            continue
        if metric not in by_canonical or count > by_canonical[metric][1]:
            by_canonical[metric] = (str(name), int(count))
        if best is None or count > best[1]:
            best = (str(name), int(count))
    for loss in LOOP_LOSSES:
        if loss in by_canonical:
            return by_canonical[loss][0]
    return best[0] if best else None


def frames_loop_metric(frames: Iterable[pd.DataFrame]) -> str | None:
    """loop_metric over readers' frames (step, name, value, line[, split]); rows marked eval do not count."""
    counts: dict[str, int] = {}
    for frame in frames:
        names = frame["name"]
        if "split" in frame:
            names = names[(frame["split"] != "eval").to_numpy()]
        for name, count in names.value_counts(sort=False).items():
            counts[str(name)] = counts.get(str(name), 0) + int(count)
    return loop_metric(counts, counts.values())


def clock_rows(frame: pd.DataFrame, times: np.ndarray, name: str | None) -> pd.DataFrame:
    """The clock as frame rows: the time of each point of `name` (not marked eval), in file order, under the
    canonical name; points without a usable time are left out. `times` holds one time per row of `frame`, already
    in seconds since the epoch (NaN where unknown)."""
    if name is None or not len(frame):
        return frame.iloc[:0]
    times = np.asarray(times, dtype="float64")
    keep = (frame["name"] == name).to_numpy() & np.isfinite(times)
    if "split" in frame:
        keep &= (frame["split"] != "eval").to_numpy()
    rows = np.flatnonzero(keep)
    out = {"step": frame["step"].to_numpy()[rows], "name": np.full(len(rows), CLOCK_METRIC, dtype=object),
           "value": times[rows], "line": frame["line"].to_numpy()[rows]}
    if "rank" in frame:
        out["rank"] = frame["rank"].to_numpy()[rows]
    return pd.DataFrame(out)

