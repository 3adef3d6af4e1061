"""small-effective-batch: batch x accumulation x world size, loss noise, and batch_size/grad_accum advice."""

import numpy as np
import pytest

from analyzer.detectors import small_effective_batch
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from tests.conftest import make_run

P = small_effective_batch.DETECTOR.params


def check(run, **over):
    return small_effective_batch.check(run, {**P, **over})


def run_with(noise=0.005, fmt="test", **hp):
    loss = 3.7 * np.exp(np.random.default_rng(0).normal(0, noise, 300))
    return make_run({"loss": loss}, hparams=hp, fmt=fmt)


def recs(finding):
    return {r.hparam: (r.current, r.suggested) for r in finding.recommendations}


def test_seed001_72_to_256():
    [f] = check(run_with(batch_size=24, gradient_accumulation_steps=3, world_size=1, block_size=128))
    assert f.severity is Severity.INFO and f.metrics["effective_batch"] == 72
    assert recs(f) == {"batch_size": (24, 32), "grad_accum": (3, 8)}


def test_seed003_batch_8_to_32():
    [f] = check(run_with(batch_size=8, gradient_accumulation_steps=1, block_size=256))
    assert recs(f) == {"batch_size": (8, 32)}


def test_noisy_loss_makes_it_a_warning_with_a_factor_from_the_noise():
    [f] = check(run_with(noise=0.08, batch_size=8, gradient_accumulation_steps=1, block_size=256))
    assert f.severity is Severity.WARNING and f.metrics["loss_noise"] == pytest.approx(0.08, rel=0.2)
    assert f.metrics["suggested_effective_batch"] == 128  # (8% / 2%)^2 = 16x -> 128


def test_unrecorded_grad_accum_stays_info():
    [f] = check(run_with(noise=0.08, batch_size=1, block_size=512))
    assert f.severity is Severity.INFO and "not recorded" in f.message


def test_tiny_micro_batch_with_heavy_accumulation_seed004():
    [f] = check(run_with(batch_size=1, gradient_accumulation_steps=16, block_size=8192))
    assert f.severity is Severity.INFO
    assert recs(f)["batch_size"] == (1, 4)


def test_window_averaged_noise_is_scaled_to_per_step():
    steps = np.arange(10, 3010, 10)
    loss = 3.7 * np.exp(np.random.default_rng(0).normal(0, 0.02, len(steps)))
    run = make_run({"loss": (steps, loss)}, hparams={"batch_size": 8, "gradient_accumulation_steps": 1,
                                                     "block_size": 128}, fmt="hf-trainer")
    [f] = check(run)
    assert f.metrics["loss_noise"] == pytest.approx(0.02 * np.sqrt(10), rel=0.2)


def test_large_batch_is_silent_and_missing_batch_skips():
    assert check(run_with(batch_size=64, gradient_accumulation_steps=8, block_size=1024)) == []
    assert check(run_with(batch_size=128)) == []
    assert isinstance(check(run_with()), Skipped)


def test_no_loss_still_judges_the_config():
    [f] = check(make_run({"lr": [1e-4] * 5}, hparams={"batch_size": 4, "block_size": 64}))
    assert "loss_noise" not in f.metrics


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "hf_star_benign_gradspikes",
                                  "hf_grpo_zero_loss_by_design", "pl_resnet_onecycle_healthy", "nanogpt_baseline"])
def test_never_above_info_on_healthy_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert isinstance(result, Skipped) or all(f.severity is Severity.INFO for f in result)
