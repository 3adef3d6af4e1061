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


def test_a_warmup_set_in_steps_gets_a_warmup_steps_change():
    # HF: warmup_steps overrides warmup_ratio, so a ratio would change nothing for a run that sets steps
    run = stalled(5e-4)
    run = make_run({name: (s.index.to_numpy(), s.to_numpy()) for name, s in
                    ((m, run.series(m)) for m in ("loss", "lr", "update_ratio"))},
                   hparams={"learning_rate": 1e-4, "warmup_steps": 300, "max_steps": 3000})
    [f] = check(run)
    recs = {r.hparam: r for r in f.recommendations}
    assert "warmup_ratio" not in recs and (recs["warmup_steps"].current, recs["warmup_steps"].suggested) == (300, 180)


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


def at_chance(lr, level_share=1.0, classes=128, steps=300, warmup=30):
    """hf_lr_too_low's shape: a GPT-2 whose loss never leaves ln V under a far too small lr, no update ratio."""
    rng = np.random.default_rng(1)
    t = np.arange(5, steps + 1, 5)
    loss = level_share * np.log(classes) * np.exp(rng.normal(0, 0.001, len(t)))
    return make_run({"loss": (t, loss), "lr": (t, lr * np.minimum(1.0, t / warmup))},
                    hparams={"vocab_size": classes})


def test_stuck_at_chance_under_a_far_too_small_lr_is_a_warning():
    [f] = check(at_chance(1e-6))
    assert f.severity is Severity.WARNING and f.confidence is Confidence.MEDIUM
    assert "100% of chance level ln(128)" in f.message and "learned nothing" in f.message
    [rec] = [r for r in f.recommendations if r.hparam == "lr"]
    assert (rec.current, rec.suggested) == (1e-6, 1e-5)  # towards typical_lr, at most x10 at once
    assert "usual practice" in rec.rationale


def test_a_loss_that_did_not_fall_is_not_said_to_fall_by_minus_zero():
    assert [lr_too_low._moved(d) for d in (0.012, 0.0004, -0.0004, -0.02)] == [
        "fell only 1.2%", "did not move", "did not move", "rose 2.0%"]


def test_stuck_at_chance_needs_both_chance_and_a_far_too_small_lr():
    [f] = check(at_chance(5e-5))  # under typical_lr, but not 10x under it
    assert f.severity is Severity.INFO
    [f] = check(at_chance(1e-6, level_share=0.5))  # a plateau well below chance: something was learned
    assert f.severity is Severity.INFO
