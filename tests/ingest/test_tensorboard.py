"""TensorBoard reader: every point of real SummaryWriter/Lightning files, scalar tensors, restarts, damaged files."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from analyzer.ingest import tensorboard
from analyzer.run import build_run

try:
    from binary_writers import f_bytes, f_float, f_varint, tb_event, tb_file, tb_simple, tb_tensor, tf_record, varint
except ImportError:  # tests/ingest collected as a package
    from .binary_writers import f_bytes, f_float, f_varint, tb_event, tb_file, tb_simple, tb_tensor, tf_record, varint

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
SCALARS = FRAMEWORKS / "tensorboard_scalars"


def read_dir(root: Path):
    files = sorted(p for p in root.rglob("*") if p.is_file() and tensorboard.sniff(p))
    return tensorboard.read(files, root)


def write(tmp_path: Path, *events: bytes, name: str = "events.out.tfevents.1700000000.host.1.0") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tb_file(*events))
    return path


def points(piece) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for _, frame in piece.frames:
        for step, name, value in zip(frame["step"], frame["name"], frame["value"]):
            out.setdefault(name, []).append((int(step), float(value)))
    return out


# --- real files -------------------------------------------------------------------------------------------------------

def test_summarywriter_files_every_point_in_write_order():
    piece = read_dir(SCALARS)
    files = [file for file, _ in piece.frames]
    assert len(files) == 2 and files == sorted(files, key=lambda f: int(f.split(".")[3]))
    first, second = (frame for _, frame in piece.frames)
    assert (first["name"] == "train/loss").sum() == 300 and (second["name"] == "train/loss").sum() == 151
    assert sorted(first.loc[first["name"] == "eval/loss", "step"]) == [50, 100, 150, 200, 250, 300]
    assert "weights/hist" not in set(first["name"])  # histograms are skipped


def test_add_scalars_folders_name_their_series():
    # SummaryWriter.add_scalars("Loss", {"train": ..., "val": ...}) writes both under the tag Loss, each key in a
    # folder of its own: Loss_train/ and Loss_val/
    run = build_run(FRAMEWORKS, [read_dir(FRAMEWORKS / "tensorboard_add_scalars")])
    assert run.metrics == ("eval_loss", "loss", "lr", "wall_time")
    assert len(run.series("loss")) == 60 and list(run.series("eval_loss").index) == [10, 20, 30, 40, 50, 60]
    assert not run.events_of("restart")


@pytest.mark.parametrize("folder, tag, name", [
    ("Loss_val", "Loss", "Loss/val"), ("losses_val_loss", "losses", "val_loss"),  # a key that is a metric name
    ("lr_group0", "lr", "lr/group0"), ("Loss_val", "Loss/val", "Loss/val"),  # "/" in the tag is "_" in the folder
    ("seed_3", "loss", "loss"),  # a folder that is not the tag's
])
def test_add_scalars_key_from_the_folder_name(tmp_path, folder, tag, name):
    write(tmp_path, tb_event(1, tb_simple(tag, 1.0)), name=f"{folder}/events.out.tfevents.1.h.1.0")
    assert list(points(read_dir(tmp_path))) == [name]


def _launch(tmp_path: Path, folder: str, started: int, steps) -> None:
    write(tmp_path, *(tb_event(s, tb_simple("Loss/train", 10.0 - s / 100)) for s in steps),
          name=f"{folder}/events.out.tfevents.{started}.host.1.0")


def test_separate_runs_in_one_dir_only_the_newest_is_read(tmp_path):
    # SummaryWriter() opens runs/<date>_<host>/ per launch; the second launch crashed at step 49. Merged, its 0-49
    # would have been followed by the first launch's 50-99: a series of neither run
    _launch(tmp_path, "runs/Nov22_04-00-00_host", 1700000000, range(100))
    _launch(tmp_path, "runs/Nov22_05-00-00_host", 1700003600, range(50))
    piece = read_dir(tmp_path)
    assert [file.split("/")[1] for file, _ in piece.frames] == ["Nov22_05-00-00_host"]
    assert [(n.file, n.message) for n in piece.notes] == [(
        "runs/Nov22_05-00-00_host",
        "2 TensorBoard runs found; only the most recent was read, not runs/Nov22_04-00-00_host")]


def test_a_later_folder_that_starts_later_resumes_the_run(tmp_path):
    # HF Trainer resumed from checkpoint-500 logs into a new runs/<date>_<host>/
    _launch(tmp_path, "runs/Nov22_04-00-00_host", 1700000000, range(10, 510, 10))
    _launch(tmp_path, "runs/Nov22_05-00-00_host", 1700003600, range(510, 1010, 10))
    piece = read_dir(tmp_path)
    assert len(piece.frames) == 2 and not piece.notes


def test_resumed_lightning_versions_and_split_folders_are_one_run(tmp_path):
    _launch(tmp_path, "lightning_logs/version_0", 1700000000, range(100))
    _launch(tmp_path, "lightning_logs/version_1", 1700003600, range(50, 150))  # resumed from step 50
    _launch(tmp_path, "keras/train", 1700000000, range(10))
    _launch(tmp_path, "keras/validation", 1700000001, range(10))
    assert len(read_dir(tmp_path / "lightning_logs").frames) == 2
    piece = read_dir(tmp_path / "keras")
    assert len(piece.frames) == 2 and not piece.notes


def test_summarywriter_nonfinite_values_kept():
    found = points(read_dir(SCALARS))
    assert math.isnan(dict(found["train/loss"])[137])
    assert [v for s, v in found["train/grad_norm"] if s == 211] == [math.inf, math.inf]


def test_new_style_tensor_scalars_float_and_double():
    found = points(read_dir(SCALARS))
    assert len(found["perf/steps_per_s"]) == 451 and dict(found["perf/steps_per_s"])[3] == 20.75
    assert {v for _, v in found["train/loss_scale"]} == {65536.0}


def test_restart_keeps_both_segments_and_the_newest_wins():
    piece = read_dir(SCALARS)
    run = build_run(SCALARS, [piece])
    assert [e.step for e in run.events_of("restart")] == [200]  # one resume, one restart
    second = piece.frames[1][1]
    newest = second[(second["name"] == "train/loss") & (second["step"] == 250)]["value"].item()
    assert run.series("loss")[250] == newest
    assert len(run.scalars[run.scalars["metric"] == "loss"]) == 451


def test_truncated_last_record_is_a_note_and_the_rest_is_read():
    root = FRAMEWORKS / "tensorboard_truncated"
    piece = read_dir(root)
    found = points(piece)
    assert (len(found["train/loss"]), len(found["train/lr"]), len(found["train/grad_norm"])) == (40, 40, 39)
    (note,) = piece.notes
    assert "cut short" in note.message and note.line == 121


def test_line_is_the_record_number():
    frame = read_dir(FRAMEWORKS / "tensorboard_truncated").frames[0][1]
    assert frame["line"].iloc[0] == 2  # record 1 is the file_version event
    assert frame["line"].is_monotonic_increasing


def test_lightning_tensorboard_hparams_and_scalars():
    root = FRAMEWORKS / "lightning_tb"
    piece = read_dir(root)
    hparams = {name: value for name, value, _, _ in piece.hparams}
    assert hparams["lr"] == 0.05 and hparams["batch_size"] == 8 and hparams["optimizer"] == "SGD"
    names = set(piece.frames[0][1]["name"])
    assert {"train_loss_step", "val_loss", "lr-SGD", "epoch"} <= names
    assert not any(n.startswith("_hparams_") for n in names)


# --- crafted files ----------------------------------------------------------------------------------------------------

def test_more_than_ten_thousand_points_are_all_kept(tmp_path):
    write(tmp_path, *(tb_event(s, tb_simple("loss", 1.0 / (s + 1))) for s in range(12_000)))
    frame = read_dir(tmp_path).frames[0][1]
    assert len(frame) == 12_000 and frame["step"].tolist() == list(range(12_000))


@pytest.mark.parametrize("dtype, content, typed, expected", [
    (1, struct.pack("<f", 1.5), b"", 1.5),  # DT_FLOAT in tensor_content
    (2, b"", f_bytes(6, struct.pack("<d", 0.1)), 0.1),  # DT_DOUBLE packed double_val
    (1, b"", f_float(5, 2.5), 2.5),  # DT_FLOAT float_val, unpacked encoding
    (19, b"", f_bytes(13, varint(0x3E00)), 1.5),  # DT_HALF half_val: packed int32 bit patterns
    (14, b"", f_bytes(13, varint(0x7FC0)), math.nan),  # DT_BFLOAT16 NaN bits
    (9, b"", f_bytes(10, varint(123)), 123.0),  # DT_INT64 int64_val
    (14, struct.pack("<H", 0x3FC0), b"", 1.5),  # DT_BFLOAT16 in tensor_content
    (3, struct.pack("<i", -7), b"", -7.0),  # DT_INT32 in tensor_content
    (1, b"", b"", 0.0),  # proto3 omits an all-default value
])
def test_scalar_tensor_dtypes(tmp_path, dtype, content, typed, expected):
    write(tmp_path, tb_event(5, tb_tensor("x", dtype, content=content, typed=typed)))
    ((step, value),) = points(read_dir(tmp_path))["x"]
    assert step == 5 and (value == expected or (math.isnan(expected) and math.isnan(value)))


def test_non_scalar_and_string_tensors_are_skipped(tmp_path):
    write(tmp_path,
          tb_event(1, tb_tensor("vec", 1, content=struct.pack("<3f", 1, 2, 3), dims=(3,))),
          tb_event(1, tb_tensor("text", 7, typed=f_bytes(8, "hello"), plugin="text")),
          tb_event(1, tb_tensor("hist", 2, content=struct.pack("<d", 1.0), plugin="histograms")),
          tb_event(1, tb_tensor("one", 1, content=struct.pack("<f", 4.0), dims=(1, 1))))
    assert set(points(read_dir(tmp_path))) == {"one"}


def test_plugin_metadata_only_on_the_first_value_of_a_tag(tmp_path):
    write(tmp_path, tb_event(1, tb_tensor("h", 2, content=struct.pack("<d", 1.0), plugin="histograms")),
          tb_event(2, tb_tensor("h", 2, content=struct.pack("<d", 1.0), plugin=None)))
    assert points(read_dir(tmp_path)) == {}


def test_negative_and_large_steps(tmp_path):
    write(tmp_path, tb_event(-1, tb_simple("a", 1.0)), tb_event(2**40, tb_simple("a", 2.0)))
    assert points(read_dir(tmp_path))["a"] == [(-1, 1.0), (2**40, 2.0)]


def test_bad_length_checksum_mid_file_stops_reading_with_a_note(tmp_path):
    records = [tf_record(tb_event(s, tb_simple("loss", float(s)))) for s in range(5)]
    bad = bytearray(records[2])
    bad[8] ^= 0xFF  # the stored length checksum
    (tmp_path / "events.out.tfevents.1.h").write_bytes(b"".join(records[:2]) + bytes(bad) + b"".join(records[3:]))
    piece = read_dir(tmp_path)
    assert points(piece)["loss"] == [(0, 0.0), (1, 1.0)]
    (note,) = piece.notes
    assert note.line == 3 and "stopped" in note.message


def test_bad_payload_checksum_skips_that_record(tmp_path):
    records = [tf_record(tb_event(s, tb_simple("loss", float(s)))) for s in range(5)]
    bad = bytearray(records[2])
    bad[-1] ^= 0xFF  # the stored payload checksum
    (tmp_path / "events.out.tfevents.1.h").write_bytes(b"".join(records[:2]) + bytes(bad) + b"".join(records[3:]))
    piece = read_dir(tmp_path)
    assert [s for s, _ in points(piece)["loss"]] == [0, 1, 3, 4]
    (note,) = piece.notes
    assert note.line == 3 and "checksum" in note.message


def test_garbage_after_the_last_record_is_noted(tmp_path):
    path = write(tmp_path, tb_event(1, tb_simple("a", 1.0)))
    path.write_bytes(path.read_bytes() + b"\xff" * 40)
    piece = read_dir(tmp_path)
    assert points(piece)["a"] == [(1, 1.0)] and "not a valid record" in piece.notes[0].message


def test_event_that_is_not_protobuf_is_skipped_with_a_note(tmp_path):
    (tmp_path / "events.out.tfevents.1.h").write_bytes(tf_record(b"\xff\xff\xff") + tf_record(
        tb_event(3, tb_simple("a", 1.0))))
    piece = read_dir(tmp_path)
    assert points(piece)["a"] == [(3, 1.0)] and piece.notes[0].count == 1


def test_empty_event_file(tmp_path):
    (tmp_path / "events.out.tfevents.1.h").write_bytes(b"")
    piece = read_dir(tmp_path)
    assert piece.frames == [] and piece.notes == []


def test_validation_folder_is_the_eval_split(tmp_path):
    write(tmp_path / "train", tb_event(1, tb_simple("epoch_loss", 2.0)))
    write(tmp_path / "validation", tb_event(1, tb_simple("epoch_loss", 3.0)), name="events.out.tfevents.2.h")
    run = build_run(tmp_path, [read_dir(tmp_path)])
    assert run.series("epoch_loss")[1] == 2.0 and run.series("eval_epoch_loss")[1] == 3.0


def test_files_are_read_in_start_time_order_not_name_order(tmp_path):
    write(tmp_path, tb_event(5, tb_simple("a", 2.0)), name="events.out.tfevents.1700000100.h.1.0")
    write(tmp_path, tb_event(1, tb_simple("a", 1.0)), name="events.out.tfevents.999999999.h.1.0")
    assert [f for f, _ in read_dir(tmp_path).frames][0].endswith("999999999.h.1.0")


def test_hparams_plugin_values(tmp_path):
    # SessionStartInfo.hparams map entries {key=1, value=2: google.protobuf.Value{number=2 | string=3 | bool=4}}
    entries = (f_bytes(1, f_bytes(1, "lr") + f_bytes(2, b"\x11" + struct.pack("<d", 0.001)))
               + f_bytes(1, f_bytes(1, "optim") + f_bytes(2, f_bytes(3, "adam")))
               + f_bytes(1, f_bytes(1, "amp") + f_bytes(2, f_varint(4, 1))))
    content = f_varint(1, 0) + f_bytes(3, entries)
    value = f_bytes(1, "_hparams_/session_start_info") + f_bytes(9, f_bytes(1, f_bytes(1, "hparams") + f_bytes(
        2, content)))
    write(tmp_path, tb_event(0, value))
    piece = read_dir(tmp_path)
    assert {n: v for n, v, _, _ in piece.hparams} == {"lr": 0.001, "optimizer": "adam", "amp": True}
    assert piece.frames == []


def test_sniff_by_name():
    assert tensorboard.sniff(Path("events.out.tfevents.1700000000.host.123.0"))
    assert not tensorboard.sniff(Path("events.jsonl"))


def test_read_speed_is_reasonable(tmp_path):
    write(tmp_path, *(tb_event(s, tb_simple("loss", 1.0), tb_simple("lr", 0.1)) for s in range(20_000)))
    import time

    start = time.perf_counter()
    frame = read_dir(tmp_path).frames[0][1]
    assert len(frame) == 40_000 and np.isfinite(frame["value"]).all()
    assert time.perf_counter() - start < 2.0


# --- the clock: every Event's wall_time, kept as `wall_time` from the training loss's events ------------------------

def test_real_files_keep_the_loss_events_wall_time_per_segment():
    piece = read_dir(SCALARS)
    assert [len(frame) for _, frame in piece.clocks] == [300, 151]  # train/loss events of each file
    from analyzer.detectors.stats import segment_series

    run = build_run(SCALARS, [piece])
    first, second = segment_series(run, "wall_time")
    assert (first.index[0], first.index[-1], second.index[0], second.index[-1]) == (1, 300, 200, 350)
    assert first.is_monotonic_increasing and second.iloc[0] > first.iloc[-1] + 1.0  # the restart slept 1.1 s
    assert run.series("wall_time").dtype == "float64" and 1.79e9 < run.series("wall_time").iloc[0] < 1.8e9
    assert run.point("wall_time", 250) == run.point("loss", 250)


def test_clock_is_the_training_loss_s_wall_time_not_eval_s(tmp_path):
    write(tmp_path, tb_event(1, tb_simple("train/loss", 2.0), wall_time=1.7e9),
          tb_event(1, tb_simple("eval/loss", 2.1), wall_time=1.7e9 + 50),
          tb_event(2, tb_simple("train/loss", 1.9), wall_time=1.7e9 + 0.5))
    run = build_run(tmp_path, [read_dir(tmp_path)])
    assert run.series("wall_time").to_dict() == {1: 1.7e9, 2: 1.7e9 + 0.5}


def test_without_a_loss_the_most_logged_training_tag_times_the_loop(tmp_path):
    write(tmp_path, *(tb_event(s, tb_simple("acc", 0.5), wall_time=1.7e9 + s) for s in range(3)),
          tb_event(2, tb_simple("lr", 0.1), wall_time=1.7e9 + 10))
    assert build_run(tmp_path, [read_dir(tmp_path)]).series("wall_time").tolist() == [1.7e9, 1.7e9 + 1, 1.7e9 + 2]


def test_events_without_a_wall_time_give_no_clock(tmp_path):
    write(tmp_path, tb_event(1, tb_simple("loss", 1.0), wall_time=0.0), tb_event(2, tb_simple("loss", 0.9),
                                                                                 wall_time=0.0))
    piece = read_dir(tmp_path)
    assert piece.clocks == [] and set(points(piece)) == {"loss"}


def test_hf_trainers_tensorboard_copy_beside_trainer_state_is_read_once(tmp_path):
    """HF Trainer's default report_to includes tensorboard: runs/<date>/events.* repeat log_history's train/loss,
    learning_rate and grad_norm (as float32). Read once, that is no restart and no doubled point."""
    import json
    import shutil

    from analyzer.ingest import read_run

    run_dir = tmp_path / "out"
    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "frameworks" / "hf_trainer_healthy", run_dir)
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    events = [tb_event(row["step"], *(tb_simple(f"train/{k}", float(row[k])) for k in ("loss", "learning_rate",
                                                                                    "grad_norm")),
                       wall_time=1.7e9 + row["step"])
              for row in history if "loss" in row]
    (run_dir / "runs" / "Nov22_01-00-00_host").mkdir(parents=True)
    (run_dir / "runs" / "Nov22_01-00-00_host" / "events.out.tfevents.1700000000.host.1.0").write_bytes(
        tb_file(*events))
    run = read_run(run_dir)
    assert "tensorboard" in run.formats and not run.events_of("restart")
    assert len(run.series("loss")) == len(events)
    assert all(run.sources[s].endswith("trainer_state.json")
               for s in run.scalars[run.scalars["metric"] == "loss"]["source"])
    assert sum("point(s) repeat" in n.message and n.file.startswith("runs/") for n in run.notes) == 3


def test_ray_tunes_tensorboard_copy_of_result_json_is_read_once(tmp_path):
    """Ray Tune's TBX logger writes each result as ray/tune/<key> at global step training_iteration."""
    import json

    from analyzer.ingest import read_run
    from tests.ingest.test_tabular import ray_tune_trial

    trial = ray_tune_trial(tmp_path / "trial")
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    events = [tb_event(r["training_iteration"], tb_simple("ray/tune/loss", r["loss"]),
                       tb_simple("ray/tune/accuracy", r["accuracy"]), wall_time=float(r["timestamp"])) for r in rows]
    (trial / "events.out.tfevents.1732240000.node1").write_bytes(tb_file(*events))
    run = read_run(trial)
    assert not run.events_of("restart") and len(run.series("loss")) == len(rows)
    assert {"loss", "accuracy"} <= set(run.metrics) and not any(m.startswith("ray/") for m in run.metrics)


