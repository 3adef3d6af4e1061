"""loss-spike: sudden rises far above the robust local level, recovered or persistent."""

import re

import numpy as np
import pytest

from analyzer.detectors import loss_spike
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from analyzer.run import Checkpoint
from tests.conftest import make_run
from tests.detectors import synth

P = loss_spike.DETECTOR.params


def check(run, **over):
    return loss_spike.check(run, {**P, **over})


def seed003_like(factor=1.44, persistent=False):
    rng = np.random.default_rng(3)
    steps = np.arange(0, 3000, 10)
    loss = 6.65 * np.exp(rng.normal(0, 0.01, len(steps)))
    at = int(np.flatnonzero(steps == 2000)[0])
    if persistent:
        loss[at:] *= factor
    else:
        loss[at:at + 3] *= factor
    grad = np.exp(rng.normal(0, 0.1, len(steps)))
    grad[at] = 40.0
    return make_run({"loss": (steps, loss), "grad_norm": (steps, grad)},
                    hparams={"learning_rate": 2e-5, "max_grad_norm": 0.0},
                    checkpoints=[Checkpoint("checkpoints/step_001500.pt", 1500, "torch"),
                                 Checkpoint("checkpoints/step_002500.pt", 2500, "torch")])


def test_fires_on_seed003_spike_with_grad_norm_and_restart_point():
    [f] = check(seed003_like())
    assert f.severity is Severity.WARNING and f.first_step == 2000
    assert f.metrics["ratio"] == pytest.approx(1.44, rel=0.05)
    assert f.metrics["recovered"] and f.metrics["recovery_steps"] == 30
    assert f.metrics["grad_norm_step"] == 2000
    assert f.metrics["restart_checkpoint"] == "checkpoints/step_001500.pt"
    recs = {r.hparam: r for r in f.recommendations}
    assert recs["lr"].current == 2e-5 and recs["lr"].suggested == pytest.approx(1.4e-5)
    assert recs["max_grad_norm"].current == 0.0 and 1.0 < recs["max_grad_norm"].suggested < 1.5
    assert f.evidence


def test_persistent_spike_is_critical():
    [f] = check(seed003_like(factor=1.6, persistent=True))
    assert f.severity is Severity.CRITICAL and f.first_step == 2000
    assert f.metrics["recovered"] is False
    assert {r.hparam: r.suggested for r in f.recommendations}["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize("noise", [0.01, 0.05, 0.15])
@pytest.mark.parametrize("interval,averaged", [(1, False), (10, False), (10, True), (100, True)])
@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("cosine", 300)])
def test_silent_on_healthy_noisy_runs(noise, interval, averaged, schedule, warmup):
    for seed in range(2):
        run = synth.log(synth.healthy(seed, noise=noise, warmup=warmup, schedule=schedule), interval, averaged)
        assert check(run) == []


def test_window_averaged_one_point_spike_still_found():
    curve = synth.with_spike(synth.healthy(1, noise=0.02), 1500, factor=8.0, recover=1)
    [f] = check(synth.log(curve, 10, averaged=True, fmt="hf-trainer"))
    assert f.first_step == 1509 and "mean over the logging window" in f.message


def test_rounded_tiny_losses_are_not_spikes():
    loss = np.tile([0.0001, 0.0002, 0.0001, 0.0001], 20)
    assert check(make_run({"loss": loss})) == []


def test_skips_short_missing_and_nonpositive():
    assert isinstance(check(make_run({"loss": [1.0, 2.0]})), Skipped)
    assert isinstance(check(make_run({"lr": [1.0] * 20})), Skipped)
    assert isinstance(check(make_run({"loss": np.zeros(50)})), Skipped)


def test_nan_inside_does_not_crash():
    loss = np.full(60, 2.0)
    loss[30] = np.nan
    loss[40] = np.inf
    assert check(make_run({"loss": loss})) == []


def test_each_segment_has_its_own_baseline():
    # a resumed job whose loss starts lower must not be judged against the old process, and vice versa
    rng = np.random.default_rng(0)
    steps = np.r_[np.arange(0, 50), np.arange(20, 60)]
    loss = np.r_[np.full(50, 5.0), np.full(40, 2.0)] * np.exp(rng.normal(0, 0.01, 90))
    loss[-10] = 6.0
    [f] = check(make_run({"loss": (steps, loss)}))
    assert f.first_step == 50


