"""nonfinite-onset (N001): the first NaN/Inf, including NaN hidden by filters, clamps, counters and checkpoints."""

import numpy as np
import pytest

from analyzer.detectors import nonfinite_onset
from analyzer.findings import Confidence, Severity
from analyzer.run import BlindSpot, Checkpoint, CheckpointStats, Event, TensorStats
from tests.conftest import make_run
from tests.detectors import synth

DET = nonfinite_onset.DETECTOR


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def tensor(name, nonfinite=0, numel=100):
    return TensorStats(name, (numel,), "float32", numel, nonfinite, 1.0, 0.02, 0.1)


def hf_nan_run(blind=()):
    """HF Trainer after a NaN: grad_norm NaN from step 35, loss filtered to 0.0 from step 40."""
    n = 60
    loss = np.linspace(4.0, 3.0, n)
    grad = 0.6 + 0.1 * np.random.default_rng(0).random(n)
    grad[35:] = np.nan
    loss[40:] = 0.0
    steps = np.arange(5, 5 * n + 5, 5)  # logged every 5 steps
    return make_run({"loss": (steps, loss), "grad_norm": (steps, grad), "lr": (steps, np.full(n, 1e-3))},
                    hparams={"learning_rate": 1e-3, "precision": "fp16"},
                    checkpoints=[Checkpoint("checkpoint-100", 100, "hf"), Checkpoint("checkpoint-200", 200, "hf")],
                    blind_spots=blind)


def test_fires_at_first_nan_metric_and_names_restart_checkpoint():
    [f] = run_check(hf_nan_run())
    assert f.severity is Severity.CRITICAL
    assert f.first_step == 180  # 36th point, logged every 5 steps
    assert f.metrics["previous_clean_step"] == 175
    assert f.metrics["restart_checkpoint"] == "checkpoint-100"
    assert "exactly 0.0 while grad_norm is non-finite" in f.message


def test_recommends_bf16_clip_and_lower_lr():
    [f] = run_check(hf_nan_run())
    recs = {r.hparam: r for r in f.recommendations}
    assert recs["precision"].suggested == "bf16"
    assert recs["lr"].current == 1e-3 and recs["lr"].suggested == 5e-4
    assert recs["max_grad_norm"].current is None and 0.6 <= recs["max_grad_norm"].suggested <= 0.7


def test_blind_spot_says_onset_may_be_earlier():
    [f] = run_check(hf_nan_run(blind=[BlindSpot("HF filters NaN losses", ("nonfinite-onset",))]))
    assert f.metrics["onset_may_be_earlier"] is True
    assert "may be earlier" in f.message
    assert f.confidence is Confidence.MEDIUM


def test_clamped_lm_loss_event_gives_onset():
    event = Event("nan_clamp", 436, "[Warning] lm_loss produced non-finite value (nan); clamping to zero.",
                  "train.log", 12)
    [f] = run_check(make_run({"kd_raw": ([0, 100, 600], [38.0, 28.6, 38.3])}, events=[event]))
    assert f.first_step == 436 and f.severity is Severity.CRITICAL
    assert f.evidence[0].line == 12


def test_loss_dropping_to_exact_zero_is_a_hidden_nan():
    loss = np.r_[np.linspace(5.0, 4.2, 220), 0.0, np.linspace(4.2, 4.1, 29)]
    [f] = run_check(make_run({"lm_loss": loss}))
    assert f.first_step == 220
    assert f.metrics["onset_signal"] == "hidden"
    assert f.confidence is Confidence.MEDIUM


def test_megatron_nan_iteration_counter():
    steps = np.arange(100, 200, 10)
    [f] = run_check(make_run({"loss": (steps, np.full(10, 2.5)),
                              "number_of_nan_iterations": (steps, [0, 0, 0, 0, 1, 2, 3, 3, 3, 3])}))
    assert f.first_step == 140


def test_nan_event_without_step_takes_the_step_above_it():
    run = make_run({"loss": ([10, 20, 30], [2.0, 2.1, 2.2])},
                   events=[Event("nan", None, "loss is nan, skipping", "metrics.jsonl", 2)])
    [f] = run_check(run)
    assert f.first_step == 20


def test_checkpoint_with_nonfinite_values_bounds_the_onset():
    ckpts = [Checkpoint("c/step_100.pt", 100, "torch", CheckpointStats(tensors=(tensor("w"),))),
             Checkpoint("c/step_200.pt", 200, "torch", CheckpointStats(tensors=(tensor("w", 7),)))]
    [f] = run_check(make_run({"loss": np.linspace(3, 2, 300)}, checkpoints=ckpts))
    assert f.first_step == 200
    assert f.metrics["restart_checkpoint"] == "c/step_100.pt"


def test_loss_scale_below_one():
    [f] = run_check(make_run({"loss": np.full(10, 3.0), "loss_scale": [4, 4, 2, 1, 0.5, 0.25, 1, 1, 1, 1]}))
    assert f.first_step == 4


def test_transient_fp16_grad_nan_with_finite_loss_is_info():
    grad = np.full(100, 1.0)
    grad[[3, 50]] = np.inf
    [f] = run_check(make_run({"loss": np.linspace(4, 3, 100), "grad_norm": grad, "loss_scale": np.full(100, 2.0**15)}))
    assert f.severity is Severity.INFO and f.first_step == 3