# --- HF Trainer's TensorBoardCallback ---------------------------------------------------------------------------------

def test_a_users_own_train_loss_tag_is_a_metric(tmp_path):
    # only HF's end-of-run summary (recognised by train/train_runtime at its step) is run facts
    write(tmp_path, tb_event(10, tb_simple("train/train_loss", 2.0)), tb_event(20, tb_simple("train/train_loss", 1.5)))
    piece = read_dir(tmp_path)
    assert points(piece)["train/train_loss"] == [(10, 2.0), (20, 1.5)] and piece.hparams == []


def hf_log(step: int, **values: float) -> bytes:
    """One HF Trainer log as its TensorBoardCallback writes it: non-eval keys prefixed train/, the epoch included."""
    return tb_event(step, *(tb_simple(f"train/{key}", value) for key, value in values.items()))


def test_hf_end_of_run_summary_is_hparams_not_points(tmp_path):
    write(tmp_path, hf_log(20, loss=1.5, epoch=1.0), hf_log(20, train_runtime=9.0, train_loss=2.5, epoch=1.0))
    piece = read_dir(tmp_path)
    assert points(piece) == {"train/loss": [(20, 1.5)], "train/epoch": [(20, 1.0), (20, 1.0)]}
    assert {n: v for n, v, _, _ in piece.hparams} == {"train_runtime": 9.0, "train_loss": 2.5}


