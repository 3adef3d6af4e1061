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
