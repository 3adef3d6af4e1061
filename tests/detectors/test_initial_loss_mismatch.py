"""initial-loss-mismatch: first losses far from ln(vocab_size) / ln(num_classes)."""

import math

import numpy as np
import pytest

from analyzer.detectors import initial_loss_mismatch
from analyzer.findings import Severity, Skipped
from tests.conftest import make_run

P = initial_loss_mismatch.DETECTOR.params


def check(run, **over):
    return initial_loss_mismatch.check(run, {**P, **over})


def test_fires_above_chance_with_init_recommendations():
    loss = np.r_[np.full(5, 13.0), np.linspace(13, 9, 95)]
    run = make_run({"loss": loss}, hparams={"vocab_size": 65536, "init_std": 0.02, "n_factorized_embeddings": 3,
                                            "scale_factorized_init": False})
    [f] = check(run)
    assert f.severity is Severity.WARNING and f.first_step == 0
    assert f.metrics["chance_level"] == pytest.approx(math.log(65536))
    std = math.sqrt(2 * (13.0 - math.log(65536)))
    assert f.metrics["implied_logit_std"] == pytest.approx(std, rel=1e-3)
    recs = {r.hparam: r for r in f.recommendations}
    assert recs["init_std"].suggested == pytest.approx(round(0.02 * 0.5 / std, 4), rel=0.05)
    assert recs["scale_factorized_init"].suggested is True


def test_normalisation_mismatch_is_named_instead_of_init():
    run = make_run({"loss": np.full(20, 39.5), "mask_ratio": np.full(20, 1.0)},
                   hparams={"vocab_size": 256, "mlm_probability": 0.15, "label_all_tokens": True, "init_std": 0.02})
    [f] = check(run)
    assert "labelled share" in f.message
    assert [(r.hparam, r.suggested) for r in f.recommendations] == [("label_all_tokens", False)]


def test_near_chance_is_silent_and_fine_tunes_may_start_below():
    assert check(make_run({"loss": np.full(10, 11.2)}, hparams={"vocab_size": 65536})) == []
    assert check(make_run({"loss": np.full(10, 2.5)}, hparams={"vocab_size": 32000}, fmt="hf-trainer")) == []


def test_below_chance_from_scratch_is_flagged():
    [f] = check(make_run({"loss": np.full(10, 2.0)}, hparams={"vocab_size": 256, "init_std": 0.02},
                         fmt="postmortem-run"))
    assert f.metrics["ratio"] == pytest.approx(2.0 / math.log(256))


def test_base2_losses_use_base2_chance():
    assert check(make_run({"loss": np.full(10, 16.3)}, hparams={"vocab_size": 65536, "loss_base": 2})) == []


def test_skips_without_vocab_late_start_or_loss():
    assert isinstance(check(make_run({"loss": np.full(10, 11.0)})), Skipped)
    late = make_run({"loss": (np.arange(500, 600), np.full(100, 20.0))}, hparams={"vocab_size": 65536})
    assert isinstance(check(late), Skipped)
    assert isinstance(check(make_run({"lr": [1.0]}, hparams={"vocab_size": 10})), Skipped)


def test_nan_first_point_does_not_crash():
    loss = np.r_[np.nan, np.full(9, 11.1)]
    assert check(make_run({"loss": loss}, hparams={"vocab_size": 65536})) == []


def climbing_from(first, vocab=128):
    """HF-style 5-step means: the first window at `first`, then a climb under too high an lr (hf_lr_too_high)."""
    loss = np.r_[first, 5.3, 5.7, 6.4, 7.1, np.full(55, 6.5)]
    return make_run({"loss": (np.arange(5, 5 * 61, 5), loss)}, hparams={"vocab_size": vocab, "init_std": 0.02})


def test_a_loss_that_climbs_from_chance_is_not_blamed_on_the_init():
    assert check(climbing_from(4.72)) == []  # 97% of ln 128 at step 5: the init was fine, the lr was not


def test_a_first_point_above_chance_still_fires():
    [f] = check(climbing_from(5.6))
    assert f.metrics["initial_loss"] == pytest.approx(5.7)
