"""The stability detectors (N001-N003, G001-G002, D001, M001, C001-C002) on real public logs and sample runs."""

from __future__ import annotations

import functools

import pytest

from analyzer.detectors import DETECTORS
from analyzer.errors import InputError
from analyzer.findings import Severity, Skipped
from tests.conftest import SAMPLE_RUNS

MINE = ("N001", "N002", "N003", "G001", "G002", "D001", "M001", "C001", "C002")


def read(path):
    run = _read(str(path))
    if isinstance(run, str):
        pytest.skip(run)
    return run


@functools.lru_cache(maxsize=None)
def _read(path: str):
    """A Run, read once per test session; a string saying why when this checkout cannot read it."""
    from analyzer.ingest import read_run

    try:
        run = read_run(path)
    except InputError as exc:  # a reader for this format has not landed in this checkout
        return f"not readable here: {exc}"
    return run if len(run.scalars) else "no reader produced scalars for this run"


def check(code, run):
    det = DETECTORS[code]
    if det.requires and not any(run.has(m) for m in det.requires):
        return Skipped(det.name, "requires")
    return det.check(run, det.params)


def loud(code, run):
    out = check(code, run)
    return [] if isinstance(out, Skipped) else [f for f in out if f.severity is not Severity.INFO]


@pytest.mark.parametrize("name", ["hf_mistral_healthy", "hf_tinyllama_healthy", "pl_resnet_onecycle_healthy",
                                  "nanogpt_baseline", "hf_star_benign_gradspikes", "hf_grpo_zero_loss_by_design",
                                  "hf_whisper_overfit", "deepspeed_bert_overflow"])
@pytest.mark.parametrize("code", MINE)
def test_no_warning_on_healthy_real_logs(name, code, real_runs):
    assert loud(code, read(real_runs / name)) == []


def test_bloom104b_overflow_cascade(real_runs):
    [f] = check("N002", read(real_runs / "bloom104b_overflow"))
    assert f.severity is Severity.WARNING and 17061 <= f.first_step <= 17062 and f.last_step <= 17068
    assert (f.metrics["scale_from"], f.metrics["scale_to"]) == (1048576, 32768)
    assert f.metrics["overflows"] == 6 and f.metrics["loss_jump"] > 1.3


def test_bloom13b_scale_collapse_and_unmeasured_grad_norm(real_runs):
    run = read(real_runs / "bloom13b_spike")
    [f] = check("N002", run)
    assert f.severity is Severity.WARNING and f.first_step == 29050
    assert (f.metrics["scale_from"], f.metrics["scale_to"]) == (65536, 4096)
    assert isinstance(check("G002", run), Skipped)
    assert loud("G001", run) == []


def test_fairseq_overflow_with_loss_jump(real_runs):
    run = read(real_runs / "fairseq_fsdp_overflow")
    [f] = check("N002", run)
    assert f.severity is Severity.WARNING and f.first_step in (2, 3)
    assert f.metrics["scale_to"] == 1
    assert loud("N003", run) == []  # fairseq's ppl is 2**loss of a base-2 loss: correct


def test_deepspeed_startup_calibration_is_info(real_runs):
    [f] = check("N002", read(real_runs / "deepspeed_bert_overflow"))
    assert f.severity is Severity.INFO and f.metrics["calibration_overflows"] == 17


def test_bloom176b_grad_spike_with_the_loss_spike(real_runs):
    [f] = check("G001", read(real_runs / "bloom176b_spike"))
    assert f.severity is Severity.WARNING and 31215 <= f.first_step <= 31219
    assert f.metrics["peak"] == pytest.approx(960.351)


def test_star_benign_grad_spikes_are_info_at_most(real_runs):
    findings = check("G001", read(real_runs / "hf_star_benign_gradspikes"))
    assert all(f.severity is Severity.INFO for f in findings)


def test_megatron_validation_ppl_is_exp_of_lm_loss(real_runs):
    assert loud("N003", read(real_runs / "bloom176b_spike")) == []


def test_kd_sample_run_gives_the_seed_002_diagnosis():
    run = read(SAMPLE_RUNS / "kd-temperature-blowup")
    [kd] = check("D001", run)
    assert kd.severity is Severity.WARNING  # KD term ~5.6, a fresh LM loss's size; the NaN is an fp16 overflow
    recs = {r.hparam: r for r in kd.recommendations}
    assert (recs["temperature"].current, recs["temperature"].suggested) == (3.0, 2.0)
    assert recs["min_temperature"].suggested == 1.5
    assert kd.metrics["t_squared"] == 9.0
    [nan] = check("N001", run)
    assert nan.severity is Severity.CRITICAL and nan.first_step == 220
    assert nan.metrics["restart_checkpoint"] == "checkpoints/step_000125.pt"
    fixes = {r.hparam: r for r in nan.recommendations}
    assert (fixes["lm_loss_softmax"].current, fixes["lm_loss_softmax"].suggested) == ("naive", "stable")
    assert "11.09" in fixes["lm_loss_softmax"].rationale


def test_kd_control_is_quiet():
    run = read(SAMPLE_RUNS / "kd-temperature-blowup-fixed")
    for code in MINE:
        assert loud(code, run) == [], code


def test_mlm_sample_runs():
    [f] = check("M001", read(SAMPLE_RUNS / "mlm-labels-all-tokens"))
    assert f.severity is Severity.CRITICAL and f.metrics["mask_ratio_median"] == 1.0
    assert check("M001", read(SAMPLE_RUNS / "mlm-labels-all-tokens-fixed")) == []


def test_factorized_embedding_sample_runs():
    [f] = check("C002", read(SAMPLE_RUNS / "factorized-embedding-stall"))
    assert f.severity is Severity.WARNING and 2.5 < f.metrics["variance_ratio"] < 4.0  # 3 tables, after training
    assert f.recommendations[0].hparam == "scale_factorized_init" and f.recommendations[0].suggested is True
    assert check("C002", read(SAMPLE_RUNS / "factorized-embedding-stall-fixed")) == []
