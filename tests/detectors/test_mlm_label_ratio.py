"""mlm-label-ratio (M001): the labelled share of tokens against mlm_probability."""

import numpy as np
import pytest

from analyzer.detectors import mlm_label_ratio
from analyzer.findings import Confidence, Severity, Skipped
from tests.conftest import make_run

DET = mlm_label_ratio.DETECTOR


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def test_every_token_labelled_is_critical_with_the_fix():
    run = make_run({"loss": np.linspace(39.5, 39.4, 60), "mask_ratio": np.ones(60), "grad_norm": np.full(60, 2.44)},
                   hparams={"mlm_probability": 0.15, "label_all_tokens": True, "max_grad_norm": 1.0})
    [f] = run_check(run)
    assert f.severity is Severity.CRITICAL and f.first_step == 0
    assert f.metrics["mask_ratio_median"] == 1.0 and f.metrics["grad_norm_median"] == pytest.approx(2.44)
    [rec] = f.recommendations
    assert (rec.hparam, rec.current, rec.suggested) == ("label_all_tokens", True, False)


def test_gradient_norm_compared_between_right_and_wrong_stretches():
    ratio = np.r_[np.full(50, 0.14), np.ones(50)]
    grad = np.r_[np.full(50, 20.0), np.full(50, 87.0)]
    [f] = run_check(make_run({"mask_ratio": ratio, "grad_norm": grad, "loss": np.ones(100)}))
    assert f.metrics["grad_norm_median"] == 87.0 and f.metrics["grad_norm_median_right"] == 20.0
    assert f.first_step == 50


def test_config_alone_says_every_token():
    [f] = run_check(make_run({"loss": [5.0, 4.9]}, hparams={"label_all_tokens": True}))
    assert f.severity is Severity.CRITICAL and f.confidence is Confidence.MEDIUM


def test_ratio_off_by_a_factor_is_a_warning():
    [f] = run_check(make_run({"mask_ratio": np.full(30, 0.45)}, hparams={"mlm_probability": 0.15}))
    assert f.severity is Severity.WARNING


@pytest.mark.parametrize("ratio", [0.134, 0.1406, 0.15, 0.16])
def test_span_masking_ratios_are_silent(ratio):
    noise = np.random.default_rng(0).normal(0, 0.01, 200)
    assert run_check(make_run({"mask_ratio": ratio + noise}, hparams={"mlm_probability": 0.15})) == []


def test_missing_and_nan():
    assert isinstance(run_check(make_run({"loss": [1.0]})), Skipped)
    assert run_check(make_run({"mask_ratio": [np.nan, 0.15, np.inf]})) == []
    assert isinstance(run_check(make_run({"mask_ratio": [np.nan]})), Skipped)
