"""grad-explosion (G001): the gradient norm far above its own robust baseline, sustained or harmful."""

import numpy as np
import pytest

from analyzer.detectors import grad_explosion, stats
from analyzer.findings import Severity, Skipped
from tests.conftest import make_run
from tests.detectors import synth

DET = grad_explosion.DETECTOR


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def base_series(n=400, seed=1, noise=0.2):
    rng = np.random.default_rng(seed)
    loss = 3 + np.exp(-np.arange(n) / 100) + 0.03 * rng.standard_normal(n)
    grad = 2.0 * np.exp(noise * rng.standard_normal(n))
    return loss, grad


def test_sustained_excursion_with_loss_jump_is_a_warning_with_numbers():
    loss, grad = base_series()
    grad[200:210] *= 40
    loss[202:215] *= 1.5
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}, hparams={"learning_rate": 1e-3, "max_grad_norm": 0}))
    assert f.severity is Severity.WARNING and f.first_step == 200
    assert f.metrics["peak_ratio"] > 25
    recs = {r.hparam: r for r in f.recommendations}
    assert recs["lr"].suggested == 5e-4
    assert recs["max_grad_norm"].current == 0 and 2.0 < recs["max_grad_norm"].suggested < 4.0  # healthy p99


def test_unhealed_rise_at_the_end_is_a_warning():
    loss, grad = base_series()
    grad[-5:] *= 100
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}))
    assert f.severity is Severity.WARNING and f.first_step == 395
    assert "not back to its level" in f.message


def test_isolated_spikes_that_heal_are_info():
    """hf_star_benign_gradspikes: single entries of 28-82 against a median of 4.8, loss falling."""
    loss, grad = base_series(n=2000, seed=4)
    grad[[235, 530, 1118, 1695]] *= np.array([7, 17, 11, 6])
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}))
    assert f.severity is Severity.INFO


def test_norm_held_far_above_the_clip_threshold():
    """Seed 000: grad norm ~87 with max_grad_norm 1.0 on every step."""
    loss, grad = base_series()
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad * 43}, hparams={"max_grad_norm": 1.0}))
    assert f.severity is Severity.WARNING and f.metrics["clip_ratio"] > 60
    assert f.recommendations == ()


@pytest.mark.parametrize("interval", [1, 5, 25])
@pytest.mark.parametrize("noise", [0.01, 0.05])
@pytest.mark.parametrize("warmup", [0, 200])
def test_silent_on_healthy_runs(interval, noise, warmup):
    run = synth.log(synth.healthy(seed=7, steps=3000, noise=noise, warmup=warmup), interval=interval)
    assert all(f.severity is Severity.INFO for f in run_check(run))


def test_rising_norm_during_warmup_is_not_an_explosion():
    n = 300
    lr = np.minimum(np.arange(n) / 100, 1.0) * 1e-4
    grad = np.r_[np.geomspace(0.01, 1.0, 100), np.ones(200)]
    loss = np.linspace(4, 3, n)
    assert run_check(make_run({"loss": loss, "grad_norm": grad, "lr": lr})) == []


def test_zero_printed_norm_is_skipped_as_unmeasured():
    """bloom13b: `grad norm: 0.000` on every line while the loss changes."""
    skipped = run_check(make_run({"loss": np.linspace(2.8, 7.3, 12), "grad_norm": np.zeros(12)}))
    assert isinstance(skipped, Skipped) and "not measured" in skipped.reason


def test_short_sparse_and_nan_input():
    assert isinstance(run_check(make_run({"grad_norm": [1.0, 2.0]})), Skipped)
    loss, grad = base_series(n=60)
    grad[[5, 30]] = np.nan
    run_check(make_run({"loss": loss, "grad_norm": grad}))
    run_check(make_run({"grad_norm": grad}))  # no loss at all


def test_per_layer_ratio_is_reported_when_logged():
    loss, grad = base_series()
    grad[200:210] *= 40
    first, last = np.ones(400), np.ones(400)
    first[200:210] = 80.0
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad, "grad_norm/layer_0": first,
                              "grad_norm/layer_11": last}))
    assert f.metrics["first_last_layer_ratio"] == 80.0


def test_metrics_quote_the_median_the_message_quotes():
    loss, grad = base_series()
    grad[200:210] *= 40
    loss[202:215] *= 1.5
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}))
    median = float(np.median(grad[150:200]))  # the 50 points before the excursion
    assert f.metrics["baseline_median"] == pytest.approx(median) and f.metrics["baseline_points"] == 50
    assert f"running median ({stats.fmt_num(median)} over the 50 logged points before step 200)" in f.message
    assert f.metrics["peak_ratio"] == pytest.approx(grad.max() / median, rel=0.01)


def test_a_norm_that_stays_up_after_an_excursion_is_neither_healthy_nor_a_healed_spike():
    # bloom104b_overflow's shape: the norm jumps ~100x and stays up; the rolling median catches up and stops
    # flagging it, but it is not back: the peak, the end and the healthy p99 must not come from that stretch
    loss, grad = base_series()
    grad[300:] *= 100
    grad[380:] *= 2
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}))
    assert f.severity is Severity.WARNING and "not back to its level by the end of the run" in f.message
    assert f.last_step == 399 and f.metrics["peak"] == pytest.approx(grad.max())
    assert f.metrics["healthy_p99"] < 10  # the healthy norms are ~2, not the 200-400 of the stretch after the rise


def test_the_quoted_baseline_belongs_to_the_excursion_it_describes(real_runs):
    # bloom104b_overflow: excursions from 12000 and from 16800; the 254x is the second's, over its own baseline
    from analyzer.ingest import read_run

    [f] = [f for f in run_check(read_run(real_runs / "bloom104b_overflow")) if f.severity is Severity.WARNING]
    assert f.first_step == 12000 and "254x its running median (3458 over the 8 logged points before step 16800)" \
        in f.message
    # the window's first excursion is quoted over its own baseline, the median before the window starts
    assert "the first, from step 12000, reached 1.22e5 at step 13251, 39x its running median (3141 over the 4 " \
        "logged points before step 12000)" in f.message
    assert f.metrics["first_excursion_step"] == 12000 and f.metrics["first_baseline_median"] == pytest.approx(3141, 1)


def test_two_excursions_quote_each_peak_over_the_median_before_it():
    loss, grad = base_series()
    grad[150:155] *= 20
    grad[300:306] *= 80
    [f] = run_check(make_run({"loss": loss, "grad_norm": grad}))
    assert f.severity is Severity.WARNING and (f.first_step, f.metrics["first_excursion_step"]) == (150, 150)
    assert f.metrics["peak_step"] >= 300 and f.metrics["peak_ratio"] > 40
    assert 10 < f.metrics["first_peak_ratio"] < 40 and f.metrics["first_baseline_median"] == pytest.approx(2, rel=0.2)
    assert "before step 150)" in f.message and "before step 300)" in f.message
