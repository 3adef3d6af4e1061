"""overfitting: eval loss rising above its minimum while the train loss keeps falling."""

import numpy as np
import pytest

from analyzer.detectors import overfitting
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from analyzer.run import Checkpoint
from tests.conftest import make_run

P = overfitting.DETECTOR.params
EVAL = ([1000, 2000, 3000, 4000, 5000], [0.3210, 0.3585, 0.3937, 0.4123, 0.4200])


def check(run, **over):
    return overfitting.check(run, {**P, **over})


def whisper_like(**extra):
    steps = np.arange(25, 5001, 25)
    train = 0.3 * np.exp(-steps / 400) + 0.0002
    return make_run({"loss": (steps, train), "eval_loss": EVAL, **extra},
                    hparams={"max_steps": 5000, "weight_decay": 0.0},
                    checkpoints=[Checkpoint("checkpoint-1000", 1000, "hf"), Checkpoint("checkpoint-5000", 5000, "hf")])


def test_fires_on_whisper_like_run():
    [f] = check(whisper_like())
    assert f.severity is Severity.WARNING and (f.first_step, f.last_step) == (1000, 5000)
    assert f.metrics["rise"] == pytest.approx(0.42 / 0.321, rel=1e-3)
    recs = {r.hparam: r for r in f.recommendations}
    assert (recs["max_steps"].current, recs["max_steps"].suggested) == (5000, 1000)
    assert recs["weight_decay"].suggested == 0.01
    assert "checkpoint-1000" in f.message


def test_info_when_an_eval_quality_metric_keeps_improving():
    [f] = check(whisper_like(eval_wer=(EVAL[0], [0.789, 0.77, 0.76, 0.75, 0.745])))
    assert f.severity is Severity.INFO and f.metrics["quality_metric"] == "eval_wer"
    # the later steps still help the predictions: no earlier stop is suggested
    assert "max_steps" not in {r.hparam for r in f.recommendations}


def test_info_when_a_higher_is_better_metric_holds_its_best_to_the_end():
    [f] = check(whisper_like(eval_accuracy=(EVAL[0], [0.70, 0.74, 0.76, 0.77, 0.77])))
    assert f.severity is Severity.INFO and f.metrics["quality_best_step"] == 5000


def test_warning_when_the_quality_metric_stopped_improving_while_the_eval_loss_kept_rising():
    # hf_whisper_overfit's shape: WER best at step 3000, no better in the last two evaluations
    [f] = check(whisper_like(eval_wer=(EVAL[0], [0.789, 0.748, 0.743, 0.744, 0.745])))
    assert f.severity is Severity.WARNING and f.metrics["quality_best_step"] == 3000
    assert "improved only until step 3000" in f.message
    recs = {r.hparam: r for r in f.recommendations}
    assert recs["max_steps"].suggested == 3000  # the best predictions, not the eval-loss minimum (WER 0.789 there)
    assert "+7%" in recs["max_steps"].rationale  # eval loss 0.3937 -> 0.42 after step 3000


def test_a_quality_metric_that_never_beat_its_value_at_the_loss_minimum_is_no_excuse():
    [f] = check(whisper_like(eval_wer=(EVAL[0], [0.70, 0.72, 0.75, 0.74, 0.76])))
    assert f.severity is Severity.WARNING and "quality_metric" not in f.metrics
    assert {r.hparam: r.suggested for r in f.recommendations}["max_steps"] == 1000


def test_quality_metric_with_nan_and_sparse_points_does_not_crash():
    [f] = check(whisper_like(eval_wer=([1000, 5000], [np.nan, 0.7])))
    assert f.severity is Severity.WARNING  # nothing at the loss minimum to compare with


def test_silent_when_eval_keeps_improving_or_train_rises_too():
    steps = np.arange(25, 5001, 25)
    falling = make_run({"loss": (steps, 1 / np.sqrt(steps)), "eval_loss": (EVAL[0], [0.5, 0.45, 0.44, 0.43, 0.42])})
    assert check(falling) == []
    both = make_run({"loss": (steps, 0.1 + steps / 1e4), "eval_loss": EVAL})
    assert check(both) == []


def test_one_bad_eval_is_not_enough():
    steps = np.arange(25, 5001, 25)
    run = make_run({"loss": (steps, 1 / np.sqrt(steps)),
                    "eval_loss": (EVAL[0], [0.40, 0.35, 0.33, 0.40, 0.33])})
    assert check(run) == []


def test_skips_without_enough_evals():
    assert isinstance(check(make_run({"loss": [1.0, 0.9]})), Skipped)
    assert isinstance(check(make_run({"loss": [1.0, 0.9], "eval_loss": [1.0, 1.2]})), Skipped)
    nan_eval = make_run({"loss": (np.arange(10), np.ones(10)), "eval_loss": ([0, 5, 9], [np.nan] * 3)})
    assert isinstance(check(nan_eval), Skipped)


def test_hf_whisper_overfit(real_runs):
    [f] = check(read_run(real_runs / "hf_whisper_overfit"))
    assert f.first_step == 1000 and f.metrics["eval_final"] == pytest.approx(0.42, abs=1e-3)
    # eval_wer improved 0.789 -> 0.743 until step 3000 and not since, while eval_loss rose another 7%
    assert f.severity is Severity.WARNING and f.metrics["quality_best_step"] == 3000
    assert {r.hparam: r.suggested for r in f.recommendations}["max_steps"] == 3000


@pytest.mark.parametrize("case", ["hf_tinyllama_healthy", "pl_resnet_onecycle_healthy", "nanogpt_baseline"])
def test_silent_on_healthy_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert result == [] or isinstance(result, Skipped)
