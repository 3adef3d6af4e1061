"""lr-too-high: large updates with a loss at chance, rising or swinging from the start."""

import math

import numpy as np
import pytest

from analyzer.detectors import lr_too_high
from analyzer.findings import Confidence, Severity, Skipped
from analyzer.ingest import read_run
from tests.conftest import make_run
from tests.detectors import synth

P = lr_too_high.DETECTOR.params


def check(run, **over):
    return lr_too_high.check(run, {**P, **over})


def at_chance(update_ratio=None, vocab=65536, lr=1e-4):
    rng = np.random.default_rng(4)
    n = 400
    loss = math.log(vocab) * np.exp(rng.normal(0, 0.01, n))
    series = {"loss": loss, "lr": np.full(n, lr)}
    if update_ratio is not None:
        series["update_ratio"] = np.full(n, update_ratio)
    return make_run(series, hparams={"learning_rate": lr, "vocab_size": vocab, "batch_size": 1,
                                     "gradient_accumulation_steps": 16})


def test_seed004_at_chance_halves_lr():
    [f] = check(at_chance())
    assert f.severity is Severity.WARNING and f.confidence is Confidence.MEDIUM
    [rec] = f.recommendations
    assert (rec.current, rec.suggested) == (1e-4, 5e-5)
    assert "1 x 16 = 16 sequences" in f.message


def test_factor_from_update_ratio():
    [f] = check(at_chance(update_ratio=4e-2))
    assert f.confidence is Confidence.HIGH
    assert f.recommendations[0].suggested == pytest.approx(1e-5)  # 1e-3 / 4e-2 = 0.025 -> capped at x0.1


def test_tiny_update_ratio_leaves_it_to_lr_too_low():
    assert check(at_chance(update_ratio=1e-5)) == []


def test_rising_from_the_start():
    loss = np.r_[np.linspace(5.0, 7.0, 100), np.full(200, 7.0)]
    [f] = check(make_run({"loss": loss, "lr": np.full(300, 1e-3)}))
    assert "rose from" in f.message


def test_silent_on_healthy_runs():
    for seed in range(3):
        for warmup in (0, 300):
            run = synth.log(synth.healthy(seed, warmup=warmup), 10, metrics=("loss", "lr", "update_ratio"))
            assert check(run) == []


def test_an_excerpt_that_starts_mid_run_cannot_rise_from_the_start():
    loss = np.r_[np.full(5, 2.8), np.full(30, 4.8)]
    assert check(make_run({"loss": (np.arange(29020, 29020 + 35 * 10, 10), loss)})) == []


def test_skips_short_missing_nonpositive():
    assert isinstance(check(make_run({"loss": [3.0, 2.9]})), Skipped)
    assert isinstance(check(make_run({"lr": [1.0] * 20})), Skipped)
    assert isinstance(check(make_run({"loss": np.zeros(30)})), Skipped)


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "pl_resnet_onecycle_healthy",
                                  "nanogpt_baseline", "hf_star_benign_gradspikes", "bloom13b_spike"])
def test_silent_on_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert result == [] or isinstance(result, Skipped)


def per_epoch(loss, peak_lr, warmup_epochs=5):
    """A Keras CSVLogger-style log: one mean loss per epoch, the lr warmed up per epoch (keras_lr_too_high)."""
    epochs = np.arange(len(loss))
    return make_run({"loss": loss, "lr": peak_lr * np.minimum(1.0, (epochs + 1) / warmup_epochs)})


def test_a_per_epoch_log_that_climbs_in_its_first_epochs_rises_from_the_start():
    loss = np.r_[0.85, 1.27, 2.15, np.full(17, 2.11)]
    [f] = check(per_epoch(loss, 0.3))
    assert "rose from 1.27" in f.message
    assert f.first_step == 0 and f.metrics["first_losses"] == pytest.approx(1.27)
    [rec] = f.recommendations
    assert (rec.current, rec.suggested) == (0.3, 0.15)


def test_healthy_per_epoch_logs_do_not_rise():
    rng = np.random.default_rng(0)
    for noise in (0.0, 0.02, 0.05):
        for n in (15, 20, 40):
            loss = (0.4 + 1.7 * np.exp(-np.arange(n) / 2.0)) * np.exp(rng.normal(0, noise, n))
            assert check(per_epoch(loss, 1e-3)) == [], (noise, n)


def test_head_points_shrink_only_for_short_logs():
    assert [lr_too_high.head_points(n) for n in (10, 30, 40, 50, 300)] == [3, 3, 4, 5, 5]


def test_a_far_too_small_lr_at_chance_is_left_to_lr_too_low():
    # without an update size, a loss stuck at ln V under lr 1e-6 is the lr being too LOW (hf_lr_too_low)
    [f] = check(at_chance(lr=1e-4))
    assert f.severity is Severity.WARNING
    assert check(at_chance(lr=1e-6)) == []
    assert check(at_chance(lr=1e-6, update_ratio=2e-2))  # a measured big step still says too high


def test_a_noisy_short_log_keeps_five_head_points():
    # lightning_tb: 12 per-batch MSEs of a tiny regression; a median of three would read 4.92 as "the start"
    loss = np.array([11.65, 2.79, 4.92, 6.06, 7.62, 2.84, 7.48, 8.44, 3.1, 6.2, 5.0, 7.7])
    assert check(per_epoch(loss, 0.05, warmup_epochs=1)) == []


def test_a_loss_that_touches_zero_does_not_crash():
    loss = np.r_[0.0, np.linspace(0.5, 2.0, 10), np.full(19, 2.0)]
    assert isinstance(check(per_epoch(loss, 0.3)), (list, Skipped))
