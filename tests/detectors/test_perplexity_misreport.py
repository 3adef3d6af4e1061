"""perplexity-misreport (N003): logged perplexity against exp(loss) or 2**loss, point by point."""

import math

import numpy as np
import pytest

from analyzer.detectors import perplexity_misreport
from analyzer.findings import Severity, Skipped
from analyzer.run import Event
from tests.conftest import make_run

DET = perplexity_misreport.DETECTOR


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def test_seed_002_capped_eval_perplexity():
    warn = Event("warning", 600, "[Warning] Loss 28.41 too high for meaningful perplexity (capped at 20)",
                 "train.log", 31)
    [f] = run_check(make_run({"eval_loss": ([600], [28.4074]), "eval_ppl": ([600], [485165195.41])},
                             events=[warn]))
    assert f.severity is Severity.WARNING and f.first_step == 600
    assert f.metrics["cap_loss"] == 20.0
    assert f.metrics["first_true"] == pytest.approx(math.exp(28.4074), rel=1e-6)
    assert "capped at exp(20)" in f.message and "2.17e12" in f.message
    assert any(e.line == 31 for e in f.evidence)


def test_small_cap_is_info():
    loss = np.r_[np.linspace(6.0, 5.2, 50), np.linspace(5.2, 4.0, 50)]
    ppl = np.exp(np.minimum(loss, 5.0))
    [f] = run_check(make_run({"lm_loss": loss, "ppl": ppl}))
    assert f.severity is Severity.INFO and f.first_step == 0
    assert f.metrics["mismatched_points"] == int((loss > 5.0 + 0.05).sum())


def test_distillation_ppl_pairs_with_lm_loss_not_total():
    lm = np.linspace(5.5, 3.0, 100)
    run = make_run({"loss": lm * 3 + 1, "lm_loss": lm, "kd_loss": lm * 2, "ppl": np.exp(lm)})
    assert run_check(run) == []


def test_fairseq_base_2_with_loss_base_2_is_correct():
    loss = np.linspace(16.5, 10.0, 10)
    assert run_check(make_run({"loss": loss, "ppl": 2**loss}, hparams={"loss_base": 2})) == []


def test_base_2_without_declared_base_is_only_noted():
    loss = np.linspace(16.5, 10.0, 10)
    [f] = run_check(make_run({"loss": loss, "ppl": 2**loss}))
    assert f.severity is Severity.INFO and f.metrics["convention"] == "2**loss"


def test_exp_of_a_base_2_loss_is_a_warning():
    loss = np.linspace(16.5, 10.0, 10)
    [f] = run_check(make_run({"loss": loss, "ppl": np.exp(loss)}, hparams={"loss_base": 2}))
    assert f.severity is Severity.WARNING
    assert f.metrics["first_true"] == pytest.approx(2**16.5)


def test_other_disagreement():
    loss = np.linspace(5.0, 3.0, 20)
    [f] = run_check(make_run({"eval_loss": loss, "eval_ppl": np.exp(loss) * 1000}))
    assert f.metrics["mismatched_points"] == 20 and "differs" in f.message


@pytest.mark.parametrize("noise", [0.0, 0.01, 0.03])
def test_consistent_perplexity_with_rounding_is_silent(noise):
    rng = np.random.default_rng(0)
    loss = np.linspace(8.0, 2.0, 300) + rng.normal(0, 0.1, 300)
    ppl = np.round(np.exp(loss * (1 + rng.normal(0, noise / 10, 300))), 2)
    assert run_check(make_run({"loss": loss, "ppl": ppl, "eval_loss": loss[::10], "eval_ppl": np.exp(loss[::10])})) \
        == []


def test_missing_loss_is_skipped_and_nan_tolerated():
    assert isinstance(run_check(make_run({"ppl": [10.0, 20.0]})), Skipped)
    run_check(make_run({"loss": [np.nan, 2.0, np.inf], "ppl": [np.nan, math.exp(2.0), np.inf]}))
    assert run_check(make_run({"loss": ([5], [2.0]), "ppl": ([6], [7.4])})) != []  # no shared step: skipped
