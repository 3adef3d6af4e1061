"""init-variance (C002): summed factorized embeddings and initial weight scales."""

import math

import pytest

from analyzer.detectors import init_variance
from analyzer.findings import Confidence, Severity, Skipped
from analyzer.run import Checkpoint, CheckpointStats, TensorStats
from tests.conftest import make_run

DET = init_variance.DETECTOR


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def t(name, std, shape=(16, 32)):
    return TensorStats(name, shape, "float32", shape[0] * shape[1], 0, 1.0, std, 4 * std)


def checkpoint(step, tensors):
    return Checkpoint(f"checkpoints/step_{step:06d}.pt", step, "torch", CheckpointStats(tensors=tuple(tensors)))


TABLES = [t("tok_emb.tables.0.weight", 0.02), t("tok_emb.tables.1.weight", 0.0201),
          t("tok_emb.tables.2.weight", 0.0199)]


def test_three_unscaled_tables_at_step_0():
    run = make_run({"loss": [11.5, 11.4]}, checkpoints=[checkpoint(0, TABLES + [t("pos_emb.weight", 0.02, (64, 32))])],
                   hparams={"init_std": 0.02, "n_factorized_embeddings": 3, "scale_factorized_init": False,
                            "vocab_size": 65536})
    [f] = run_check(run)
    assert f.severity is Severity.WARNING and f.confidence is Confidence.HIGH
    assert f.metrics["variance_ratio"] == pytest.approx(3.0, rel=0.01)
    assert f.metrics["ln_vocab"] == pytest.approx(math.log(65536))
    [rec] = f.recommendations
    assert (rec.hparam, rec.current, rec.suggested) == ("scale_factorized_init", False, True)
    assert "0.0115" in rec.rationale


def test_without_the_switch_recommends_init_std_over_sqrt_k():
    [f] = run_check(make_run({}, checkpoints=[checkpoint(0, TABLES)], hparams={"init_std": 0.02}))
    [rec] = f.recommendations
    assert (rec.hparam, rec.current, rec.suggested) == ("init_std", 0.02, 0.0115)


def test_without_init_std_the_position_table_is_the_reference():
    [f] = run_check(make_run({}, checkpoints=[checkpoint(0, TABLES + [t("pos_emb.weight", 0.02, (64, 32))])]))
    assert f.metrics["variance_ratio"] == pytest.approx(3.0, rel=0.01)


def test_scaled_tables_are_silent():
    scaled = [t(f"tok_emb.tables.{i}.weight", 0.02 / math.sqrt(3)) for i in range(3)]
    assert run_check(make_run({}, checkpoints=[checkpoint(0, scaled)], hparams={"init_std": 0.02})) == []


def test_config_alone():
    [f] = run_check(make_run({"loss": [10.0]}, hparams={"init_std": 0.15, "n_factorized_embeddings": 3,
                                                       "scale_factorized_init": False}))
    assert f.confidence is Confidence.MEDIUM and f.metrics["variance_ratio"] == 3.0
    assert f.recommendations[0].suggested is True
    assert run_check(make_run({}, hparams={"n_factorized_embeddings": 3, "scale_factorized_init": True})) == []


def test_wide_weights_at_step_0_are_info():
    ckpt = checkpoint(0, [t("h.0.mlp.c_fc.weight", 0.072), t("wte.weight", 0.02)])
    [f] = run_check(make_run({}, checkpoints=[ckpt], hparams={"init_std": 0.02}))
    assert f.severity is Severity.INFO and f.metrics["wide_tensors"] == 1


def test_nothing_to_judge_is_skipped():
    assert isinstance(run_check(make_run({"loss": [1.0]})), Skipped)
    assert run_check(make_run({}, checkpoints=[checkpoint(100, [t("wte.weight", 0.02)])])) == []
