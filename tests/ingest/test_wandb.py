"""W&B reader: offline runs by wandb 0.31 (Go core) and 0.16 (legacy), crafted record files, files/ fallbacks."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analyzer.ingest import textlog, wandb
from analyzer.run import Event, Ingested, build_run

try:
    from binary_writers import (
        f_bytes, f_double, f_varint, wandb_config, wandb_history, wandb_log, wandb_output, wandb_run_config,
    )
except ImportError:  # tests/ingest collected as a package
    from .binary_writers import (
        f_bytes, f_double, f_varint, wandb_config, wandb_history, wandb_log, wandb_output, wandb_run_config,
    )

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
OFFLINE = FRAMEWORKS / "wandb_offline"
LEGACY = FRAMEWORKS / "wandb_offline_legacy"


def read_dir(root: Path):
    files = sorted(p for p in root.rglob("*") if p.is_file() and wandb.sniff(p))
    return wandb.read(files, root)


def run_of(root: Path):
    return build_run(root, [read_dir(root)])


def write_run(root: Path, *records: bytes, folder: str = "offline-run-20260101_120000-abc123",
              data: bytes | None = None) -> Path:
    path = root / "wandb" / folder / f"run-{folder.rsplit('-', 1)[1]}.wandb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else wandb_log(*records))
    return path


# --- real offline runs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("root", [OFFLINE, LEGACY], ids=["wandb-0.31", "wandb-0.16"])
def test_real_offline_run_history(root):
    run = run_of(root)
    assert set(run.metrics) == {"loss", "lr", "grad_norm", "eval_loss", "wall_time"}
    loss = run.series("loss")
    assert list(loss.index) == list(range(1, 101)) and math.isnan(loss[42]) and loss.drop(42).notna().all()
    assert list(run.series("eval_loss").index) == [20, 40, 60, 80, 100]
    # the final values W&B put in its summary
    assert loss[100] == pytest.approx(0.2557, abs=1e-4) and run.series("eval_loss")[100] == pytest.approx(0.3261,
                                                                                                         abs=1e-4)


@pytest.mark.parametrize("root", [OFFLINE, LEGACY], ids=["wandb-0.31", "wandb-0.16"])
def test_real_offline_run_config(root):
    run = run_of(root)
    assert {k: run.hparam(k) for k in ("lr", "batch_size", "optimizer", "max_steps")} == {
        "lr": 0.05, "batch_size": 16, "optimizer": "SGD", "max_steps": 100}
    assert not any(name.startswith("_") for name in run.hparams)
    assert run.hparams["lr"].file.endswith(".wandb")


def test_both_wandb_versions_give_the_same_numbers():
    new, old = run_of(OFFLINE), run_of(LEGACY)
    for metric in ("loss", "lr", "grad_norm", "eval_loss"):
        pd.testing.assert_series_equal(new.series(metric), old.series(metric))


def test_real_files_are_all_claimed_and_read_without_notes():
    for root in (OFFLINE, LEGACY):
        assert all(wandb.sniff(p) for p in root.rglob("*") if p.is_file())
        assert read_dir(root).notes == []


def test_console_log_gives_events_but_not_duplicate_numbers(monkeypatch):
    def fake_text_reader(paths, root):
        piece = Ingested("text")
        piece.events.append(Event("warning", 25, "[Warning] something", "output.log", 2))
        piece.add_frame("output.log", pd.DataFrame({"step": [25], "name": ["loss"], "value": [1.0287], "line": [2]}))
        return piece

    monkeypatch.setattr(textlog, "read", fake_text_reader)
    piece = read_dir(OFFLINE)
    assert [e.text for e in piece.events] == ["[Warning] something"]
    assert all(not file.endswith("output.log") for file, _ in piece.frames)


def test_console_log_numbers_are_used_when_there_is_no_history(monkeypatch, tmp_path):
    folder = next((OFFLINE / "wandb").iterdir())
    shutil.copytree(folder / "files", tmp_path / "wandb" / folder.name / "files")
    monkeypatch.setattr(textlog, "read", lambda paths, root: Ingested("text", frames=[(
        "output.log", pd.DataFrame({"step": [25], "name": ["loss"], "value": [1.0], "line": [2]}))]))
    assert len(read_dir(tmp_path).frames) == 1


# --- crafted record files ---------------------------------------------------------------------------------------------

def test_records_spanning_blocks_are_reassembled(tmp_path):
    big = {f"metric_{i}": str(i) for i in range(3000)}  # one record of ~60 KB: FIRST, MIDDLE, LAST chunks
    history = [wandb_history({"_step": str(s), "loss": str(1.0 / (s + 1))}) for s in range(2000)]
    write_run(tmp_path, *history[:1000], wandb_history({**big, "_step": "1000"}), *history[1000:])
    run = run_of(tmp_path)
    assert len(run.series("loss")) == 2000 and run.series("metric_2999")[1000] == 2999.0


def test_history_step_field_wins_and_sequence_is_the_fallback(tmp_path):
    write_run(tmp_path, wandb_history({"loss": "1.0"}, step=7), wandb_history({"loss": "2.0"}))
    assert run_of(tmp_path).series("loss").to_dict() == {7: 1.0, 1: 2.0}


def test_nonfinite_tokens_nested_values_and_media(tmp_path):
    write_run(tmp_path, wandb_history({
        "_step": "3", "loss": "NaN", "gn": "Infinity", "neg": "-Infinity", "train": '{"acc": 0.5, "f1": 0.25}',
        "image": '{"_type": "image-file", "path": "x.png"}', "note": '"text"', "flag": "true", "_runtime": "2.5"}))
    found = {name: value for _, name, value in read_dir(tmp_path).frames[0][1][["step", "name", "value"]].itertuples(
        index=False)}
    assert math.isnan(found.pop("loss")) and found == {"gn": math.inf, "neg": -math.inf, "train/acc": 0.5,
                                                       "train/f1": 0.25}


def test_typed_history_items(tmp_path):
    item_number = f_bytes(1, f_bytes(1, "x") + f_double(6, 2.5))
    item_integer = f_bytes(1, f_bytes(1, "y") + f_varint(5, 7))  # zigzag: -4
    nested = f_bytes(1, f_bytes(2, "val") + f_bytes(2, "loss") + f_bytes(16, "0.5"))
    write_run(tmp_path, f_bytes(2, item_number + item_integer + nested + f_bytes(2, f_varint(1, 9))))
    run = run_of(tmp_path)
    assert (run.series("x")[9], run.series("y")[9], run.series("eval_loss")[9]) == (2.5, -4.0, 0.5)


def test_config_records_update_the_run_config(tmp_path):
    write_run(tmp_path, wandb_run_config({"lr": "0.1", "_wandb": "{}", "model": '{"n_layer": 2}'}),
              wandb_config({"lr": "0.01", "warmup_steps": "100"}))
    piece = read_dir(tmp_path)
    hparams = {key: value for _, value, _, key in piece.hparams}
    assert hparams == {"lr": 0.01, "model.n_layer": 2, "warmup_steps": 100}


def test_nonzero_exit_code_is_an_error_event(tmp_path):
    write_run(tmp_path, wandb_history({"_step": "1", "loss": "1"}), f_bytes(18, f_varint(1, 1)))
    (event,) = read_dir(tmp_path).events
    assert event.kind == "error" and "code 1" in event.text and event.line == 2


def test_truncated_record_file_keeps_the_complete_records(tmp_path):
    source = next(OFFLINE.rglob("*.wandb"))
    data = source.read_bytes()
    write_run(tmp_path, data=data[: len(data) * 2 // 3])
    piece = read_dir(tmp_path)
    assert 0 < len(build_run(tmp_path, [piece]).series("loss")) < 100
    assert any("cut short" in n.message for n in piece.notes)


def test_bad_checksum_chunk_is_skipped(tmp_path):
    good = [wandb_history({"_step": str(s), "loss": str(s)}) for s in range(4)]
    data = bytearray(wandb_log(*good))
    second = 7 + 7 + len(good[0])  # header + first chunk
    data[second + 7 + 3] ^= 0x01  # a byte inside the second record's data
    write_run(tmp_path, data=bytes(data))
    piece = read_dir(tmp_path)
    assert sorted(build_run(tmp_path, [piece]).series("loss").index) == [0, 2, 3]
    assert "checksum" in piece.notes[0].message


def test_wrong_header_is_a_note(tmp_path):
    write_run(tmp_path, data=b"PK\x03\x04 not a wandb file at all")
    piece = read_dir(tmp_path)
    assert piece.frames == [] and "wrong header" in piece.notes[0].message


def test_output_records_are_not_history(tmp_path):
    write_run(tmp_path, wandb_history({"_step": "1", "loss": "1"}), wandb_output("step 1: loss=5\n"),
              wandb_output("step 1: loss=6\n", raw=False))
    piece = read_dir(tmp_path)
    assert [frame["value"].tolist() for _, frame in piece.frames] == [[1.0]]


def test_several_run_ids_read_the_most_recent(tmp_path):
    write_run(tmp_path, wandb_history({"_step": "1", "loss": "1"}), folder="offline-run-20260101_120000-aaa")
    write_run(tmp_path, wandb_history({"_step": "1", "loss": "2"}), folder="offline-run-20260102_120000-bbb")
    piece = read_dir(tmp_path)
    assert [frame["value"].tolist() for _, frame in piece.frames] == [[2.0]] and "aaa" in piece.notes[0].message


def test_resumed_run_id_folders_are_read_in_order(tmp_path):
    write_run(tmp_path, *(wandb_history({"_step": str(s), "loss": "1"}) for s in range(1, 6)),
              folder="offline-run-20260101_120000-aaa")
    write_run(tmp_path, *(wandb_history({"_step": str(s), "loss": "2"}) for s in range(3, 8)),
              folder="offline-run-20260101_130000-aaa")
    run = run_of(tmp_path)
    assert run.series("loss").to_dict() == {1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0, 5: 2.0, 6: 2.0, 7: 2.0}
    assert [e.step for e in run.events_of("restart")] == [3]


# --- the console inside the .wandb file (wandb 0.16 offline writes no output.log) ------------------------------------

def console(text: str, stream: int = 1, time: float | None = None, raw: bool = True) -> bytes:
    """Record{output_raw=13 | output=4: {output_type=1 (0 stderr, the default, left out), timestamp=2, line=3}}."""
    body = f_varint(1, stream) if stream else b""
    if time is not None:
        body += f_bytes(2, f_varint(1, int(time)) + f_varint(2, round(time % 1 * 1e9)))
    return f_bytes(13 if raw else 4, body + f_bytes(3, text))


def test_real_wandb_016_console_warning_is_an_event_cited_by_record():
    (event,) = read_dir(LEGACY).events
    record_file = next(LEGACY.rglob("*.wandb"))
    assert event.kind == "nan" and event.text.startswith("[Warning] loss produced non-finite value (nan)")
    assert event.file == record_file.relative_to(LEGACY).as_posix() and event.step == 42  # the step that is NaN
    record = wandb.records(record_file.read_bytes(), event.file, [])[event.line - 1]
    assert event.text.encode() in record  # the cited record holds the line


def test_output_log_wins_over_console_records(tmp_path):
    record_file = write_run(tmp_path, wandb_history({"_step": "1", "loss": "1"}),
                            console("[Warning] from the records\n", stream=0))
    (record_file.parent / "files").mkdir()
    (record_file.parent / "files" / "output.log").write_text("[Warning] from output.log\n")
    assert [(e.text, e.file.rsplit("/", 1)[1]) for e in read_dir(tmp_path).events] == [
        ("[Warning] from output.log", "output.log")]


def test_real_wandb_031_console_is_read_once():
    assert read_dir(OFFLINE).events == []  # its output.log and its output_raw records hold the same lines


def test_console_lines_are_joined_per_stream_and_cited_by_their_first_record(tmp_path):
    write_run(tmp_path,
              console("[Warn", stream=0),                        # 1: stderr, a line split over records 1, 3, 4
              console("step 1: loss=2.5\nstep 2: ", stream=1),  # 2: stdout, interleaved
              console("ing] loss is nan", stream=0),             # 3
              console("\n", stream=0),                           # 4
              console("loss=2.0\n", stream=1),                   # 5
              console("\r 10%|#   |\r 90%|### |\r100%|####|", stream=0),  # 6: a redrawn progress bar
              console("\r\n", stream=0),                         # 7
              console("[Warning] output record\n", stream=0, raw=False))  # 8: the older OutputRecord
    piece = read_dir(tmp_path)
    assert [(e.kind, e.text, e.line) for e in piece.events] == [
        ("nan", "[Warning] loss is nan", 1), ("warning", "[Warning] output record", 8)]
    (_, frame), = piece.frames  # no history: the console's numbers are read, cited by record
    assert frame[["step", "value", "line"]].values.tolist() == [[1, 2.5, 2], [2, 2.0, 2]]
    assert piece.notes == []


def test_console_events_take_the_history_step_logged_after_them(tmp_path):
    # log(step=1) at t=100, a warning printed at 100.5, log(step=2) at 101: W&B writes the row of an explicit step
    # only once the next step is logged, so row 1 comes after the warning in the file; the clocks say step 2
    write_run(tmp_path, console("[Warning] loss is nan\n", stream=0, time=100.5),
              wandb_history({"_step": "1", "loss": "1", "_timestamp": "100.0"}),
              wandb_history({"_step": "2", "loss": "NaN", "_timestamp": "101.0"}),
              console("[Warning] done\n", stream=0, time=102.0))
    assert [(e.step, e.line) for e in read_dir(tmp_path).events] == [(2, 1), (2, 4)]


def test_console_events_without_timestamps_take_the_next_history_record(tmp_path):
    write_run(tmp_path, wandb_history({"_step": "1", "loss": "1"}), console("[Warning] loss is nan\n", stream=0),
              wandb_history({"_step": "2", "loss": "NaN"}), console("[Warning] done\n", stream=0))
    assert [(e.step, e.line) for e in read_dir(tmp_path).events] == [(2, 2), (2, 4)]


def test_console_line_cut_short_by_a_killed_run_is_a_note(tmp_path):
    write_run(tmp_path, wandb_history({"_step": "1", "loss": "1"}), console("[Warning] first\n", stream=0),
              console("[Warning] never fin", stream=0))
    piece = read_dir(tmp_path)
    assert [e.text for e in piece.events] == ["[Warning] first"]
    assert [(n.line, "mid-line" in n.message) for n in piece.notes] == [(3, True)]


def test_truncated_wandb_016_file_keeps_the_console_it_holds(tmp_path):
    data = next(LEGACY.rglob("*.wandb")).read_bytes()
    write_run(tmp_path, data=data[: len(data) * 2 // 3])
    piece = read_dir(tmp_path)
    assert [e.step for e in piece.events] == [42] and any("cut short" in n.message for n in piece.notes)


# --- files/ fallbacks -------------------------------------------------------------------------------------------------

def test_history_jsonl_and_config_yaml_without_a_record_file(tmp_path):
    files = tmp_path / "wandb" / "run-20260101_120000-xyz" / "files"
    files.mkdir(parents=True)
    (files / "wandb-history.jsonl").write_text(
        '{"_step": 0, "loss": 2.0, "_runtime": 1}\n{"_step": 1, "loss": NaN}\nnot json\n{"_step": 2, "lo')
    (files / "config.yaml").write_text(
        "wandb_version: 1\n_wandb:\n  desc: null\n  value: {cli_version: 0.15}\n"
        "learning_rate:\n  desc: null\n  value: 0.0003\n")
    piece = read_dir(tmp_path)
    run = build_run(tmp_path, [piece])
    loss = run.series("loss")
    assert loss[0] == 2.0 and math.isnan(loss[1]) and run.hparam("lr") == 0.0003
    assert {n.message.split()[0] for n in piece.notes} == {"lines", "the"}


def test_user_files_saved_into_the_run_are_left_to_other_readers(tmp_path):
    files = tmp_path / "wandb" / "run-20260101_120000-xyz" / "files"
    assert not wandb.sniff(files / "train.log")
    assert wandb.sniff(files / "config.yaml") and not wandb.sniff(tmp_path / "config.yaml")


def test_wandb_debug_logs_beside_the_runs_are_claimed_and_ignored(tmp_path):
    write_run(tmp_path, wandb_history({"_step": "1", "loss": "1"}))
    (tmp_path / "wandb" / "debug.log").write_text("2026-01-01 INFO wandb setup\n")
    assert wandb.sniff(tmp_path / "wandb" / "debug.log")
    piece = read_dir(tmp_path)
    assert len(piece.frames) == 1 and piece.notes == []


# --- the clock: `_timestamp` of each history row, kept as `wall_time` from the rows that log the training loss ----

@pytest.mark.parametrize("root", [OFFLINE, LEGACY], ids=["wandb-0.31", "wandb-0.16"])
def test_real_offline_run_keeps_the_rows_timestamps_as_the_clock(root):
    run = run_of(root)
    clock = run.series("wall_time")
    assert list(clock.index) == list(range(1, 101)) and clock.dtype == "float64"
    assert 1.79e9 < clock.iloc[0] < 1.8e9 and clock.is_monotonic_increasing
    file, line = run.point("wall_time", 42)
    assert (file, line) == run.point("loss", 42)  # the history record of that row


def test_clock_comes_from_the_rows_that_log_the_training_loss(tmp_path):
    write_run(tmp_path, wandb_history({"_step": "1", "train/loss": "2.0", "_timestamp": "1700000000.0"}),
              wandb_history({"_step": "2", "eval/loss": "2.1", "_timestamp": "1700000005.0"}),
              wandb_history({"_step": "3", "train/loss": "1.9", "_timestamp": "1700000006.0"}),
              wandb_history({"_step": "4", "train/loss": "1.8"}))  # no time: no reading
    assert run_of(tmp_path).series("wall_time").to_dict() == {1: 1700000000.0, 3: 1700000006.0}


def test_history_jsonl_timestamps_are_the_clock(tmp_path):
    files = tmp_path / "wandb" / "run-20260101_120000-xyz" / "files"
    files.mkdir(parents=True)
    (files / "wandb-history.jsonl").write_text('{"_step": 0, "loss": 2.0, "_timestamp": 1700000000.5}\n'
                                               '{"_step": 1, "loss": 1.0, "_timestamp": 1700000001.5}\n')
    assert run_of(tmp_path).series("wall_time").to_dict() == {0: 1700000000.5, 1: 1700000001.5}


@pytest.mark.parametrize("key", ["train/global_step", "trainer/global_step"])
def test_the_trainers_own_step_wins_over_wandbs_count_of_log_calls(tmp_path, key):
    """HF Trainer's WandbCallback logs {**logs, "train/global_step": state.global_step} (Lightning's WandbLogger:
    trainer/global_step): W&B's _step counts log calls, the trainer's step is what its checkpoints and config use."""
    rows = [{"_step": str(i), "train/loss": str(3 - i / 10), key: str(10 * (i + 1))} for i in range(5)]
    rows.insert(3, {"_step": "3", "eval/loss": "2.9"})  # a row without it takes the step of the row before
    write_run(tmp_path, *(wandb_history(r) for r in rows))
    run = run_of(tmp_path)
    assert run.series("loss").index.tolist() == [10, 20, 30, 40, 50]
    assert run.series("eval_loss").index.tolist() == [30]
    assert "global_step" not in " ".join(run.metrics) and not run.events_of("restart")
