"""loss-plateau: long stretches without improvement while the lr allows learning; chance level is critical."""

import math

import numpy as np
import pytest

from analyzer.detectors import loss_plateau
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from tests.conftest import make_run
from tests.detectors import synth

P = loss_plateau.DETECTOR.params


def check(run, **over):
    return loss_plateau.check(run, {**P, **over})


def seed001_like():
    """Seed 001: 3.75 -> 3.60 over 1500+ steps at a constant post-warmup lr."""
    rng = np.random.default_rng(1)
    steps = np.arange(0, 3000, 10)
    loss = np.where(steps < 1000, 6.0 - 2.25 * steps / 1000, 3.75 - 0.15 * (steps - 1000) / 2000)
    loss = loss * np.exp(rng.normal(0, 0.005, len(steps)))
    lr = np.minimum(steps / 300, 1.0) * 1e-4
    return make_run({"loss": (steps, loss), "lr": (steps, lr)}, hparams={"vocab_size": 30000})


def test_fires_on_seed001_plateau():
    [f] = check(seed001_like())
    assert f.severity is Severity.WARNING
    assert 1000 <= f.first_step <= 2000 and f.last_step == 2990
    assert 3.6 < f.metrics["level"] < 3.75 and f.metrics["ongoing"]
    assert f.metrics["chance_level"] == pytest.approx(math.log(30000))


def test_plateau_at_chance_is_critical():
    rng = np.random.default_rng(0)
    loss = math.log(4) * np.exp(rng.normal(0, 0.003, 300))
    [f] = check(make_run({"loss": loss, "lr": np.full(300, 1e-5)}, hparams={"num_labels": 4}))
    assert f.severity is Severity.CRITICAL and "chance level ln(4)" in f.message
    assert f.message.endswith("check the labels, the loss wiring and the data before the schedule.")


def test_a_plateau_above_chance_does_not_point_at_the_labels():
    [f] = check(seed001_like())
    assert "labels" not in f.message


def test_implied_chance_level_without_num_classes():
    [f] = check(make_run({"eval_loss": (np.arange(0, 3000, 50), np.full(60, 1.3862944))}))
    assert f.severity is Severity.CRITICAL and f.metrics["chance_classes"] == 4


def test_no_plateau_in_warmup_or_end_of_decay():
    # flat during warmup and during the last 40% of a decay to ~0: both are normal
    steps = np.arange(1000)
    lr = np.where(steps < 300, steps / 300, np.clip(1 - (steps - 300) / 700, 0, 1)) * 1e-3
    loss = np.where(steps < 300, 5.0, np.where(steps < 650, 5.0 - 2.0 * (steps - 300) / 350, 3.0))
    assert check(make_run({"loss": loss, "lr": lr})) == []


@pytest.mark.parametrize("noise", [0.01, 0.05, 0.15])
@pytest.mark.parametrize("interval,averaged", [(1, False), (10, True), (50, False)])
@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("cosine", 300), ("linear", 100)])
def test_no_warning_on_healthy_runs(noise, interval, averaged, schedule, warmup):
    for seed in range(2):
        run = synth.log(synth.healthy(seed, noise=noise, warmup=warmup, schedule=schedule), interval, averaged)
        result = check(run)
        assert all(f.severity is Severity.INFO for f in result), [f.message for f in result]


def test_skips_missing_and_nonpositive():
    assert isinstance(check(make_run({"lr": [1.0] * 20})), Skipped)
    assert isinstance(check(make_run({"loss": np.zeros(50)})), Skipped)
    assert check(make_run({"loss": [3.0, 2.0, 1.0]})) == []


def test_nan_inside_does_not_crash():
    loss = np.linspace(5, 1, 100)
    loss[10:20] = np.nan
    assert check(make_run({"loss": loss})) == []


def test_lrqa_chance_plateau(real_runs):
    findings = check(read_run(real_runs / "hf_lrqa_chance_plateau"))
    by_metric = {f.message.split()[0]: f for f in findings}
    assert by_metric["eval_loss"].severity is Severity.CRITICAL
    assert by_metric["eval_loss"].metrics["chance_classes"] == 4


def test_slm_plateau(real_runs):
    [f] = check(read_run(real_runs / "pl_slm_plateau"))
    assert f.severity is Severity.WARNING and f.metrics["level"] == pytest.approx(7.62, abs=0.05)


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "pl_resnet_onecycle_healthy",
                                  "nanogpt_baseline", "hf_star_benign_gradspikes", "hf_grpo_zero_loss_by_design"])
def test_no_warning_on_healthy_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert isinstance(result, Skipped) or all(f.severity is Severity.INFO for f in result)


def test_a_plateau_the_run_ends_on_reaches_the_last_step_past_the_decayed_lr():
    # hf_lrqa_chance_plateau: eval_loss at ln 4 to step 3100, but the lr fell under 30% of its peak after 2300;
    # the span stopped at 2300 while the message said "the run ends on it"
    steps = np.arange(0, 3100, 10)
    loss = math.log(4) * np.exp(np.random.default_rng(2).normal(0, 0.002, len(steps)))
    lr = 1e-4 * np.clip(1 - steps / 3100, 0, 1)  # linear decay: under 30% of the peak from step 2170
    [f] = check(make_run({"loss": (steps, loss), "lr": (steps, lr)}, hparams={"num_labels": 4}))
    assert f.last_step == 3090 and f.metrics["ongoing"]
    assert f.metrics["steps"] == 3090 - f.first_step and f.metrics["judged_to_step"] < 2200
    assert f"to {f.last_step} " in f.message and "the run ends on it" in f.message


def test_levels_above_chance_read_as_a_multiple_below_as_a_share():
    rng = np.random.default_rng(3)
    flat = np.exp(rng.normal(0, 0.003, 300))
    [high] = check(make_run({"loss": 7.13 * math.log(256) * flat, "lr": np.full(300, 1e-5)},
                            hparams={"vocab_size": 256}))
    assert "(7.1x chance level ln(256)" in high.message
    [low] = check(make_run({"loss": 0.92 * math.log(256) * flat, "lr": np.full(300, 1e-5)},
                           hparams={"vocab_size": 256}))
    assert "(92% of chance level ln(256)" in low.message