def test_bloom176b_spike(real_runs):
    [f] = check(read_run(real_runs / "bloom176b_spike"))
    assert f.first_step == 31219 and f.severity is Severity.WARNING
    assert f.metrics["grad_norm_peak"] == pytest.approx(960.351)


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "pl_resnet_onecycle_healthy",
                                  "nanogpt_baseline", "hf_star_benign_gradspikes", "hf_lrqa_chance_plateau"])
def test_silent_on_healthy_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert result == [] or isinstance(result, Skipped)


def test_grpo_loss_by_design_is_skipped(real_runs):
    assert isinstance(check(read_run(real_runs / "hf_grpo_zero_loss_by_design")), Skipped)


def test_grad_norm_median_and_clip_agree_with_grad_explosion():
    # one event, one median and one clip value in both findings (gpt2-spike-plateau gave 2.9 and 2.3)
    from analyzer.detectors import grad_explosion
    rng = np.random.default_rng(5)
    n = 400
    loss = 3 + 0.01 * rng.standard_normal(n)
    grad = np.exp(0.3 * rng.standard_normal(n)) * np.linspace(1, 3, n)  # a norm that grows: pre-spike p99 < run's
    grad[200:203] *= 30
    loss[200:203] *= 2
    run = make_run({"loss": loss, "grad_norm": grad}, hparams={"learning_rate": 1e-3, "max_grad_norm": 0.0})
    [spike] = check(run)
    [explosion] = grad_explosion.DETECTOR.check(run, dict(grad_explosion.DETECTOR.params))
    assert spike.metrics["grad_norm_median"] == explosion.metrics["baseline_median"]
    clip = {f.name: next(r.suggested for r in f.recommendations if r.hparam == "max_grad_norm")
            for f in (spike, explosion)}
    assert clip["loss-spike"] == clip["grad-explosion"]


def test_a_recovery_the_log_skipped_is_not_given_a_duration(real_runs):
    # bloom13b's excerpt: raised at 29050-29090, then the next logged line is the watchdog's 33240, back at ~2.72
    [f] = check(read_run(real_runs / "bloom13b_spike"))
    assert f.metrics["recovered"] and "recovery_steps" not in f.metrics and f.metrics["last_raised_step"] == 29090
    assert "the log then skips 4150 steps" in f.message and "steps later" not in f.message


def test_a_logged_recovery_has_its_duration():
    steps = np.arange(0, 400, 10)
    noise = np.exp(np.random.default_rng(0).normal(0, 0.01, len(steps)))
    loss = np.where((steps >= 200) & (steps < 230), 6.0, 2.0) * noise
    [f] = check(make_run({"loss": (steps, loss)}))
    assert f.metrics["recovery_steps"] == 30 and "30 steps later" in f.message


def test_a_loss_overflowing_to_astronomic_values_is_written_short_in_the_advice_too():
    # lightning_nan: 66 -> 3.2e4 -> 1.5e10 -> 4.03e27 before Inf; the rationale read 60934415088935499861065728.00x
    rng = np.random.default_rng(0)
    loss = np.concatenate([3 + 0.05 * rng.standard_normal(40), [66.0, 3.2e4, 1.5e10, 4.03e27]])
    findings = check(make_run({"loss": loss, "grad_norm": np.ones(len(loss))}, hparams={"learning_rate": 0.3}))
    [f] = [f for f in findings if f.first_step >= 40]
    texts = [f.message] + [r.rationale for r in f.recommendations]
    assert f.recommendations and all(not re.search(r"\d{8,}", t) for t in texts)
    assert any("e2" in t for t in texts)  # the factor in e-notation (e.g. 1.34e27x)


def test_a_spike_the_log_follows_into_nan_says_so_instead_of_where_the_log_ends():
    rng = np.random.default_rng(1)
    loss = np.concatenate([3 + 0.05 * rng.standard_normal(40), [9.0, 12.0, 15.0, np.inf], np.full(20, np.nan)])
    [f] = check(make_run({"loss": loss}))
    assert f.severity is Severity.CRITICAL and (f.first_step, f.last_step) == (40, 42)
    assert "went non-finite at step 43" in f.message and f.metrics["nonfinite_step"] == 43


def test_a_spike_at_the_end_of_a_finite_log_still_names_the_last_logged_step():
    rng = np.random.default_rng(1)
    loss = np.concatenate([3 + 0.05 * rng.standard_normal(40), [9.0, 12.0, 15.0]])
    [f] = check(make_run({"loss": loss}))
    assert "by the last logged step 42" in f.message and "nonfinite_step" not in f.metrics
