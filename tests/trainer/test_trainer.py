"""Tests of the reference trainer: config, models, determinism, checkpoints, fp16, NaN clamping, reproduce-run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from analyzer.errors import InputError
from analyzer.trainer import TrainConfig, load_scenario, train
from analyzer.trainer.config import ConfigError, config_from_dict, with_overrides
from analyzer.trainer.reproduce import fixes_to_overrides, reproduce_run
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


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    cfg = TrainConfig(model="kd", precision="fp16", grad_accum=2, **TINY)
    a, b = train(cfg, tmp_path / "a", quiet=True), train(cfg, tmp_path / "b", quiet=True)
    assert strip_timing(metrics(a)) == strip_timing(metrics(b))


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
