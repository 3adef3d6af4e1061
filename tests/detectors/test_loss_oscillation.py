"""loss-oscillation: large alternating swings instead of a trend (seed 002)."""

import numpy as np
import pytest

from analyzer.detectors import loss_oscillation
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from tests.conftest import make_run
from tests.detectors import synth

P = loss_oscillation.DETECTOR.params
SEED002 = ([0, 100, 200, 300, 400, 500, 600], [28.19, 22.34, 27.64, 27.60, 22.31, 19.97, 28.34])


def check(run, **over):
    return loss_oscillation.check(run, {**P, **over})


def test_fires_on_seed002_lines():
    [f] = check(make_run({"loss": SEED002}, hparams={"learning_rate": 5e-5}))
    assert f.severity is Severity.WARNING and (f.first_step, f.last_step) == (0, 600)
    assert f.metrics["swing"] == pytest.approx(0.24, abs=0.02)  # median |change| 0.213 in log units
    assert f.metrics["low"] == pytest.approx(19.97) and f.metrics["high"] == pytest.approx(28.34)
    [rec] = f.recommendations
    assert (rec.hparam, rec.current, rec.suggested) == ("lr", 5e-5, 2.5e-5)


def test_fires_on_dense_oscillation_after_onset():
    curve = synth.with_oscillation(synth.healthy(0, noise=0.02), 1000, amplitude=0.25, period=200)
    [f] = check(synth.log(curve, 10))
    assert 800 <= f.first_step <= 1200 and f.metrics["bin_points"] > 1


@pytest.mark.parametrize("noise", [0.01, 0.05, 0.15, 0.3])
@pytest.mark.parametrize("interval,averaged", [(1, False), (10, False), (10, True), (100, True)])
def test_silent_on_healthy_noisy_runs(noise, interval, averaged):
    for seed in range(3):
        assert check(synth.log(synth.healthy(seed, noise=noise), interval, averaged)) == []


def test_a_trend_is_not_an_oscillation():
    assert check(make_run({"loss": ([0, 100, 200, 300, 400, 500, 600], [28, 24, 21, 18, 16, 14, 12.5])})) == []


def test_a_single_spike_is_not_an_oscillation():
    loss = np.full(200, 3.0) * np.exp(np.random.default_rng(0).normal(0, 0.01, 200))
    loss[100] = 9.0
    assert check(make_run({"loss": loss})) == []


def test_short_missing_nonpositive_and_nan():
    assert isinstance(check(make_run({"loss": [1.0, 2.0, 1.0]})), Skipped)
    assert isinstance(check(make_run({"lr": [1.0] * 10})), Skipped)
    assert isinstance(check(make_run({"loss": np.zeros(20)})), Skipped)
    steps, values = SEED002
    assert len(check(make_run({"loss": (steps + [700], values + [float("nan")])}))) == 1


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "pl_resnet_onecycle_healthy",
                                  "nanogpt_baseline", "hf_star_benign_gradspikes", "hf_lrqa_chance_plateau"])
def test_silent_on_healthy_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert result == [] or isinstance(result, Skipped)
