"""Synthetic runs with one known numerical-stability incident (or none) for measuring the stability detectors:
NaN onsets (plain and HF-filtered), fp16 overflow cascades against calibration-only loss scaling, gradient
explosions and collapses, distillation at T = 3 against T = 2, masked LM with every token labelled.

`synthetic_cases()` yields (name, Run, expected {detector: onset or None}, allowed {detector}) over the same grid of
seeds, noise levels and logging intervals as tests/perf/eval_detection.py's curves.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from analyzer.run import Run
from tests.conftest import make_run
from tests.detectors import synth

SEEDS = (0, 1, 2)
NOISES = (0.01, 0.03, 0.08)
LOGGING = ((1, False), (10, True), (50, False))  # (interval, HF-style window average)
STEPS = 3000
AT = 1500


def logged(curve: synth.Curve, interval: int, averaged: bool, extra: dict[str, np.ndarray] | None = None,
           hparams: dict | None = None) -> Run:
    """Log a curve (and extra per-step series) every `interval` steps; HF-style runs average the loss over the
    window, and a window holding a NaN loss is logged as 0.0 (HF's logging_nan_inf_filter)."""
    n = len(curve.loss)
    steps = np.arange(interval - 1 if averaged else 0, n, interval)
    if averaged:
        windows = curve.loss[: len(steps) * interval].reshape(-1, interval)
        loss = np.where(np.isfinite(windows).all(axis=1), windows.mean(axis=1), 0.0)
    else:
        loss = curve.loss[steps]
    series = {"loss": (steps, loss), "lr": (steps, curve.lr[steps]), "grad_norm": (steps, curve.grad_norm[steps])}
    for name, values in (extra or {}).items():
        series[name] = (steps, values[steps])
    return make_run(series, hparams={**curve.hparams, **(hparams or {})}, fmt="hf-trainer" if averaged else "test")


def with_nan(curve: synth.Curve, at: int) -> synth.Curve:
    loss, grad = curve.loss.copy(), curve.grad_norm.copy()
    loss[at:] = np.nan
    grad[at:] = np.nan
    return synth.Curve(loss, curve.lr, grad, curve.steps_per_s, curve.update_ratio, curve.hparams)


def loss_scale(steps: int, collapse_at: int | None, seed: int) -> np.ndarray:
    """torch GradScaler: 65536 halved over the first 3 steps, doubled every 1000 quiet steps and halved at a
    few isolated overflows; with `collapse_at`, 5 halvings within 12 steps there."""
    rng = np.random.default_rng(seed)
    scale = np.empty(steps)
    value, quiet = 65536.0, 0
    isolated = set(rng.choice(np.arange(200, steps), size=3, replace=False).tolist())
    cascade = {collapse_at + 3 * k for k in range(5)} if collapse_at is not None else set()
    for t in range(steps):
        if t < 3 or t in isolated or t in cascade:
            value, quiet = value / 2, 0
        else:
            quiet += 1
            if quiet % 1000 == 0:
                value *= 2
        scale[t] = value
    return scale


def with_bump(curve: synth.Curve, at: int, factor: float, length: int, grad_factor: float = 1.0) -> synth.Curve:
    loss, grad = curve.loss.copy(), curve.grad_norm.copy()
    loss[at:at + length] *= factor
    grad[at:at + length] *= grad_factor
    return synth.Curve(loss, curve.lr, grad, curve.steps_per_s, curve.update_ratio, curve.hparams)


def with_vanishing(curve: synth.Curve, at: int) -> synth.Curve:
    """The gradient norm decays by four orders of magnitude from `at` while the loss stops where it was."""
    loss, grad = curve.loss.copy(), curve.grad_norm.copy()
    level = float(np.median(loss[at - 50:at]))
    noise = loss[at:] / np.median(loss[at:])
    loss[at:] = level * noise
    grad[at:] *= np.geomspace(1.0, 1e-4, len(grad) - at)
    return synth.Curve(loss, curve.lr, grad, curve.steps_per_s, curve.update_ratio, curve.hparams)


def kd_series(steps: int, temperature: float, raw_kl: float, noise: float, seed: int) -> dict[str, np.ndarray]:
    """A distillation run that logs kd_raw, kd_loss = kd_raw x T^2 and the temperature."""
    rng = np.random.default_rng(seed)
    raw = raw_kl * np.exp(rng.normal(0, noise, steps))
    return {"kd_raw": raw, "kd_loss": raw * temperature**2, "temperature": np.full(steps, temperature)}


def synthetic_cases() -> Iterator[tuple[str, Run, dict[str, int | None], set[str]]]:
    for seed in SEEDS:
        for noise in NOISES:
            for interval, averaged in LOGGING:
                tag = f"s{seed}-n{noise}-i{interval}{'avg' if averaged else ''}"
                warmup, schedule = (300, "cosine") if seed % 2 else (0, "constant")
                base = synth.healthy(seed, steps=STEPS, noise=noise, warmup=warmup, schedule=schedule)

                def run(curve, extra=None, **hp):
                    return logged(curve, interval, averaged, extra, hp)

                yield f"stable/{tag}", run(base), {}, set()
                yield (f"nan/{tag}", run(with_nan(base, AT + 3)), {"nonfinite-onset": AT + 3},
                       {"loss-spike", "loss-divergence", "loss-plateau"})
                yield (f"fp16-healthy/{tag}", run(base, {"loss_scale": loss_scale(STEPS, None, seed)}), {}, set())
                # a cascade of 5 halvings in 12 steps, without any visible effect on the loss
                yield (f"fp16-collapse/{tag}", run(base, {"loss_scale": loss_scale(STEPS, AT, seed)}),
                       {"loss-scale-collapse": AT}, {"loss-spike", "grad-explosion", "loss-divergence"})
                # the norm at 15x its level for 20 steps, the loss 20% up meanwhile
                yield (f"grad-explosion/{tag}", run(with_bump(base, AT, 1.2, 20, grad_factor=15.0)),
                       {"grad-explosion": AT}, {"loss-spike", "loss-divergence", "loss-oscillation"})
                yield (f"grad-vanishing/{tag}", run(with_vanishing(base, AT)), {"grad-vanishing": None},
                       {"loss-plateau", "lr-too-low"})
                yield (f"kd-t3/{tag}", run(base, kd_series(STEPS, 3.0, 4.2, noise, seed), temperature=3.0),
                       {"distill-temperature-blowup": 0}, set())
                yield (f"kd-t2/{tag}", run(base, kd_series(STEPS, 2.0, 2.0, noise, seed), temperature=2.0), {},
                       set())
                yield (f"mlm-all/{tag}", run(base, {"mask_ratio": np.ones(STEPS)}, mlm_probability=0.15),
                       {"mlm-label-ratio": 0}, set())
                ratio = 0.14 + 0.01 * np.random.default_rng(seed).standard_normal(STEPS)
                yield (f"mlm-ok/{tag}", run(base, {"mask_ratio": ratio}, mlm_probability=0.15), {}, set())
