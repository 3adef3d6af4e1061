"""Recommendations shared by the numerical-stability detectors: bf16, a clip threshold and a smaller lr, with numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyzer.detectors import stats
from analyzer.findings import Recommendation
from analyzer.run import Run

CLIP_PERCENTILE = 99.0  # clip near the largest healthy gradient norms, so healthy steps are left alone
MIN_POINTS_FOR_PERCENTILE = 10  # fewer healthy points than this give no usable p99
CLIP_SLACK = 2.0  # a clip threshold above this many times the healthy p99 never acts on a blow-up's onset
DEFAULT_CLIP = 1.0  # GPT-2, BERT, Megatron and HF Trainer's default, when the data gives no better number
LR_FACTOR = 0.5  # halving is the usual first change after an instability (PaLM, OPT and BLOOM logs restarted so)


def healthy_p99(grad: pd.Series | None) -> float | None:
    """The 99th percentile of healthy gradient norms (two significant digits), or None with too few points."""
    if grad is None:
        return None
    values = grad.to_numpy(dtype="float64")
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) < MIN_POINTS_FOR_PERCENTILE:
        return None
    return stats.round_sig(float(np.percentile(values, CLIP_PERCENTILE)))


def clip(run: Run, healthy_grad: pd.Series | None, why: str) -> Recommendation | None:
    """max_grad_norm near the healthy p99 (else the common default 1.0); None when clipping is already that tight."""
    current = stats.hparam_number(run, "max_grad_norm")
    p99 = healthy_p99(healthy_grad)
    source = (f"the p99 of the healthy gradient norms ({stats.fmt_num(p99)})" if p99 is not None
              else f"the common default {DEFAULT_CLIP:g} (too few healthy gradient norms to measure a p99)")
    if current is None:
        # Unknown usually means the framework default (1.0 in HF, Megatron, nanoGPT): never suggest a looser clip.
        target = min(p99, DEFAULT_CLIP) if p99 is not None else DEFAULT_CLIP
        chosen = source if target == p99 else f"the common default {DEFAULT_CLIP:g}" + (
            f" (the healthy p99 is {stats.fmt_num(p99)}, above it)" if p99 is not None else "")
        return Recommendation("max_grad_norm", None, target,
                              f"{why}; the current clip threshold is unknown (not found in the run's files); "
                              f"clip at {chosen}")
    target = p99 if p99 is not None else DEFAULT_CLIP
    if current <= 0:
        return Recommendation("max_grad_norm", current, target, f"{why}; clipping is off; clip at {source}")
    if p99 is not None and current > CLIP_SLACK * p99:
        return Recommendation("max_grad_norm", current, target,
                              f"{why}; a threshold of {stats.fmt_num(current)} is {current / p99:.1f}x {source}, "
                              "so it does not act until a blow-up is already large")
    return None


def lower_lr(run: Run, why: str, factor: float = LR_FACTOR) -> Recommendation | None:
    """The peak lr times `factor`; None when the run's lr is unknown (no number to scale)."""
    current = stats.hparam_number(run, "lr")
    source = "hparams"
    if current is None:
        current = stats.schedule(run).peak_lr
        source = "logged lr"
    if not current:
        return None
    return Recommendation("lr", current, stats.round_sig(current * factor),
                          f"{why}; x{factor:g} of the peak lr ({source}: {stats.fmt_num(current)}) is the usual "
                          "first change after an instability")


def bf16(run: Run, why: str) -> Recommendation | None:
    """precision bf16 for a run that trains in fp16; None otherwise."""
    if not stats.uses_fp16(run):
        return None
    current = run.hparam("precision")
    return Recommendation("precision", current if current is not None else "fp16", "bf16",
                          f"{why}; bf16 has fp32's exponent range (largest value ~3.4e38 against fp16's 65504), so "
                          "activations and gradients cannot overflow and no loss scaling is needed (on hardware "
                          "without bf16, keep fp16 and lower the lr instead)")


def unique(recs) -> list[Recommendation]:
    """Drop Nones and repeated hparams (the first wins), keeping order."""
    out, seen = [], set()
    for rec in recs:
        if rec is not None and rec.hparam not in seen:
            out.append(rec)
            seen.add(rec.hparam)
    return out
