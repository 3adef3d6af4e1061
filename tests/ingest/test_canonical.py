"""The reference trainer's run dir: metrics.jsonl (+ per-rank files), config.json, run.json; sample runs if present."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analyzer.ingest import canonical, read_run
from tests.conftest import SAMPLE_RUNS

KD_RUN = SAMPLE_RUNS / "kd-temperature-blowup"


def make_dir(tmp_path: Path, metrics: str, config: dict | None = None, run: dict | None = None,
             **extra: str) -> Path:
    root = tmp_path / "run"
    root.mkdir()
    (root / "metrics.jsonl").write_text(metrics)
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))
    if run is not None:
        (root / "run.json").write_text(json.dumps(run))
    for name, text in extra.items():
        (root / name.replace("__", ".")).write_text(text)
    return root


def test_design_format_run_dir(tmp_path):
    root = make_dir(
        tmp_path,
        '{"step": 0, "split": "train", "loss": 5.5, "lr": 1e-4, "grad_norm": 0.3}\n'
        '{"step": 0, "split": "eval", "loss": 5.6, "ppl": 270.4}\n'
        '{"step": 1, "split": "train", "loss": NaN, "lr": 1e-4, "grad_norm": Infinity}\n',
        config={"lr": 1e-4, "batch_size": 16, "grad_accum": 2, "betas": [0.9, 0.999], "seed": 1},
        run={"status": "diverged", "seed": 7, "command": "python -m analyzer.trainer", "versions": {"torch": "2"}},
        train__log="step 0: loss 5.5\n")
    run = read_run(root)
    assert "postmortem-run" in run.formats and run.status == "diverged"
    assert run.series("loss")[0] == 5.5 and math.isnan(run.series("loss")[1])
    assert run.series("grad_norm")[1] == math.inf
    assert run.series("eval_loss").to_dict() == {0: 5.6} and run.series("eval_ppl")[0] == 270.4
    assert run.hparam("lr") == 1e-4 and run.hparam("grad_accum") == 2 and run.hparam("betas") == [0.9, 0.999]
    assert run.hparams["seed"].value == 7 and run.hparams["seed"].file == "run.json"
    assert "command" not in run.hparams and "torch" not in run.hparams  # provenance, not hyperparameters
    assert run.point("loss", 1) == ("metrics.jsonl", 3)


def test_rank_files_are_separate_series(tmp_path):
    root = make_dir(tmp_path, '{"step": 0, "split": "train", "loss": 3.0}\n', config={"world_size": 2},
                    run={"status": "completed"}, metrics__rank1__jsonl='{"step": 0, "split": "train", "loss": 3.2}\n')
    run = read_run(root)
    assert run.series("loss", rank=0).tolist() == [3.0] and run.series("loss", rank=1).tolist() == [3.2]
    assert "metrics.rank1.jsonl" in run.sources


def test_sniff_needs_a_run_json_or_config_beside_metrics(tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    assert not canonical.sniff(alone / "metrics.jsonl")  # a generic JSONL file: the table reader takes it
    root = make_dir(tmp_path, '{"step": 0, "loss": 1.0}\n', config={"lr": 0.1}, train__log="x\n")
    assert canonical.sniff(root / "metrics.jsonl") and canonical.sniff(root / "config.json")
    assert not canonical.sniff(root / "train.log")  # the text-log reader's


def test_broken_config_is_a_note_and_metrics_still_count(tmp_path):
    root = make_dir(tmp_path, '{"step": 0, "loss": 1.0}\n', run={"status": "crashed"})
    (root / "config.json").write_text('{"lr": 0.1,\n "batch_size": }')
    run = read_run(root)
    assert run.series("loss").tolist() == [1.0] and run.status == "crashed"
    assert any(n.file == "config.json" and n.line == 2 for n in run.notes)


def test_truncated_metrics_line_of_a_killed_run(tmp_path):
    root = make_dir(tmp_path, '{"step": 0, "loss": 2.0}\n{"step": 1, "loss": 1.9}\n{"step": 2, "lo',
                    config={"lr": 0.1})
    run = read_run(root)
    assert run.series("loss").to_dict() == {0: 2.0, 1: 1.9}
    assert any(n.line == 3 and "cut short" in n.message for n in run.notes)


@pytest.mark.skipif(not (KD_RUN / "run.json").is_file(), reason="sample runs not generated")
def test_reference_trainer_sample_run():
    run = read_run(KD_RUN, scan_checkpoints=False)
    assert run.formats[0] == "postmortem-run" and run.status in ("completed", "diverged", "crashed")
    config = json.loads((KD_RUN / "config.json").read_text())
    assert run.hparam("lr") == config["lr"] and run.hparam("temperature") == config["temperature"]
    assert run.hparams["seed"].value == json.loads((KD_RUN / "run.json").read_text())["seed"]
    first = json.loads((KD_RUN / "metrics.jsonl").read_text().splitlines()[1])
    assert run.series("kd_raw")[first["step"]] == first["kd_raw"]
    assert {"loss", "kd_loss", "kd_raw", "temperature", "eval_loss"} <= set(run.metrics)
    assert "metrics.jsonl" in run.sources and not canonical.sniff(KD_RUN / "train.log")
    assert not any(src.startswith("checkpoints/") for src in run.sources)