def test_hf_end_of_run_summary_is_noted(tmp_path):
    write(tmp_path, hf_log(20, loss=1.5, epoch=1.0), hf_log(20, train_runtime=9.0, train_loss=2.5, epoch=1.0))
    (note,) = read_dir(tmp_path).notes
    assert "end-of-run summary at step 20" in note.message and note.line == 3 and note.count == 2  # record 1: version


def test_a_summary_like_tag_in_a_file_hf_did_not_write_is_a_metric(tmp_path):
    # a plain SummaryWriter logging its own train/train_runtime and train/train_loss: no HF epoch/args, no summary
    write(tmp_path, tb_event(20, tb_simple("train/train_runtime", 9.0), tb_simple("train/train_loss", 2.5)))
    piece = read_dir(tmp_path)
    assert points(piece) == {"train/train_runtime": [(20, 9.0)], "train/train_loss": [(20, 2.5)]}
    assert piece.hparams == [] and piece.notes == []


def hf_text(tag: str, text) -> bytes:
    return tb_tensor(tag, 7, typed=f_bytes(8, text), plugin="text")


@pytest.mark.parametrize("text, expected", [
    ('{"learning_rate": 0.001, "gradient_accumulation_steps": 4}', {"lr": 0.001, "grad_accum": 4}),
    ("not json {", {}),
    ('["a list"]', {}),
    (b"\xff\xfe", {}),
    ('{"a": ' * 5000 + "1" + "}" * 5000, {}),  # nested past Python's recursion limit
], ids=["json-object", "not-json", "json-list", "not-utf8", "nested-too-deep"])
def test_hf_training_arguments_text_is_parsed_as_json_only(tmp_path, text, expected):
    write(tmp_path, tb_event(0, hf_text("args/text_summary", text)))
    assert {n: v for n, v, _, _ in read_dir(tmp_path).hparams} == expected


def test_hf_text_that_is_not_a_json_object_is_noted(tmp_path):
    write(tmp_path, tb_event(0, hf_text("args/text_summary", "__import__('os')")))
    (note,) = read_dir(tmp_path).notes
    assert "args/text_summary (record 2) is not a JSON object" in note.message and note.line == 2


def test_hf_model_config_text_is_hparams_and_the_training_arguments_win_a_shared_name(tmp_path):
    write(tmp_path, tb_event(0, hf_text("args/text_summary", '{"seed": 1}')),
          tb_event(0, hf_text("model_config/text_summary", '{"vocab_size": 128, "seed": 7}')))
    run = build_run(tmp_path, [read_dir(tmp_path)])
    assert run.hparam("vocab_size") == 128 and run.hparam("seed") == 1
    assert run.hparams["vocab_size"].key == "model_config/text_summary[record 3].vocab_size"
