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
    ("ray/tune/loss", ("loss", "train")),
    ("ray/tune/val_loss", ("eval_loss", "eval")),
    # the split after the name: torch.utils.tensorboard's example tags, hand-written loops, OpenNMT-py
    ("Loss/train", ("loss", "train")), ("Loss/val", ("eval_loss", "eval")), ("Accuracy/valid", ("eval_accuracy", "eval")),
    ("loss_train", ("loss", "train")), ("loss_val", ("eval_loss", "eval")), ("perplexity/val", ("eval_ppl", "eval")),
    ("xent", ("loss", "train")),
    ("num_val", ("num_val", "train")),  # `_val` after an unknown name is part of the name
    ("Loss/test", ("loss/test", "train")),  # a test split is neither (logged once, at the end)
    ("loss_val_epoch", ("loss_val_epoch", "train")),
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


def _two_files(first: dict, second: dict, second_format: str = "tensorboard"):
    """A run read from two files: `first` by one reader, `second` by another; each {name: (steps, values)}."""
    from pathlib import Path

    pieces = []
    for fmt, file, series in (("hf-trainer", "trainer_state.json", first), (second_format, "runs/events", second)):
        piece = Ingested(fmt)
        for name, (steps, values) in series.items():
            piece.add_frame(file, pd.DataFrame({"step": steps, "name": name, "value": values,
                                                "line": range(1, len(steps) + 1)}))
        pieces.append(piece)
    return build_run(Path("/r"), pieces)


def test_a_second_file_repeating_a_series_is_read_once_and_is_no_restart():
    loss = [2.5, 2.25, float("nan"), 1.9]
    tb_loss = np.array(loss, dtype=np.float32).astype(float)  # TensorBoard keeps float32
    run = _two_files({"loss": ([5, 10, 15, 20], loss)}, {"train/loss": ([5, 10, 15, 20], tb_loss)})
    assert not run.events_of("restart")
    assert run.series("loss").index.tolist() == [5, 10, 15, 20] and len(run.scalars) == 4
    assert set(run.scalars["source"]) == {0}  # cited from the file read first
    (note,) = run.notes
    assert note.file == "runs/events" and "4 loss point(s) repeat trainer_state.json" in note.message


def test_a_second_file_with_other_values_or_steps_is_data_of_its_own():
    loss = ([5, 10, 15], [2.5, 2.25, 2.0])
    other_value = _two_files({"loss": loss}, {"loss": ([5, 10, 15], [2.5, 2.26, 2.0])})
    assert len(other_value.scalars) == 6 and other_value.events_of("restart")  # as before: a second segment
    same_format = _two_files({"loss": loss}, {"loss": ([5, 10, 15, 20], [2.5, 2.25, 2.0, 1.9])}, "hf-trainer")
    assert len(same_format.scalars) == 7 and not same_format.notes  # one format twice: a resume, kept whole
    other_metric = _two_files({"loss": loss}, {"lr": ([5, 10, 15], [2.5, 2.25, 2.0])})
    assert len(other_metric.scalars) == 6 and not other_metric.notes


def test_a_file_of_another_format_that_goes_on_past_the_first_adds_only_its_new_points():
    # HF's TensorBoard file runs on past the last checkpoint's trainer_state.json: same points, then more
    run = _two_files({"loss": ([5, 10, 15], [2.5, 2.25, 2.0])}, {"loss": ([5, 10, 15, 20], [2.5, 2.25, 2.0, 1.9])})
    assert run.series("loss").to_dict() == {5: 2.5, 10: 2.25, 15: 2.0, 20: 1.9} and not run.events_of("restart")
    assert [run.point("loss", step)[0] for step in (5, 20)] == ["trainer_state.json", "runs/events"]
    (note,) = run.notes
    assert "3 of its 4 loss points repeat trainer_state.json" in note.message


def test_a_binary_file_read_first_yields_its_points_to_a_text_file_that_repeats_them():
    pieces = []
    for fmt, file, binary in (("tensorboard", "runs/events", True), ("table", "metrics.csv", False)):
        piece = Ingested(fmt, lines_are_records=binary)
        piece.add_frame(file, pd.DataFrame({"step": [5, 10], "name": "loss", "value": [2.5, 2.25], "line": [4, 8]}))
        pieces.append(piece)
    run = build_run("/r", pieces)
    assert run.point("loss", 10) == ("metrics.csv", 8) and len(run.scalars) == 2
