"""loss-divergence: a sustained rise above the best level reached."""

import numpy as np
import pytest

from analyzer.detectors import loss_divergence
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from analyzer.run import Checkpoint
from tests.conftest import make_run
from tests.detectors import synth

P = loss_divergence.DETECTOR.params


def check(run, **over):
    return loss_divergence.check(run, {**P, **over})


def test_fires_on_sustained_rise_to_the_end():
    curve = synth.with_divergence(synth.healthy(0, noise=0.02), 1500, growth=2.0, over=300)
    run = synth.log(curve, 10)
    [f] = check(run)
    assert f.severity is Severity.CRITICAL and abs(f.first_step - 1500) <= 100
    assert f.metrics["rise"] == pytest.approx(2.0, rel=0.15) and f.metrics["ended_raised"]
    recs = {r.hparam: r for r in f.recommendations}
    assert recs["lr"].suggested == pytest.approx(1.5e-4)


def test_rise_that_comes_back_is_a_warning_and_names_checkpoint():
    rng = np.random.default_rng(0)
    loss = np.r_[np.linspace(5, 3, 300), np.full(100, 4.5), np.full(300, 2.8)] * np.exp(rng.normal(0, 0.01, 700))
    run = make_run({"loss": loss}, hparams={"learning_rate": 1e-3, "max_grad_norm": 1.0},
                   checkpoints=[Checkpoint("ckpt/step_200.pt", 200, "torch")])
    [f] = check(run)
    assert f.severity is Severity.WARNING and 280 <= f.first_step <= 300
    assert f.metrics["restart_checkpoint"] == "ckpt/step_200.pt"
    assert [r.hparam for r in f.recommendations] == ["lr"]


@pytest.mark.parametrize("noise", [0.01, 0.05, 0.15, 0.3])
@pytest.mark.parametrize("interval,averaged", [(1, False), (10, True), (50, False), (100, True)])
@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("cosine", 300)])
def test_silent_on_healthy_runs(noise, interval, averaged, schedule, warmup):
    for seed in range(2):
        run = synth.log(synth.healthy(seed, noise=noise, warmup=warmup, schedule=schedule), interval, averaged)
        assert check(run) == []


def test_short_spike_is_not_a_divergence():
    loss = np.full(300, 3.0) * np.exp(np.random.default_rng(1).normal(0, 0.01, 300))
    loss[150:153] = 9.0
    assert check(make_run({"loss": loss})) == []


def test_rounded_tiny_losses_do_not_diverge():
    assert check(make_run({"loss": np.r_[np.full(50, 0.0001), np.full(50, 0.0002)]})) == []


def test_short_missing_nonpositive_and_nan():
    assert isinstance(check(make_run({"loss": [1.0, 2.0]})), Skipped)
    assert isinstance(check(make_run({"lr": [1.0] * 20})), Skipped)
    assert isinstance(check(make_run({"loss": np.zeros(30)})), Skipped)
    loss = np.linspace(5, 1, 100)
    loss[50] = np.nan
    assert check(make_run({"loss": loss})) == []


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "pl_resnet_onecycle_healthy",
                                  "nanogpt_baseline", "hf_star_benign_gradspikes", "hf_whisper_overfit"])
def test_silent_on_healthy_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert result == [] or isinstance(result, Skipped)
