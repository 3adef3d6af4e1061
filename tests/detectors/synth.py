"""Synthetic training curves for detector tests and tests/perf/eval_detection.py: healthy runs with seeded noise,
and the same runs with one known incident injected (spike, plateau, oscillation, divergence, ...)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from analyzer.run import Run
from tests.conftest import make_run


@dataclass(frozen=True)
class Curve:
    """Per-step series of a synthetic run before logging (one value per optimizer step)."""

    loss: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    steps_per_s: np.ndarray
    update_ratio: np.ndarray
    hparams: dict[str, Any] = field(default_factory=dict)


def healthy(seed: int = 0, steps: int = 3000, noise: float = 0.03, warmup: int = 0, schedule: str = "cosine",
            lr: float = 3e-4, start: float = 10.0, floor: float = 2.5, rate: float = 0.01) -> Curve:
    """A power-law learning curve start -> floor with multiplicative noise, an lr schedule, grad norms with rare
    benign single-step spikes, throughput with occasional slow steps (evals, checkpoints)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps, dtype=float)
    mean = floor + (start - floor) * (1.0 + rate * t) ** -0.7
    loss = mean * np.exp(rng.normal(0.0, noise, steps))
    if warmup:
        frac = np.minimum((t + 1) / warmup, 1.0)
    else:
        frac = np.ones(steps)
    progress = np.clip((t - warmup) / max(steps - warmup, 1), 0, 1)
    if schedule == "cosine":
        decay = 0.1 + 0.9 * 0.5 * (1 + np.cos(math.pi * progress))
    elif schedule == "linear":
        decay = 1.0 - 0.9 * progress
    else:
        decay = np.ones(steps)
    lr_series = lr * frac * decay
    grad = np.exp(rng.normal(0.0, 0.25, steps)) * (1.0 + 3.0 * np.exp(-t / 200))
    benign = rng.choice(steps, size=max(1, steps // 1000), replace=False)
    grad[benign] *= 6.0  # single-step gradient spikes that heal: not incidents
    speed = 1.0 * np.exp(rng.normal(0.0, 0.03, steps))
    slow = rng.choice(steps, size=max(1, steps // 200), replace=False)
    speed[slow] *= 0.2  # eval / checkpoint stalls
    update = lr_series / 0.02 * np.exp(rng.normal(0.0, 0.1, steps)) * 0.15  # ~2e-3 at lr 3e-4: healthy
    hp = {"learning_rate": lr, "max_steps": steps, "lr_scheduler_type": schedule, "warmup_steps": warmup,
          "batch_size": 32, "gradient_accumulation_steps": 8, "block_size": 512, "vocab_size": 22026,
          "max_grad_norm": 1.0}
    return Curve(loss, lr_series, grad, speed, update, hp)


def log(curve: Curve, interval: int = 1, averaged: bool = False, metrics: tuple[str, ...] = (
        "loss", "lr", "grad_norm", "steps_per_s"), hparams: Mapping[str, Any] | None = None,
        fmt: str = "test") -> Run:
    """Log every `interval` steps, as a framework would: either the value at that step, or (HF Trainer style)
    the mean over the logging window."""
    n = len(curve.loss)
    steps = np.arange(interval - 1 if averaged else 0, n, interval)
    series = {}
    for name in metrics:
        values = getattr(curve, name)
        if averaged and name == "loss":
            trimmed = values[: (n // interval) * interval].reshape(-1, interval).mean(axis=1)
            logged = trimmed[: len(steps)]
        else:
            logged = values[steps]
        series[name] = (steps[: len(logged)], logged)
    hp = dict(curve.hparams)
    hp.update(hparams or {})
    return make_run(series, hparams=hp, fmt=fmt)


def with_spike(curve: Curve, at: int, factor: float = 1.6, recover: int = 20, grad: float = 30.0) -> Curve:
    """A sudden rise x`factor` at step `at` that decays back over ~`recover` steps, led by a grad-norm spike."""
    t = np.arange(len(curve.loss), dtype=float)
    bump = np.where(t >= at, (factor - 1.0) * np.exp(-np.clip(t - at, 0, None) / max(recover / 3.0, 1e-9)), 0.0)
    loss = curve.loss * (1.0 + bump)
    g = curve.grad_norm.copy()
    g[max(at - 1, 0): at + 1] *= grad
    return Curve(loss, curve.lr, g, curve.steps_per_s, curve.update_ratio, curve.hparams)


def with_persistent_jump(curve: Curve, at: int, factor: float = 1.6) -> Curve:
    """A sudden rise that never comes back."""
    loss = curve.loss.copy()
    loss[at:] *= factor
    return Curve(loss, curve.lr, curve.grad_norm, curve.steps_per_s, curve.update_ratio, curve.hparams)


def with_plateau(curve: Curve, at: int) -> Curve:
    """The loss stops improving at step `at` (the curve's level at `at` held, with the same noise)."""
    loss = curve.loss.copy()
    level = np.median(loss[max(at - 20, 0): at + 1])
    loss[at:] = level * curve.loss[at:] / _smooth(curve.loss)[at:]
    return Curve(loss, curve.lr, curve.grad_norm, curve.steps_per_s, curve.update_ratio, curve.hparams)


def with_divergence(curve: Curve, at: int, growth: float = 2.0, over: int = 300) -> Curve:
    """From step `at` the loss rises smoothly by x`growth` over `over` steps and stays there."""
    t = np.arange(len(curve.loss), dtype=float)
    ramp = np.clip((t - at) / over, 0, 1)
    loss = curve.loss * np.exp(np.log(growth) * ramp)
    return Curve(loss, curve.lr, curve.grad_norm, curve.steps_per_s, curve.update_ratio, curve.hparams)


def with_oscillation(curve: Curve, at: int, amplitude: float = 0.25, period: int = 200, seed: int = 0) -> Curve:
    """From step `at` the loss swings +-`amplitude` (relative) with an irregular period around a flat level."""
    rng = np.random.default_rng(seed + 99)
    loss = curve.loss.copy()
    n = len(loss)
    level = np.median(loss[max(at - 20, 0): at + 1])
    phase = np.cumsum(rng.uniform(0.5, 1.5, n - at)) * 2 * math.pi / period
    wave = np.sign(np.sin(phase)) * amplitude * rng.uniform(0.6, 1.0, n - at)
    noise = curve.loss[at:] / _smooth(curve.loss)[at:]
    loss[at:] = level * (1.0 + wave) * noise
    return Curve(loss, curve.lr, curve.grad_norm, curve.steps_per_s, curve.update_ratio, curve.hparams)


def with_throughput_drop(curve: Curve, at: int, factor: float = 0.6) -> Curve:
    speed = curve.steps_per_s.copy()
    speed[at:] *= factor
    return Curve(curve.loss, curve.lr, curve.grad_norm, speed, curve.update_ratio, curve.hparams)


def _smooth(values: np.ndarray, width: int = 51) -> np.ndarray:
    """A centred running median (numpy only), for separating a synthetic curve's noise from its trend."""
    import pandas as pd

    return pd.Series(values).rolling(width, center=True, min_periods=1).median().to_numpy()
