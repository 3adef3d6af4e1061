"""grad-vanishing (G002): the gradient norm collapses by orders of magnitude while the loss is not converged."""

import numpy as np
import pytest

from analyzer.detectors import grad_vanishing
from analyzer.findings import Severity, Skipped
from analyzer.run import Event
from tests.conftest import make_run
from tests.detectors import synth

DET = grad_vanishing.DETECTOR


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def stalled(n=400, seed=0):
    rng = np.random.default_rng(seed)
    loss = np.r_[np.linspace(9.0, 7.5, n // 2), np.full(n - n // 2, 7.5)] + 0.02 * rng.standard_normal(n)
    grad = 2.0 * np.exp(0.2 * rng.standard_normal(n))
    grad[n // 2:] *= np.geomspace(1, 1e-4, n - n // 2)
    return loss, grad


def test_collapse_while_loss_stalls_is_a_warning_with_lr_recommendation():
    loss, grad = stalled()
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}, hparams={"learning_rate": 1e-4}))
    assert f.severity is Severity.WARNING
    assert f.metrics["collapse_factor"] > 1000
    assert 200 < f.first_step < 300
    [rec] = f.recommendations
    assert (rec.hparam, rec.current, rec.suggested) == ("lr", 1e-4, 2e-4)


def test_collapse_to_exact_zero():
    loss, grad = stalled()
    grad[300:] = 0.0
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}))
    assert f.metrics["late_zero_share"] == 1.0


def test_converged_loss_explains_a_small_gradient():
    """hf_whisper_overfit: the train loss goes to 0.0002; a tiny gradient is the model fitting its data."""
    loss, grad = stalled()
    loss = np.geomspace(0.3, 2e-4, 400)
    assert run_check(make_run({"loss": loss, "grad_norm": grad})) == []


def test_grpo_zero_loss_and_scattered_zero_norms_are_silent():
    rng = np.random.default_rng(3)
    grad = np.abs(rng.normal(0.05, 0.02, 1000))
    grad[rng.random(1000) < 0.16] = 0.0
    loss = np.where(rng.random(1000) < 0.7, 0.0, rng.normal(0, 3e-4, 1000))
    assert run_check(make_run({"loss": loss, "grad_norm": grad})) == []


def test_printed_zero_norm_is_skipped():
    assert isinstance(run_check(make_run({"loss": np.linspace(2.8, 7.3, 30), "grad_norm": np.zeros(30)})),
                      Skipped)


def test_vanishing_warnings_in_the_log():
    events = [Event("warning", s, f"[Warning] step {s}: vanishing gradient (norm 0.0004 < 0.001)", "train.log", s)
              for s in (10, 20, 30)]
    [f] = run_check(make_run({"loss": np.linspace(11, 10.9, 40)}, events=events))
    assert f.first_step == 10 and f.metrics["vanishing_warnings"] == 3


@pytest.mark.parametrize("interval", [1, 10])
@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_silent_on_healthy_runs(interval, schedule):
    run = synth.log(synth.healthy(seed=11, steps=3000, warmup=100, schedule=schedule), interval=interval)
    assert run_check(run) == []


def test_short_missing_and_nan():
    assert isinstance(run_check(make_run({"loss": [1.0]})), Skipped)
    assert isinstance(run_check(make_run({"grad_norm": [1.0, 0.5]})), Skipped)
    loss, grad = stalled()
    grad[[3, 100, 399]] = np.nan
    assert run_check(make_run({"loss": loss, "grad_norm": grad}))[0].severity is Severity.WARNING
