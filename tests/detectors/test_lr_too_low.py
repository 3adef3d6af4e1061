"""lr-too-low: tiny update ratios with a stalled or crawling loss; factor from the data."""

from dataclasses import replace

import numpy as np
import pytest

from analyzer.detectors import lr_too_low
from analyzer.findings import Confidence, Severity, Skipped
from tests.conftest import make_run
from tests.detectors import synth

P = lr_too_low.DETECTOR.params


def check(run, **over):
    return lr_too_low.check(run, {**P, **over})


def stalled(update_ratio, lr=1e-4, warmup_ratio=0.1, steps=3000):
    """Seed 001's shape: warmup over 10%, a fall to 3.75, then 1500+ steps with almost no decrease."""
    rng = np.random.default_rng(0)
    t = np.arange(0, steps, 10)
    loss = np.where(t < 1000, 6.0 - 2.25 * t / 1000, 3.75 - 0.04 * (t - 1000) / (steps - 1000))
    loss = loss * np.exp(rng.normal(0, 0.003, len(t)))
    lr_series = np.minimum((t + 10) / 300, 1.0) * lr
    series = {"loss": (t, loss), "lr": (t, lr_series)}
    if update_ratio is not None:
        series["update_ratio"] = (t, update_ratio * np.exp(rng.normal(0, 0.1, len(t))))
    return make_run(series, hparams={"learning_rate": lr, "warmup_ratio": warmup_ratio, "max_steps": steps})


def test_plateau_with_low_update_ratio_seed001():
    [f] = check(stalled(5e-4))
    assert f.severity is Severity.WARNING and f.confidence is Confidence.MEDIUM
    recs = {r.hparam: r for r in f.recommendations}
    assert (recs["lr"].current, recs["lr"].suggested) == (1e-4, 2e-4)
    assert (recs["warmup_ratio"].current, recs["warmup_ratio"].suggested) == (0.1, 0.06)


def test_tiny_update_ratio_factor_from_data():
    [f] = check(stalled(2e-5, lr=1e-5))
    assert f.confidence is Confidence.HIGH
    assert {r.hparam: r.suggested for r in f.recommendations}["lr"] == pytest.approx(1e-4)  # x10 cap
    [f] = check(stalled(2e-4, lr=1e-5), tiny_ratio=5e-4, low_ratio=1e-4)
    assert {r.hparam: r.suggested for r in f.recommendations}["lr"] == pytest.approx(5e-5)


def test_healthy_update_ratio_or_fast_progress_is_silent():
    assert check(stalled(6e-3)) == []
    for seed in range(3):
        run = synth.log(synth.healthy(seed, warmup=200), 10, metrics=("loss", "lr", "update_ratio"))
        assert check(run) == []


def test_without_update_ratio_only_info_and_only_for_a_low_lr():
    [f] = check(stalled(None, lr=5e-5))
    assert f.severity is Severity.INFO and f.confidence is Confidence.LOW
    assert check(stalled(None, lr=3e-4)) == []


def test_skips_short_missing_nonpositive():
    assert isinstance(check(make_run({"loss": [3.0, 2.9]})), Skipped)
    assert isinstance(check(make_run({"lr": [1.0] * 20})), Skipped)
    assert isinstance(check(make_run({"loss": np.zeros(30)})), Skipped)


def test_nan_in_update_ratio_does_not_crash():
    run = stalled(5e-4)
    scalars = run.scalars.copy()
    scalars.loc[scalars.index[-5:], "value"] = np.nan
    assert len(check(replace(run, scalars=scalars))) == 1