def test_infinite_perplexity_and_timers_are_not_nan():
    run = make_run({"loss": np.full(20, 800.0), "ppl": np.full(20, np.inf), "steps_per_s": np.r_[np.nan, np.ones(19)]})
    assert run_check(run) == []


@pytest.mark.parametrize("interval", [1, 10])
@pytest.mark.parametrize("noise", [0.01, 0.05, 0.2])
def test_silent_on_healthy_runs(interval, noise):
    run = synth.log(synth.healthy(seed=3, steps=2000, noise=noise, warmup=100), interval=interval)
    assert run_check(run) == []


def test_grpo_loss_at_zero_by_design_is_not_hidden_nan():
    rng = np.random.default_rng(1)
    loss = np.where(rng.random(500) < 0.7, 0.0, rng.normal(0, 3e-4, 500))
    assert run_check(make_run({"loss": loss, "grad_norm": np.abs(rng.normal(0.05, 0.01, 500))})) == []


def test_empty_and_short_runs():
    assert run_check(make_run({"loss": [2.0]})) == []
    assert run_check(make_run({})) == []


def test_hf_fixture_with_nan(tmp_path):
    from analyzer.ingest import read_run
    from tests.conftest import FIXTURES

    run = read_run(FIXTURES / "frameworks" / "hf_trainer_nan")
    [f] = run_check(run)
    assert f.severity is Severity.CRITICAL
    assert f.first_step == 35  # grad_norm NaN at the step-35 log, loss filtered to 0.0 from step 40
    assert f.metrics["restart_checkpoint"] == "checkpoint-20"


def test_skipped_counter_outside_fp16_means_nonfinite_gradients():
    """Megatron in bf16 (loss scale printed as a constant 1.0) skips iterations whose gradients hold NaN/Inf."""
    steps = np.arange(0, 100, 10)
    run = make_run({"loss": (steps, np.full(10, 2.5)), "loss_scale": (steps, np.ones(10)),
                    "number_of_skipped_iterations": (steps, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2])})
    [f] = run_check(run)
    assert f.first_step == 30


def test_skipped_counter_in_fp16_is_left_to_loss_scale_collapse():
    steps = np.arange(0, 100, 10)
    run = make_run({"loss": (steps, np.full(10, 2.5)), "loss_scale": (steps, [8, 8, 8, 4, 4, 4, 2, 2, 2, 2]),
                    "number_of_skipped_iterations": (steps, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2])})
    assert run_check(run) == []


def test_auxiliary_metric_never_measured_is_not_a_nan():
    run = make_run({"loss": np.linspace(3, 2, 20), "eval_accuracy": np.full(20, np.nan)})
    assert run_check(run) == []
    [f] = run_check(make_run({"loss": np.full(20, np.nan)}))
    assert f.first_step == 0


def test_grad_nan_with_healthy_loss_and_unknown_precision_is_info():
    grad = np.full(100, 1.0)
    grad[40] = np.nan
    [f] = run_check(make_run({"loss": np.linspace(4, 3, 100), "grad_norm": grad}))
    assert f.severity is Severity.INFO
    [f] = run_check(make_run({"loss": np.linspace(4, 3, 100), "grad_norm": grad}, hparams={"precision": "bf16"}))
    assert f.severity is Severity.CRITICAL


CLAMP = Event("nan_clamp", 220, "[Warning] lm_loss produced non-finite value (nan); clamping to zero.", "train.log", 9)


def test_a_clamped_loss_in_fp16_gets_a_stable_softmax_first():
    lm = np.r_[np.linspace(5.5, 4.2, 220), 0.0, np.full(29, 4.2)]
    run = make_run({"lm_loss": lm}, hparams={"precision": "fp16", "lm_loss_softmax": "naive"}, events=[CLAMP])
    [f] = run_check(run)
    first = f.recommendations[0]
    assert (first.hparam, first.current, first.suggested) == ("lm_loss_softmax", "naive", "stable")
    assert "ln(65504) = 11.09" in first.rationale and "lm_loss" in first.rationale
    assert [r.hparam for r in f.recommendations[1:]][:1] == ["precision"]


def test_a_clamp_line_alone_is_enough_to_name_the_loss():
    run = make_run({"kd_raw": ([0, 100, 300], [4.2, 3.1, 4.2])}, hparams={"precision": "fp16"}, events=[CLAMP])
    [f] = run_check(run)
    rec = next(r for r in f.recommendations if r.hparam == "lm_loss_softmax")
    assert rec.current is None and "in lm_loss, in fp16" in rec.rationale


@pytest.mark.parametrize("hparams, events", [
    ({"precision": "bf16", "lm_loss_softmax": "naive"}, [CLAMP]),  # bf16 exp() overflows only past 88.7
    ({"precision": "fp16", "lm_loss_softmax": "stable"}, [CLAMP]),  # already stable
    ({"precision": "fp16"}, []),  # a framework's loss (no clamp of its own): its cross-entropy runs in fp32
])
def test_no_stable_softmax_where_it_cannot_be_the_cause(hparams, events):
    lm = np.r_[np.linspace(5.5, 4.2, 220), 0.0, np.full(29, 4.2)]
    [f] = run_check(make_run({"lm_loss": lm}, hparams=hparams, events=events))
    assert "lm_loss_softmax" not in {r.hparam for r in f.recommendations}
