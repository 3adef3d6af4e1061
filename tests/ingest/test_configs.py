"""Config reader: which JSON/YAML files are hyperparameters, canonical names, and broken or hostile configs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from analyzer.ingest import configs
from analyzer.run import build_run

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
HF_HEALTHY = FRAMEWORKS / "hf_trainer_healthy"


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def read(root: Path, *paths: Path):
    return build_run(root, [configs.read(list(paths), root)])


def test_hf_model_config_from_the_trainer_fixture():
    if not (HF_HEALTHY / "config.json").is_file():
        pytest.fail("framework fixture missing (regenerate: tests/fixtures/frameworks/generate.py)")
    paths = sorted(p for p in HF_HEALTHY.rglob("*.json") if configs.sniff(p))
    assert {p.relative_to(HF_HEALTHY).as_posix() for p in paths} == {
        "config.json", "checkpoint-20/config.json", "checkpoint-40/config.json", "checkpoint-60/config.json"}
    run = read(HF_HEALTHY, *paths)
    assert run.hparam("vocab_size") == 64 and run.hparam("layer_norm_eps") == 1e-05
    assert run.hparam("block_size") == 32 and run.hparam("init_std") == 0.02  # n_positions, initializer_range
    assert run.hparams["vocab_size"].file == "config.json"  # the top-level copy wins


def test_files_that_are_not_hyperparameters_are_left_alone(tmp_path):
    for name in ("generation_config.json", "tokenizer_config.json", "all_results.json", "eval_results.json",
                 "trainer_state.json", "special_tokens_map.json", "vocab.json", "model.safetensors.index.json"):
        assert not configs.sniff(write(tmp_path, name, '{"temperature": 0.7, "lr": 0.1, "batch_size": 2}'))
    assert not configs.sniff(write(tmp_path, "config.json", "[1, 2, 3]"))
    assert not configs.sniff(write(tmp_path, "config.yaml", "- a\n- b\n"))
    assert not configs.sniff(write(tmp_path, "data.json", json.dumps({"rows": list(range(5000))})))
    assert not configs.sniff(write(tmp_path, "notes.json", '{"title": "x", "author": "y"}'))


def test_unnamed_small_file_with_known_settings_is_a_config(tmp_path):
    path = write(tmp_path, "experiment.json", '{"learning_rate": 3e-4, "warmup_steps": 100, "title": "x"}')
    assert configs.sniff(path)
    assert read(tmp_path, path).hparam("warmup_steps") == 100


def test_hf_training_args_json(tmp_path):
    path = write(tmp_path, "training_args.json", json.dumps({
        "learning_rate": 5e-05, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8,
        "max_grad_norm": 1.0, "warmup_ratio": 0.03, "logging_nan_inf_filter": True, "report_to": ["wandb"]}))
    assert configs.sniff(path)
    run = read(tmp_path, path)
    assert (run.hparam("lr"), run.hparam("batch_size"), run.hparam("grad_accum")) == (5e-05, 4, 8)
    assert run.hparam("logging_nan_inf_filter") is True and run.hparams["lr"].key == "learning_rate"


def test_a_null_does_not_hide_the_value_another_key_gives_the_same_setting(tmp_path):
    # HF 4.x TrainingArguments: per_device_train_batch_size, then the deprecated per_gpu_train_batch_size (null)
    path = write(tmp_path, "training_args.json",
                 '{"per_device_train_batch_size": 8, "per_gpu_train_batch_size": null, "max_grad_norm": null}')
    run = read(tmp_path, path)
    assert run.hparam("batch_size") == 8 and run.hparams["batch_size"].key == "per_device_train_batch_size"
    assert "max_grad_norm" in run.hparams and run.hparam("max_grad_norm") is None  # a null nothing else sets stays


def test_nested_yaml_and_deepspeed_config(tmp_path):
    yaml_path = write(tmp_path, "config.yaml", "model:\n  vocab_size: 50257\noptimizer:\n  lr: 6.0e-4\n"
                                               "  weight_decay: 1e-1\ntrainer:\n  gradient_clip_val: 1.0\n")
    ds = write(tmp_path, "ds_config.json", json.dumps({
        "train_batch_size": 256, "train_micro_batch_size_per_gpu": 8, "gradient_clipping": 1.0,
        "fp16": {"enabled": "auto", "initial_scale_power": 16}}))
    assert configs.sniff(yaml_path) and configs.sniff(ds)
    run = read(tmp_path, yaml_path, ds)
    assert run.hparam("lr") == 6.0e-4 and run.hparams["lr"].key == "optimizer.lr"
    assert run.hparam("weight_decay") == 0.1 and run.hparam("vocab_size") == 50257
    assert run.hparam("global_batch_size") == 256 and run.hparam("batch_size") == 8
    assert run.hparam("max_grad_norm") == 1.0 and run.hparam("enabled") == "auto"


def test_wandb_style_values_are_unwrapped_and_label_maps_skipped(tmp_path):
    path = write(tmp_path, "config.yaml", "lr:\n  desc: null\n  value: 0.001\n"
                                          "_wandb:\n  value:\n    cli_version: 0.16\n"
                                          "id2label:\n  0: cat\n  1: dog\n")
    run = read(tmp_path, path)
    assert run.hparam("lr") == 0.001 and "0" not in run.hparams


def test_broken_configs_are_notes_with_lines(tmp_path):
    bad_json = write(tmp_path, "config.json", '{\n  "lr": 0.1,\n  "batch_size": \n}')
    bad_yaml = write(tmp_path, "hparams.yaml", "lr: 0.1\nbatch: [1, 2\nother: 3\n")
    piece = configs.read([bad_json, bad_yaml], tmp_path)
    lines = {n.file: n.line for n in piece.notes}
    assert lines["config.json"] == 4 and lines["hparams.yaml"] is not None
    assert not piece.hparams


def test_yaml_alias_bomb_is_bounded(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} {{{', '.join(f'k{i}: *{p}' for i in range(9))}}}\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    path = write(tmp_path, "config.yaml", bomb)
    start = time.perf_counter()
    piece = configs.read([path], tmp_path)
    assert time.perf_counter() - start < 2 and len(piece.hparams) <= configs.MAX_HPARAMS


def test_python_object_tags_are_read_as_data(tmp_path):
    path = write(tmp_path, "config.yaml", "opt: !!python/object:argparse.Namespace {lr: 0.02, momentum: 0.9}\n"
                                          "run: !!python/object/apply:subprocess.call [[touch, pwned]]\n")
    run = read(tmp_path, path)
    assert run.hparam("lr") == 0.02 and not (tmp_path / "pwned").exists()


def test_deeply_nested_json_does_not_crash(tmp_path):
    path = write(tmp_path, "config.json", "[" * 100000 + "]" * 100000)
    piece = configs.read([path], tmp_path)
    assert not piece.hparams and piece.notes


def test_yaml_alias_bomb_of_mappings_without_leaves_is_bounded(tmp_path):
    bomb = "a: &a {}\n" + "".join(f"{c}: &{c} {{{', '.join(f'k{i}: *{p}' for i in range(9))}}}\n"
                                  for p, c in zip("abcdefghijk", "bcdefghijkl"))
    path = write(tmp_path, "config.yaml", bomb)
    start = time.perf_counter()
    configs.read([path], tmp_path)
    assert time.perf_counter() - start < 2
