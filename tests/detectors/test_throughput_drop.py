"""throughput-drop: a lasting fall of the training speed, not single slow steps."""

import numpy as np
import pytest

from analyzer.detectors import throughput_drop
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from analyzer.run import Event
from tests.conftest import make_run
from tests.detectors import synth

P = throughput_drop.DETECTOR.params


def check(run, **over):
    return throughput_drop.check(run, {**P, **over})


def test_seed003_drop_with_spike_and_log_line():
    rng = np.random.default_rng(3)
    steps = np.arange(0, 3000, 10)
    speed = np.where(steps < 2000, 1.0, 0.6) * np.exp(rng.normal(0, 0.02, len(steps)))
    loss = np.full(len(steps), 6.65)
    loss[steps == 2000] = 9.58
    event = Event("warning", 2000, "[Debug] step 2000: enabling anomaly detection", "train.log", 2001)
    [f] = check(make_run({"steps_per_s": (steps, speed), "loss": (steps, loss)}, events=[event]))
    assert f.severity is Severity.WARNING and f.first_step == 2000
    assert f.metrics["drop"] == pytest.approx(0.4, abs=0.03)
    assert "loss jumped at step 2000" in f.message and "anomaly" in f.message
    assert any(e.file == "train.log" for e in f.evidence)


def test_small_drop_on_a_steady_metric_is_info():
    tflops = np.r_[np.full(20, 149.0), np.full(20, 141.5)] + np.random.default_rng(0).normal(0, 0.1, 40)
    [f] = check(make_run({"tflops": tflops}))
    assert f.severity is Severity.INFO and f.metrics["metric"] == "tflops"


def test_time_per_iteration_is_inverted():
    ms = np.r_[np.full(30, 100.0), np.full(30, 180.0)]
    [f] = check(make_run({"step_time_ms": ms}))
    assert f.metrics["before"] == pytest.approx(100.0) and f.metrics["after"] == pytest.approx(180.0)


@pytest.mark.parametrize("interval", [1, 10, 50])
def test_single_slow_steps_and_noise_are_silent(interval):
    for seed in range(4):
        run = synth.log(synth.healthy(seed), interval, metrics=("loss", "steps_per_s"))
        assert check(run) == []


def test_a_temporary_slowdown_that_recovers_is_silent():
    speed = np.r_[np.full(100, 1.0), np.full(40, 0.5), np.full(100, 1.0)]
    assert check(make_run({"steps_per_s": speed})) == []


def test_a_change_across_a_restart_is_a_new_setup():
    steps = np.r_[np.arange(0, 100), np.arange(50, 150)]
    speed = np.r_[np.full(100, 1.0), np.full(100, 0.5)]
    assert check(make_run({"steps_per_s": (steps, speed)})) == []


def test_growing_batch_is_not_a_drop():
    steps = np.arange(60)
    batch = np.where(steps < 30, 512, 1024)
    speed = np.where(steps < 30, 0.04, 0.02)
    assert check(make_run({"steps_per_s": speed, "global_batch_size": batch})) == []


def test_skips_without_speed_or_points():
    assert isinstance(check(make_run({"loss": [1.0] * 10})), Skipped)
    assert isinstance(check(make_run({"steps_per_s": [1.0, 0.5]})), Skipped)


def test_bloom176b_tflops(real_runs):
    [f] = check(read_run(real_runs / "bloom176b_spike"))
    assert f.first_step == 42783 and f.severity is Severity.INFO
    assert f.metrics["before"] == pytest.approx(149, abs=1) and f.metrics["after"] == pytest.approx(141, abs=1.5)


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "nanogpt_baseline",
                                  "bloom104b_wide_divergence", "bloom104b_overflow"])
def test_no_warning_on_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert isinstance(result, Skipped) or all(f.severity is Severity.INFO for f in result)
