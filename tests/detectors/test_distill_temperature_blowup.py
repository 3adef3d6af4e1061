"""distill-temperature-blowup (D001): the T^2 factor, read from the data, and the temperature that fixes it."""

import numpy as np
import pytest

from analyzer.detectors import distill_temperature_blowup
from analyzer.findings import Confidence, Severity, Skipped
from analyzer.run import Event
from tests.conftest import make_run

DET = distill_temperature_blowup.DETECTOR
CLAMP = Event("nan_clamp", 436, "[Warning] lm_loss produced non-finite value (nan); clamping to zero.", "train.log", 9)


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def recs(finding):
    return {r.hparam: r for r in finding.recommendations}


def seed_002(**extra):
    """The write-up's lines: `Step 0: KD Raw: 38.0254, Temperature²: 9.0` (steps 0, 100, 600)."""
    series = {"kd_raw": ([0, 100, 600], [38.0254, 28.6117, 38.3527]),
              "temperature_squared": ([0, 100, 600], [9.0, 9.0, 9.0]), **extra}
    return make_run(series, events=[CLAMP])


def test_seed_002_lines_give_3_to_2_annealed_to_1_5():
    [f] = run_check(seed_002())
    assert f.severity is Severity.CRITICAL
    assert recs(f)["temperature"].current == 3.0 and recs(f)["temperature"].suggested == 2.0
    assert recs(f)["min_temperature"].suggested == 1.5
    assert f.metrics["kd_raw_median"] == pytest.approx(38.0254 / 9)
    assert "already multiplied by T^2" in f.metrics["convention"]
    assert f.confidence is Confidence.LOW  # no total loss to confirm the reading
    assert f.metrics["nonfinite_step"] == 436


def test_total_loss_confirms_the_already_scaled_reading():
    [f] = run_check(seed_002(eval_loss=([600], [28.4074])))
    assert f.confidence is Confidence.MEDIUM and "cannot fit in a total loss" in f.metrics["convention"]


def test_raw_kl_reading_when_kd_raw_is_small():
    """kd_raw 4.2 is a plausible raw KL: the term is 4.2 x 9 = 37.8."""
    [f] = run_check(make_run({"kd_raw": np.full(50, 4.2), "temperature": np.full(50, 3.0)}))
    assert f.metrics["kd_term_median"] == pytest.approx(37.8)
    assert recs(f)["temperature"].suggested == 2.0


def test_ratio_of_kd_loss_to_kd_raw_proves_the_convention():
    """The reference trainer: kd_loss = kd_raw x T^2, loss = 0.7 kd_loss + 0.3 lm_loss; T anneals 3.0 -> 2.9."""
    n = 250
    temp = np.linspace(3.0, 2.9, n)
    raw = np.full(n, 0.63)
    lm = np.r_[np.linspace(5.57, 4.3, 220), 0.0, np.full(n - 221, 4.3)]
    run = make_run({"kd_raw": raw, "kd_loss": raw * temp**2, "temperature": temp, "lm_loss": lm,
                    "loss": 0.7 * raw * temp**2 + 0.3 * lm}, hparams={"temperature": 3.0, "min_temperature": 2.0,
                                                                      "alpha": 0.7, "vocab_size": 256})
    [f] = run_check(run)
    assert f.confidence is Confidence.HIGH and "multiplies the KL by T^2" in f.metrics["convention"]
    # a KD term of ordinary size (~5.6 at ln(256) = 5.5) in a run that went NaN: a warning, since a NaN is no
    # evidence against the temperature (an fp16 softmax overflows at any T)
    assert f.severity is Severity.WARNING and f.metrics["nonfinite_step"] == 220
    assert recs(f)["temperature"].suggested == 2.0
    assert (recs(f)["min_temperature"].current, recs(f)["min_temperature"].suggested) == (2.0, 1.5)


def test_a_large_kd_term_in_a_run_that_went_non_finite_is_critical():
    n = 250
    temp = np.full(n, 3.0)
    raw = np.full(n, 4.2)  # seed 002: T^2 x 4.2 = 37.8, about 7x ln(256)
    lm = np.r_[np.linspace(5.57, 4.3, 220), 0.0, np.full(n - 221, 4.3)]
    run = make_run({"kd_raw": raw, "kd_loss": raw * temp**2, "temperature": temp, "lm_loss": lm,
                    "loss": 0.7 * raw * temp**2 + 0.3 * lm}, hparams={"alpha": 0.7, "vocab_size": 256})
    [f] = run_check(run)
    assert f.severity is Severity.CRITICAL


def test_the_text_never_promises_that_a_lower_temperature_prevents_nan():
    n = 250
    temp = np.full(n, 3.0)
    lm = np.r_[np.full(220, 5.0), 0.0, np.full(n - 221, 5.0)]
    run = make_run({"kd_raw": np.full(n, 4.2), "temperature": temp, "lm_loss": lm}, hparams={"vocab_size": 256})
    [f] = run_check(run)
    assert "which a lower temperature does not prevent" in f.message and "at the same raw KL" in f.message
    assert "does not prevent overflow or NaN" in recs(f)["temperature"].rationale


def test_control_at_temperature_2_is_silent():
    n = 250
    temp = np.linspace(2.0, 1.95, n)
    raw = np.full(n, 0.63)
    run = make_run({"kd_raw": raw, "kd_loss": raw * temp**2, "temperature": temp, "lm_loss": np.full(n, 5.0)},
                   hparams={"vocab_size": 256})
    assert run_check(run) == []


def test_stable_high_temperature_with_small_term_is_silent():
    """T = 4 with a small raw KL (vision-style distillation) and no instability: the factor is harmless."""
    raw = np.full(100, 0.1)
    run = make_run({"kd_raw": raw, "kd_loss": raw * 16, "temperature": np.full(100, 4.0),
                    "loss": np.linspace(3, 1, 100)}, hparams={"num_classes": 100})
    assert run_check(run) == []


def test_code_that_never_multiplies_is_silent():
    """TRL GKD: kd_loss = kd_raw whatever T is."""
    raw = np.full(100, 12.0)
    assert run_check(make_run({"kd_raw": raw, "kd_loss": raw, "temperature": np.full(100, 3.0)})) == []


def test_large_term_at_moderate_temperature_is_a_warning():
    raw = np.full(100, 6.0)
    [f] = run_check(make_run({"kd_raw": raw, "kd_loss": raw * 4, "temperature": np.full(100, 2.0)}))
    assert f.severity is Severity.WARNING
    assert recs(f)["temperature"].suggested == 1.5  # 2.25 x 6 = 13.5 <= 2 x 10


def test_temperature_inferred_from_the_ratio_alone():
    raw = np.full(20, 4.0)
    [f] = run_check(make_run({"kd_raw": raw, "kd_loss": raw * 9}))
    assert f.metrics["temperature"] == pytest.approx(3.0)


def test_skips_without_kd_metrics_or_temperature():
    assert isinstance(run_check(make_run({"loss": [1.0]}, hparams={"temperature": 0.7})), Skipped)
    assert isinstance(run_check(make_run({"kd_raw": [4.0, 4.1]})), Skipped)


def test_nan_and_short_series():
    run_check(make_run({"kd_raw": [np.nan, 40.0], "temperature": [3.0, np.nan]}))
    assert isinstance(run_check(make_run({"kd_loss": [np.inf], "temperature": [3.0]})), Skipped)
