"""The Run model: canonical names, restarts and segments, hparams with provenance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analyzer.run import Ingested, build_run, canonical_hparam, canonical_metric
from tests.conftest import make_run


@pytest.mark.parametrize("logged, expected", [
    ("loss", ("loss", "train")),
    ("train/loss", ("loss", "train")),
    ("train_loss_step", ("loss", "train")),
    ("train_loss_epoch", ("loss_epoch", "train")),
    ("eval_loss", ("eval_loss", "eval")),
    ("val_loss", ("eval_loss", "eval")),
    ("valid/ppl", ("eval_ppl", "eval")),
    ("eval_accuracy", ("eval_accuracy", "eval")),
    ("learning_rate", ("lr", "train")),
    ("lr-AdamW", ("lr", "train")),
    ("Grad Norm", ("grad_norm", "train")),
    ("gnorm", ("grad_norm", "train")),
    ("tok/sec", ("tokens_per_s", "train")),
    ("rewards/mean", ("rewards/mean", "train")),
])
def test_canonical_metric(logged, expected):
    assert canonical_metric(logged) == expected


@pytest.mark.parametrize("key, expected", [
    ("learning_rate", "lr"), ("optimizer.lr", "lr"), ("per_device_train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"), ("warmup_steps_proportion", "warmup_ratio"),
    ("layer_norm_epsilon", "layer_norm_eps"), ("something_else", "something_else"),
])
def test_canonical_hparam(key, expected):
    assert canonical_hparam(key) == expected


def test_restart_keeps_newest_segment_and_both_stay_available():
    run = make_run({"loss": ([0, 1, 2, 3, 2, 3, 4], [5.0, 4.0, 3.0, 9.0, 3.1, 2.9, 2.8])})
    assert run.series("loss").to_dict() == {0: 5.0, 1: 4.0, 2: 3.1, 3: 2.9, 4: 2.8}
    assert len(run.scalars) == 7 and sorted(run.scalars["segment"].unique()) == [0, 1]
    (restart,) = run.events_of("restart")
    assert restart.step == 2 and restart.line == 5


def test_nonfinite_values_are_kept():
    run = make_run({"loss": [3.0, float("nan"), float("inf"), 2.0]})
    values = run.series("loss").to_numpy()
    assert np.isnan(values[1]) and math.isinf(values[2])


def test_eval_split_from_reader_renames_metric():
    piece = Ingested("t")
    piece.add_frame("m.jsonl", pd.DataFrame({"step": [10, 10], "name": ["loss", "ppl"], "value": [2.0, 7.4],
                                            "split": ["eval", "eval"], "line": [1, 1]}))
    run = build_run("/x", [piece])
    assert set(run.metrics) == {"eval_loss", "eval_ppl"}
    assert set(run.scalars["split"]) == {"eval"}


def test_hparams_keep_their_source_and_later_readers_win():
    first, second = Ingested("a"), Ingested("b")
    first.add_hparams({"learning_rate": 1e-4}, "config.json")
    second.add_hparams({"optimizer": {"lr": 2e-4}}, "checkpoints/step_000400.pt")
    run = build_run("/x", [first, second])
    assert run.hparam("lr") == 2e-4
    assert run.hparams["lr"].file == "checkpoints/step_000400.pt" and run.hparams["lr"].key == "optimizer.lr"


def test_point_cites_file_and_line():
    run = make_run({"loss": [3.0, 2.0, 1.0]}, file="metrics.jsonl")
    assert run.point("loss", 2) == ("metrics.jsonl", 3)
    assert run.point("loss", 99) is None


def test_ranks_are_separate_series():
    piece = Ingested("t")
    piece.add_frame("m.jsonl", pd.DataFrame({"step": [0, 1, 0, 1], "name": "loss", "value": [1.0, 2.0, 3.0, 4.0],
                                            "rank": [0, 0, 1, 1], "line": [1, 2, 3, 4]}))
    run = build_run("/x", [piece])
    assert run.series("loss").tolist() == [1.0, 2.0]
    assert run.series("loss", rank=1).tolist() == [3.0, 4.0]
    assert not run.events_of("restart")
