"""Tests of the reference trainer: config, models, determinism, checkpoints, fp16, NaN clamping, reproduce-run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from analyzer.errors import InputError
from analyzer.trainer import TrainConfig, load_scenario, train
from analyzer.trainer.config import ConfigError, config_from_dict, with_overrides
from analyzer.findings import Recommendation, Severity
from analyzer.trainer.data import FactorizedLanguage, corrupt
from analyzer.trainer.model import FactorizedEmbedding
from analyzer.trainer.reproduce import fixes_to_overrides, read_run_config, reproduce_run
from analyzer.trainer.train import NAN_WARNING, lm_loss

SAMPLE_RUNS = Path(__file__).resolve().parents[2] / "sample_runs"
TINY = dict(vocab_size=64, block_size=16, batch_size=4, n_embd=16, max_steps=4, eval_interval=2, eval_iters=1)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def strip_timing(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("steps_per_s", "tokens_per_s")} for e in events]


def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        config_from_dict({"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="bad value"):
        with_overrides(TrainConfig(), {"batch_size": "four"})
    assert with_overrides(TrainConfig(), {"lr": "2e-4", "label_all_tokens": "true"}).lr == 2e-4
    with pytest.raises(ConfigError, match="vocab_size 1000 is not a power of 2"):
        with_overrides(TrainConfig(), {"language_factors": 2, "vocab_size": 1000})


@pytest.mark.parametrize("model", ["gpt", "mlm", "kd"])
def test_each_model_trains_with_finite_loss(tmp_path, model):
    cfg = TrainConfig(model=model, **TINY)
    train(cfg, tmp_path, quiet=True)
    train_events = [e for e in metrics(tmp_path) if e["split"] == "train"]
    assert len(train_events) == 4 and all(math.isfinite(e["loss"]) for e in train_events)
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "completed"


def test_factorized_embeddings_and_bf16_train(tmp_path):
    cfg = TrainConfig(model="mlm", n_factorized_embeddings=3, tie_embeddings=True, precision="bf16", **TINY)
    train(cfg, tmp_path, quiet=True)
    assert all(math.isfinite(e.get("loss", 0.0)) for e in metrics(tmp_path))


@pytest.mark.parametrize("extra", [dict(model="kd", precision="fp16", grad_accum=2),
                                   dict(model="mlm", n_factorized_embeddings=3, tie_embeddings=True,
                                        language_factors=3, eval_batch_size=8)])
def test_same_config_and_seed_give_identical_metrics(tmp_path, extra):
    cfg = TrainConfig(**{**TINY, **extra})
    a, b = train(cfg, tmp_path / "a", quiet=True), train(cfg, tmp_path / "b", quiet=True)
    assert strip_timing(metrics(a)) == strip_timing(metrics(b))


def test_factorized_language_has_uniform_tokens_and_digit_chains():
    lang = FactorizedLanguage(vocab_size=64, factors=3, branching=2, dirichlet_alpha=0.5, seed=1)
    x = lang.sample(np.random.default_rng(0), 400, 40)
    assert lang.base == 4 and x.min() >= 0 and x.max() < 64
    transition = lang.transition_matrix()
    assert np.allclose(transition.sum(axis=1), 1.0) and np.allclose(transition.sum(axis=0), 1.0)  # uniform tokens
    assert (transition[x[:, :-1], x[:, 1:]] > 0).all()  # every sampled step is a transition of the product chain
    with pytest.raises(ValueError, match="not a power of 3"):
        FactorizedLanguage(vocab_size=60, factors=3, branching=2, dirichlet_alpha=0.5, seed=1)


@pytest.mark.parametrize("batch", [8, 32])
def test_fault_injector_corrupts_a_fixed_count_whatever_the_batch(batch):
    x = np.zeros((batch, 16), dtype=np.int64)
    bad = corrupt(x, np.random.default_rng(0), 64, 2, "repeat")
    assert (bad[2:] == 0).all() and (bad[:2] == bad[:2, :1]).all()  # 2 rows, each one token repeated
    assert bad[:2, 0].any() and not (x != 0).any()  # the rows changed; the input did not


def test_factorized_tied_logits_equal_the_summed_matrix():
    emb = FactorizedEmbedding(vocab_size=100, k=3, n_embd=8, n_special=1)  # base 5: 125 digit codes, 100 used
    x = torch.randn(2, 3, 8)
    assert torch.allclose(emb.tied_logits(x), x @ emb(torch.arange(100)).t(), atol=1e-5)
    mask = torch.tensor([[100]])  # the [MASK] id has its own vector, not a digit sum
    assert torch.equal(emb(mask)[0, 0], emb.special.weight[0])


def test_checkpoint_loads_with_weights_only(tmp_path):
    train(TrainConfig(checkpoint_interval=2, **TINY), tmp_path, quiet=True)
    paths = sorted((tmp_path / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in paths] == ["step_000002.pt", "step_000004.pt"]
    ckpt = torch.load(paths[-1], weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "scheduler", "scaler", "step", "config"} and ckpt["step"] == 4


def test_fp16_emulation_overflows_on_huge_logits():
    logits = torch.tensor([[[12.0, 0.0, -1.0]]])  # exp(12) = 162755 > float16 max 65504
    cfg = TrainConfig(precision="fp16", lm_loss_softmax="naive")
    assert not torch.isfinite(lm_loss(logits, torch.tensor([[1]]), cfg))
    assert torch.isfinite(lm_loss(logits, torch.tensor([[1]]), TrainConfig(precision="fp16")))


def test_fp16_loss_scale_overflow_is_logged(tmp_path):
    cfg = TrainConfig(precision="fp16", init_loss_scale=2.0**40, **TINY)  # scaled gradients overflow float16
    train(cfg, tmp_path, quiet=True)
    log = (tmp_path / "train.log").read_text()
    assert "[fp16] overflow: skipping step, loss scale 1.09951e+12 -> 5.49756e+11" in log
    assert [e["loss_scale"] for e in metrics(tmp_path) if e["split"] == "train"][0] == 2.0**39


def test_nan_policy_clamp_writes_the_seed_warning_line(tmp_path):
    # a huge init makes the student's logits pass 11.09, so the naive float16 softmax gives NaN from step 0
    cfg = TrainConfig(model="kd", precision="fp16", lm_loss_softmax="naive", nan_policy="clamp", init_std=2.0,
                      **TINY)
    train(cfg, tmp_path, quiet=True)
    log = (tmp_path / "train.log").read_text()
    assert NAN_WARNING.format(name="lm_loss", value="nan") in log
    first = [e for e in metrics(tmp_path) if e["split"] == "train"][0]
    assert first["lm_loss"] == 0.0 and math.isfinite(first["loss"])


def test_ppl_cap_prints_the_seed_warning(tmp_path):
    train(TrainConfig(ppl_cap=2.0, **TINY), tmp_path, quiet=True)
    log = (tmp_path / "train.log").read_text()
    assert "too high for meaningful perplexity (capped at 2)" in log
    assert [e["eval_ppl"] for e in metrics(tmp_path) if e["split"] == "eval"][0] == pytest.approx(math.exp(2.0))


def test_two_processes_under_gloo(tmp_path):
    cfg = TrainConfig(max_steps=2, vocab_size=32, block_size=8, batch_size=2, n_embd=16, eval_interval=10)
    train(cfg, tmp_path, nproc=2, quiet=True)
    assert json.loads((tmp_path / "config.json").read_text())["world_size"] == 2
    rank1 = [json.loads(line) for line in (tmp_path / "metrics.rank1.jsonl").read_text().splitlines()]
    assert rank1 and all(e["rank"] == 1 for e in rank1)
    # DDP averages gradients, so both ranks report the same (global) gradient norm
    assert [e["grad_norm"] for e in rank1] == [e["grad_norm"] for e in metrics(tmp_path) if e["split"] == "train"]


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLE_RUNS.glob("*") if (p / "run.json").exists()))
def test_reproduce_first_steps_of_every_sample_run(tmp_path, name):
    lines = []
    code = reproduce_run(SAMPLE_RUNS / name, tmp_path / name, 3, None, {}, False, lines.append)
    assert code == 0, lines


def test_reproduce_reports_the_first_difference(tmp_path):
    train(TrainConfig(**TINY), tmp_path / "orig", quiet=True)
    lines = []
    assert reproduce_run(tmp_path / "orig", tmp_path / "new", None, None, {"lr": "0.01"}, False, lines.append) == 1
    assert "first difference at step 0 (eval)" in lines[-1] or "step 0 (train)" in lines[-1]


def test_reproduce_rejects_a_dir_the_trainer_did_not_write(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    with pytest.raises(InputError, match="not a run dir written by the reference trainer"):
        reproduce_run(tmp_path, None, None, None, {}, False, print)


def test_reproduce_rejects_an_unknown_set_key(tmp_path):
    train(TrainConfig(**TINY), tmp_path / "orig", quiet=True)
    with pytest.raises(InputError, match="unknown config key"):
        reproduce_run(tmp_path / "orig", tmp_path / "new", 1, None, {"nope": "1"}, False, print)


def test_fixes_to_overrides_maps_recommendations_onto_fields():
    recs = [SimpleNamespace(hparam="temperature", current=3.0, suggested=2.0),
            SimpleNamespace(hparam="learning_rate", current=1e-4, suggested="2e-4"),
            SimpleNamespace(hparam="batch_size", current=4, suggested=16.0),
            SimpleNamespace(hparam="label_all_tokens", current=True, suggested=False),
            SimpleNamespace(hparam="gpu_count", current=1, suggested=3)]
    assert fixes_to_overrides(recs, TrainConfig()) == {"temperature": 2.0, "lr": 2e-4, "batch_size": 16,
                                                       "label_all_tokens": False}


def test_every_scenario_loads():
    for name in ("mlm-labels-all-tokens", "mlm-lr-too-low", "kd-temperature-blowup", "gpt2-spike-plateau",
                 "factorized-embedding-stall"):
        assert load_scenario(name).scenario == name
        assert load_scenario(name + "-fixed").scenario == name + "-fixed"


KD_RUN = SAMPLE_RUNS / "kd-temperature-blowup"


def test_apply_fixes_on_kd_temperature_blowup_removes_the_nan_clamp(tmp_path):
    """End to end over the steps where the NaN was: the NaN finding's fixes (a stable softmax first: the NaN is an
    fp16 overflow of exp() in the LM loss) are applied; the temperature warning's T 3 -> 2 is set aside (at T = 2
    the run still went NaN by step 333 of 1000, with a larger max grad norm). Nothing gets worse."""
    lines: list[str] = []
    assert reproduce_run(KD_RUN, tmp_path / "fixed", 230, None, {}, True, lines.append) == 0
    assert "fix: lm_loss_softmax 'naive' -> 'stable'" in lines
    assert not any(line.startswith("fix: temperature") for line in lines)
    assert any(line.startswith("not applied: temperature 3.0 -> 2.0") for line in lines)
    config = json.loads((tmp_path / "fixed" / "config.json").read_text())
    assert config["lm_loss_softmax"] == "stable" and config["temperature"] == 3.0
    assert "non-finite value" not in (tmp_path / "fixed" / "train.log").read_text()
    nan_row = next(line for line in lines if line.startswith("NaN/Inf")).split()
    assert nan_row[-1] == "better" and float(nan_row[-3]) > 0 and float(nan_row[-2]) == 0  # clamped NaNs; none
    for row in ("final loss", "min loss", "final eval loss", "max grad norm", "final lm_loss"):
        assert next(line for line in lines if line.startswith(row + " ")).endswith("better"), row
    row = next(line for line in lines if line.startswith("nonfinite-onset")).split()
    assert row[1:] == ["critical", "-"]
    assert lines[-1].startswith("verdict: fixed, nothing got worse;") and lines[-1].endswith("worse: nothing")


def test_a_clamped_final_loss_reads_nan_not_a_low_number():
    """The original KD run's last steps clamp lm_loss to 0.0, so its logged total loss is only the KD term: its
    final loss is a NaN (worse than any number), and min loss skips the clamped steps."""
    from analyzer.trainer.reproduce import CLAMPED, summarize

    numbers = summarize(KD_RUN, None, read_run_config(KD_RUN))
    assert numbers["final loss"] == CLAMPED and numbers["final lm_loss"] == CLAMPED
    assert numbers["min loss"] > 4.0  # the clamped steps logged ~2.6
    assert numbers["last finite lm_loss"] == pytest.approx(3.578, abs=1e-3)  # step 230; 231-249 clamped


def test_findings_before_after_names_what_the_fix_cleared_kept_and_added():
    from analyzer.trainer.reproduce import findings_before_after

    def diag(*found):
        return fake_diagnosis(*(SimpleNamespace(name=n, severity=Severity(s), first_step=step) for n, s, step in found))

    before = diag(("nonfinite-onset", "critical", 220), ("loss-spike", "warning", 50), ("loss-spike", "critical", 90),
                  ("loss-plateau", "info", 0), ("grad-explosion", "warning", 300), ("throughput-drop", "warning", 10))
    after = diag(("loss-spike", "warning", 60), ("lr-too-low", "warning", 0), ("throughput-drop", "critical", 5))
    lines = findings_before_after(before, after, stop=250)
    assert lines[0].split()[-2:] == ["before", "after"]
    assert lines[1].split() == ["nonfinite-onset", "critical", "-"]  # grad-explosion began after the re-run's end
    assert lines[2].split() == ["loss-spike", "critical", "warning"]  # the worst severity of a detector
    assert lines[3].split() == ["lr-too-low", "-", "warning"]
    assert lines[4] == ("findings gone after the fix: 1 of 2 (nonfinite-onset); still there: loss-spike; "
                        "new: lr-too-low")
    assert not any("throughput-drop" in line for line in lines)  # wall-clock speed: the machine's, not the fix's
    assert findings_before_after(diag(), diag(("loss-plateau", "info", 0)), None) == [
        "findings: none at warning or above, before or after"]


def fake_diagnosis(*findings, roots=()):
    return SimpleNamespace(findings=findings, root_causes=roots)


def fake_finding(name, *recs):
    recommendations = tuple(Recommendation(*rec, rationale="") for rec in recs)
    return SimpleNamespace(name=name, code=name[:4].upper(), recommendations=recommendations,
                           severity=Severity.WARNING, first_step=0)


def test_apply_fixes_takes_root_causes_first_and_skips_foreign_settings(tmp_path, monkeypatch):
    train(TrainConfig(model="mlm", label_all_tokens=True, lr=1e-4, **TINY), tmp_path / "orig", quiet=True)
    diagnosis = fake_diagnosis(
        fake_finding("mlm-label-ratio", ("label_all_tokens", True, False), ("gpu_count", 1, 4)),
        fake_finding("lr-too-low", ("learning_rate", 1e-4, 1e-3)),
        fake_finding("grad-explosion", ("lr", 1e-4, 5e-5), ("max_grad_norm", 1.0, 0.5)),
        roots=("mlm-label-ratio", "lr-too-low"))
    monkeypatch.setattr("analyzer.diagnose.diagnose_path", lambda path: diagnosis)
    lines: list[str] = []
    assert reproduce_run(tmp_path / "orig", tmp_path / "fixed", None, None, {}, True, lines.append) == 0
    fixed = json.loads((tmp_path / "fixed" / "config.json").read_text())
    assert fixed["label_all_tokens"] is False and fixed["lr"] == 1e-3 and fixed["max_grad_norm"] == 1.0
    assert "skipped: gpu_count -> 4 is not a setting of the reference trainer" in lines
    mask_row = next(line for line in lines if line.startswith("mask_ratio")).split()
    assert float(mask_row[-2]) == 1.0 and float(mask_row[-1]) < 0.5


def test_apply_fixes_without_recommendations_trains_nothing(tmp_path, monkeypatch):
    train(TrainConfig(**TINY), tmp_path / "orig", quiet=True)
    monkeypatch.setattr("analyzer.diagnose.diagnose_path", lambda path: fake_diagnosis(fake_finding("loss-plateau")))
    lines: list[str] = []
    assert reproduce_run(tmp_path / "orig", tmp_path / "fixed", None, None, {}, True, lines.append) == 0
    assert lines == ["no finding recommends a hyperparameter change; nothing to re-run"]
    assert not (tmp_path / "fixed").exists()


@pytest.mark.parametrize("key, before, after, comparable, expected", [
    ("final loss", 2.0, 1.0, True, "better"),
    ("final loss", 1.0, 1.01, True, "same"),
    ("max grad norm", 4.6, 12.6, True, "worse"),
    ("loss drop, last half", 0.02, 0.12, True, "better"),
    ("final loss", 2.0, 1.0, False, ""),  # a KD temperature or label change: another quantity after the fix
    ("final lm_loss", 3.6, 4.8, False, "worse"),
    ("final loss", float("inf"), 0.8, True, "better"),  # inf: a NaN the run clamped to 0.0
    ("final loss", 0.5, float("inf"), True, "worse"),
    ("final loss", float("inf"), float("inf"), True, ""),
    ("effective batch", 8, 32, True, ""),  # a setting, not an outcome
    ("NaN/Inf (logged or clamped)", 21, float("nan"), True, ""),
])
def test_before_after_rows_are_judged_in_their_own_direction(key, before, after, comparable, expected):
    from analyzer.trainer.reproduce import judge

    assert judge(key, before, after, comparable) == expected


def found(name, severity, caused_by, *recs):
    """A finding of `severity` that `caused_by` led to, recommending `recs`."""
    return SimpleNamespace(**{**vars(fake_finding(name, *recs)), "severity": Severity(severity),
                              "caused_by": caused_by})


def test_apply_fixes_adds_a_critical_consequences_fixes_but_not_a_warnings():
    from analyzer.trainer.reproduce import chosen_fixes

    diagnosis = fake_diagnosis(
        found("distill-temperature-blowup", "critical", (), ("temperature", 3.0, 2.0)),
        found("nonfinite-onset", "critical", ("distill-temperature-blowup",), ("precision", "fp16", "bf16")),
        found("grad-explosion", "warning", ("distill-temperature-blowup",), ("max_grad_norm", 0.0, 1.0)),
        found("lr-too-high", "critical", (), ("lr", 1.0, 0.5)),
        roots=("distill-temperature-blowup",))
    findings, recs = chosen_fixes(diagnosis)
    assert [f.name for f in findings] == ["distill-temperature-blowup", "nonfinite-onset"]
    assert [r.hparam for r in recs] == ["temperature", "precision"]


def test_a_warning_root_cause_that_led_to_a_critical_finding_is_set_aside():
    from analyzer.trainer.reproduce import chosen_fixes, set_aside

    diagnosis = fake_diagnosis(
        found("distill-temperature-blowup", "warning", (), ("temperature", 3.0, 2.0)),
        found("lr-too-low", "warning", (), ("lr", 1e-5, 1e-4)),
        found("nonfinite-onset", "critical", ("distill-temperature-blowup",), ("lm_loss_softmax", "naive", "stable")),
        roots=("distill-temperature-blowup", "lr-too-low"))
    findings, recs = chosen_fixes(diagnosis)
    assert [f.name for f in findings] == ["lr-too-low", "nonfinite-onset"]  # lr-too-low led to nothing critical
    assert [r.hparam for r in recs] == ["lr", "lm_loss_softmax"]
    assert [f.name for f in set_aside(diagnosis)] == ["distill-temperature-blowup"]


@pytest.mark.parametrize("before, after, start", [
    ({"max grad norm": 4.6, "NaN/Inf (logged or clamped)": 21.0}, {"max grad norm": 12.6,
                                                                     "NaN/Inf (logged or clamped)": 0.0},
     "verdict: not a clean fix, some numbers got worse; better: NaN/Inf (logged or clamped) 21 -> 0; "
     "worse: max grad norm 4.6 -> 12.6"),
    ({"final lm_loss": 3.6, "NaN/Inf (logged or clamped)": 21.0}, {"final lm_loss": 3.5,
                                                                     "NaN/Inf (logged or clamped)": 9.0},
     "verdict: not a clean fix, the run still goes non-finite (9 NaN/Inf); better: final lm_loss"),
    ({"final loss": float("inf"), "NaN/Inf (logged or clamped)": 21.0}, {"final loss": 1.0,
                                                                           "NaN/Inf (logged or clamped)": 0.0},
     "verdict: fixed, nothing got worse; better: final loss NaN -> 1; NaN/Inf (logged or clamped) 21 -> 0; "
     "worse: nothing"),
])
def test_the_verdict_says_what_improved_and_what_got_worse(before, after, start):
    from analyzer.trainer.reproduce import verdict

    assert verdict(before, after).startswith(start)


def test_a_fix_that_leaves_a_finding_is_called_partial():
    # factorized-embedding-stall: the scaled init clears 2 of 3 findings; loss-plateau stays
    from analyzer.trainer.reproduce import verdict

    line = verdict({"max grad norm": 15.5}, {"max grad norm": 8.8}, remaining=["loss-plateau"])
    assert line.startswith("verdict: partly fixed, nothing got worse but loss-plateau is still found; better:")


def test_before_after_table_shows_a_missing_number_as_a_dash():
    from analyzer.trainer.reproduce import before_after_table

    lines = before_after_table({"first non-finite step": 220.0, "final loss": 2.0}, {"final loss": 1.0})
    assert lines[1].split() == ["first", "non-finite", "step", "220", "-"]
    assert lines[2].split() == ["final", "loss", "2", "1", "better"]
