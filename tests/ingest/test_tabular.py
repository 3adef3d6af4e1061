"""Generic CSV/TSV and JSON-lines metric files: real framework output, non-finite tokens, broken and odd input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from analyzer.ingest import tabular
from analyzer.run import Ingested, build_run

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
GENERIC_CSV = FRAMEWORKS / "generic_csv" / "metrics.csv"
GENERIC_JSONL = FRAMEWORKS / "generic_jsonl" / "metrics.jsonl"
TRUNCATED_JSONL = FRAMEWORKS / "generic_jsonl" / "metrics_truncated.jsonl"


@pytest.fixture(params=["arrow reads tokens", "tokens swapped"])
def token_path(request, monkeypatch):
    """Run a test both with a pyarrow that reads NaN/Infinity and with one that refuses them (the swap path)."""
    if request.param == "tokens swapped":
        monkeypatch.setattr(tabular, "_arrow_reads_nonfinite_tokens", lambda: False)
    return request.param


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def table(path: Path, rank: int | None = None) -> tabular.Table:
    return tabular.read_file(path, path.name, rank=rank)


def series(frame, name: str) -> dict[int, float]:
    rows = frame[frame["name"] == name]
    return dict(zip(rows["step"].tolist(), rows["value"].tolist()))


def run_of(path: Path):
    piece = tabular.read([path], path.parent)
    return build_run(path.parent, [piece])


def needs(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"framework fixture missing (regenerate: tests/fixtures/frameworks/generate.py): {path}")
    return path


# --- real framework output -------------------------------------------------------------------------------------------

KERAS_LOG = FRAMEWORKS / "keras_csvlogger" / "training.log"


def test_keras_csvlogger_training_log_is_a_table_by_epoch():
    # keras.callbacks.CSVLogger("training.log"), the name in Keras' documentation: a CSV under a log's suffix
    path = needs(KERAS_LOG)
    assert tabular.sniff(path)
    run = run_of(path)
    assert run.metrics == ("accuracy", "eval_accuracy", "eval_loss", "loss")
    loss = run.series("loss")
    assert list(loss.index) == list(range(12)) and loss.iloc[0] == pytest.approx(0.8725617527961731)
    assert run.series("eval_loss").iloc[0] == pytest.approx(0.7533072233200073)


@pytest.mark.parametrize("body", [
    "epoch, loss and lr looked fine\n12 apples\n",  # prose with commas
    "iter 0: loss 4.2, time 12.3ms, mfu 35.12%\niter 1: loss 4.1, time 12.3ms, mfu 35.12%\n",  # nanoGPT
    "step,loss\n",  # a header and nothing else yet
    "step,loss\n1,2,3\n",  # a row of another width
    "step,loss\n1,high\n",  # a word where a number should be
])
def test_text_that_is_no_table_is_left_to_the_text_reader(tmp_path, body):
    assert not tabular.sniff(write(tmp_path, "train.log", body))


def test_generic_csv_every_point_with_its_line():
    frame = table(needs(GENERIC_CSV)).frame
    loss = series(frame, "loss")
    assert sorted(loss) == list(range(1, 101))
    assert loss[1] == 7.9570088386535645
    evals = frame[frame["name"] == "eval_loss"]
    assert evals["step"].tolist() == [20, 40, 60, 80, 100]
    row = evals[evals["step"] == 60].iloc[0]
    assert row["value"] == 0.5820446610450745 and row["line"] == 61  # header is line 1


def test_generic_jsonl_matches_the_csv_of_the_same_run():
    frame = table(needs(GENERIC_JSONL)).frame
    csv = table(needs(GENERIC_CSV)).frame
    for name in ("loss", "lr", "grad_norm", "eval_loss"):
        assert series(frame, name) == series(csv, name)
    row = frame[(frame["name"] == "eval_loss") & (frame["step"] == 60)].iloc[0]
    assert row["line"] == 60


def test_truncated_jsonl_drops_the_cut_line_with_a_note():
    result = table(needs(TRUNCATED_JSONL))
    assert max(series(result.frame, "loss")) == 60
    (note,) = result.notes
    assert note.line == 61 and "cut short" in note.message


# --- JSON lines ----------------------------------------------------------------------------------------------------

def test_nonfinite_tokens_become_nonfinite_values(tmp_path, token_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": NaN, "gn": Infinity}\n'
                                      '{"step":2,"loss":-Infinity,"gn":1.5}\n'
                                      '{"step": 3, "loss": 2.0, "gn": NaN}\n')
    frame = table(path).frame
    loss, gn = series(frame, "loss"), series(frame, "gn")
    assert math.isnan(loss[1]) and loss[2] == -math.inf and loss[3] == 2.0
    assert gn[1] == math.inf and gn[2] == 1.5 and math.isnan(gn[3])


def test_absent_key_is_no_point_but_nan_is_one(tmp_path, token_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 1.0}\n{"step": 2, "eval_loss": NaN}\n')
    frame = table(path).frame
    assert series(frame, "loss") == {1: 1.0}
    assert list(series(frame, "eval_loss")) == [2]


def test_nan_in_a_list_takes_the_tolerant_path(tmp_path, token_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 3.0, "hist": [NaN, 1]}\n{"step": 2, "loss": NaN}\n')
    loss = series(table(path).frame, "loss")
    assert loss[1] == 3.0 and math.isnan(loss[2])


def test_garbage_lines_are_counted_and_lines_stay_right(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 3.0}\nTraceback (most recent call last):\n'
                                      '\x00\xff\xfe binary\n{"step": 2, "loss": 2.5}\n{"step": 3, "loss": }\n'
                                      '{"step": 4, "loss": 2.0}\n')
    result = table(path)
    frame = result.frame
    assert series(frame, "loss") == {1: 3.0, 2: 2.5, 4: 2.0}
    assert dict(zip(frame["step"], frame["line"])) == {1: 1, 2: 4, 4: 6}
    (note,) = result.notes
    assert note.count == 3 and note.line == 2


def test_blank_lines_and_crlf_keep_line_numbers(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 3.0}\r\n\r\n   \n{"step": 2, "loss": 2.0}\r\n')
    frame = table(path).frame
    assert dict(zip(frame["step"], frame["line"])) == {1: 1, 2: 4}


def test_records_without_a_step_are_ignored_with_a_note(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 3.0}\n{"config": {"lr": 0.1}}\n{"step": 2, "loss": 2.0}\n')
    result = table(path)
    assert series(result.frame, "loss") == {1: 3.0, 2: 2.0}
    assert any("without a step" in n.message and n.line == 2 for n in result.notes)


def test_split_field_makes_eval_metrics(tmp_path, token_path):
    path = write(tmp_path, "metrics.jsonl", '{"step": 10, "split": "train", "loss": 3.0}\n'
                                            '{"step": 10, "split": "eval", "loss": 3.4, "ppl": 30.0}\n')
    run = run_of(path)
    assert run.series("loss").to_dict() == {10: 3.0}
    assert run.series("eval_loss").to_dict() == {10: 3.4} and run.has("eval_ppl")


def test_type_clash_between_lines_is_tolerated(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": "n/a"}\n'
                                      '{"step": 3, "loss": "2.5"}\n')
    result = table(path)
    assert series(result.frame, "loss") == {1: 3.0, 3: 2.5}
    assert any("non-numeric" in n.message and n.line == 2 for n in result.notes)


def test_nested_objects_are_flattened_with_slashes(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "train": {"loss": 3.0}, "eval": {"loss": 3.5}}\n')
    run = run_of(path)
    assert run.series("loss").to_dict() == {1: 3.0} and run.series("eval_loss").to_dict() == {1: 3.5}


def test_rank_field_and_rank_in_file_name(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "rank": 0, "loss": 3.0}\n{"step": 1, "rank": 1, "loss": 3.3}\n')
    run = run_of(path)
    assert run.series("loss", rank=1).to_dict() == {1: 3.3}
    other = write(tmp_path, "metrics.rank2.jsonl", '{"step": 1, "loss": 2.9}\n')
    assert tabular.rank_from_name(other.name) == 2
    assert table(other, rank=2).frame["rank"].tolist() == [2]


def test_fallback_step_columns(tmp_path):
    for column in ("global_step", "iteration", "iter", "_step"):
        path = write(tmp_path, f"{column}.jsonl", f'{{"{column}": 7, "loss": 1.0}}\n')
        assert series(table(path).frame, "loss") == {7: 1.0}


def test_fractional_epoch_as_the_only_clock_uses_row_order(tmp_path):
    path = write(tmp_path, "m.csv", "epoch,loss\n0.5,3.0\n1.0,2.0\n")
    result = table(path)
    assert series(result.frame, "loss") == {0: 3.0, 1: 2.0}
    assert any("fractional epochs" in n.message for n in result.notes)


def test_invalid_utf8_in_a_text_field(tmp_path):
    path = write(tmp_path, "m.jsonl", b'{"step": 1, "note": "\xff\xfe", "loss": 3.0}\n{"step": 2, "loss": 2.0}\n')
    assert series(table(path).frame, "loss") == {1: 3.0, 2: 2.0}


def test_unicode_metric_names_are_kept(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "Temperature²": 9.0, "损失": 2.0}\n')
    frame = table(path).frame
    assert series(frame, "Temperature²") == {1: 9.0} and series(frame, "损失") == {1: 2.0}


def test_empty_and_blank_files_give_no_frame(tmp_path):
    for data in ("", "\n\n  \n"):
        result = table(write(tmp_path, "m.jsonl", data))
        assert result.frame is None and result.notes


def test_long_format_jsonl(tmp_path, token_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "tag": "train/loss", "value": 3.0}\n'
                                      '{"step": 1, "tag": "val/loss", "value": NaN}\n')
    run = run_of(path)
    assert run.series("loss").to_dict() == {1: 3.0}
    assert math.isnan(run.series("eval_loss")[1])


# --- CSV -----------------------------------------------------------------------------------------------------------

def test_csv_nonfinite_text_is_kept_and_empty_is_absent(tmp_path):
    path = write(tmp_path, "m.csv", "step,loss,lr\n1,nan,0.1\n2,inf,\n3,-inf,0.1\n4,2.0,0.1\n")
    frame = table(path).frame
    loss = series(frame, "loss")
    assert math.isnan(loss[1]) and loss[2] == math.inf and loss[3] == -math.inf and loss[4] == 2.0
    assert sorted(series(frame, "lr")) == [1, 3, 4]


def test_csv_rows_with_wrong_field_count_are_skipped(tmp_path):
    path = write(tmp_path, "m.csv", "step,loss\n1,3.0\n2,2.5,9,9\n\n3,2.0\n4,1\n")
    result = table(path)
    frame = result.frame
    assert series(frame, "loss") == {1: 3.0, 3: 2.0, 4: 1.0}
    assert dict(zip(frame["step"], frame["line"])) == {1: 2, 3: 5, 4: 6}
    assert any("wrong number of fields" in n.message and n.count == 1 for n in result.notes)


def test_csv_truncated_last_row_is_dropped(tmp_path):
    for cut in ("2,2.", "2,2.9,0."):  # too few fields, or all fields with the last one cut
        result = table(write(tmp_path, "m.csv", "step,loss,lr\n1,3.0,0.1\n" + cut))
        assert series(result.frame, "loss") == {1: 3.0}
        assert [n.line for n in result.notes if "cut short" in n.message] == [3]


def test_csv_words_in_a_numeric_column_are_counted(tmp_path):
    path = write(tmp_path, "m.csv", "step,loss,phase\n1,3.0,warmup\n2,oops,main\n3,2.0,main\n")
    result = table(path)
    assert series(result.frame, "loss") == {1: 3.0, 3: 2.0}
    assert "phase" not in set(result.frame["name"])  # a column of words is a label, not a metric
    assert any("'loss'" in n.message and n.line == 3 for n in result.notes)


def test_tsv_and_long_format_csv(tmp_path):
    tsv = write(tmp_path, "m.tsv", "step\tloss\n5\t1.5\n")
    assert series(table(tsv).frame, "loss") == {5: 1.5}
    long = write(tmp_path, "long.csv", "step,metric,value\n1,loss,3.0\n1,grad_norm,0.5\n2,loss,2.0\n")
    frame = table(long).frame
    assert series(frame, "loss") == {1: 3.0, 2: 2.0} and series(frame, "grad_norm") == {1: 0.5}


def test_csv_binary_junk_is_tolerated(tmp_path):
    path = write(tmp_path, "m.csv", b"step,loss\n1,3.0\n\x00\x01\x02\xff\n2,\xff\xfe\n3,2.0\n")
    result = table(path)
    assert series(result.frame, "loss") == {1: 3.0, 3: 2.0}


# --- sniff ---------------------------------------------------------------------------------------------------------

def test_sniff(tmp_path):
    assert tabular.sniff(needs(GENERIC_CSV)) and tabular.sniff(needs(GENERIC_JSONL))
    assert not tabular.sniff(write(tmp_path, "data.csv", "x,y\n1,2\n"))
    assert not tabular.sniff(write(tmp_path, "config.json", '{"step": 1, "lr": 0.1}'))  # one object: a config
    assert tabular.sniff(write(tmp_path, "metrics.json", '{"iteration": 1, "loss": 2}\n{"iteration": 2, "loss": 1}\n'))
    assert not tabular.sniff(write(tmp_path, "empty.jsonl", ""))
    assert not tabular.sniff(write(tmp_path, "list.jsonl", "[1, 2]\n"))


def test_fast_and_tolerant_paths_agree(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f'{{"step": {i}, "loss": {v!r}, "lr": 0.001}}' for i, v in enumerate(rng.random(200).tolist())]
    clean = write(tmp_path, "clean.jsonl", "\n".join(lines) + "\n")
    dirty = write(tmp_path, "dirty.jsonl", "\n".join(lines[:100] + ["garbage"] + lines[100:]) + "\n")
    a, b = table(clean).frame, table(dirty).frame
    assert a["value"].tolist() == b["value"].tolist() and a["step"].tolist() == b["step"].tolist()
    assert (b["line"].to_numpy() - a["line"].to_numpy() == (a["step"].to_numpy() >= 100)).all()


def test_read_collects_every_file(tmp_path):
    a = write(tmp_path, "a.jsonl", '{"step": 1, "loss": 3.0}\n')
    b = write(tmp_path, "b.csv", "step,acc\n1,0.5\n")
    piece = tabular.read([a, b], tmp_path)
    assert isinstance(piece, Ingested) and [f for f, _ in piece.frames] == ["a.jsonl", "b.csv"]


def test_a_logged_value_equal_to_a_sentinel_is_not_mistaken_for_nan(tmp_path, token_path):
    odd = tabular.POS_INF_SENTINEL
    path = write(tmp_path, "m.jsonl", f'{{"step": 1, "loss": {odd!r}}}\n{{"step": 2, "loss": NaN}}\n'
                                      '{"step": 3, "note": "x: NaN", "loss": 1.0}\n')
    loss = series(table(path).frame, "loss")
    assert loss[1] == odd and math.isnan(loss[2]) and loss[3] == 1.0


def test_steps_beyond_integer_range_are_ignored_with_a_note(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 3.0}\n{"step": 1e300, "loss": 2.0}\n'
                                      '{"step": 99999999999999999999999, "loss": 1.0}\n')
    result = table(path)
    assert series(result.frame, "loss") == {1: 3.0}
    assert any("too large" in n.message and n.count == 2 for n in result.notes)


# --- the clock: each record's wall time, kept as `wall_time` ---------------------------------------------------------

def test_timestamp_column_is_the_clock_of_the_loss_rows(tmp_path, token_path):
    path = write(tmp_path, "m.jsonl",
                 '{"step": 1, "loss": 3.0, "timestamp": 1700000000.5}\n'
                 '{"step": 2, "loss": 2.9, "timestamp": 1700000001.5}\n'
                 '{"step": 2, "split": "eval", "loss": 2.95, "timestamp": 1700000030.0}\n'
                 '{"step": 3, "loss": NaN, "timestamp": 1700000031.0}\n')
    run = run_of(path)
    assert run.series("wall_time").to_dict() == {1: 1700000000.5, 2: 1700000001.5, 3: 1700000031.0}
    assert run.series("wall_time").dtype == np.float64 and "timestamp" not in run.metrics
    assert run.point("wall_time", 2) == ("m.jsonl", 2)  # the training row's, not the eval row's


@pytest.mark.parametrize("name, values, expected", [
    ("_timestamp", ("1700000000000", "1700000000250"), (1700000000.0, 1700000000.25)),  # ms
    ("wall_time", ("1700000000", "1700000002"), (1700000000.0, 1700000002.0)),
    ("time", ("2024-01-01T00:00:00Z", "2024-01-01T00:00:02.5Z"), (1704067200.0, 1704067202.5)),
    ("datetime", ("2024-01-01 00:00:00", "2024-01-01 00:00:01"), (1704067200.0, 1704067201.0)),  # naive: as UTC
])
def test_clock_columns_in_seconds_milliseconds_or_text(tmp_path, name, values, expected):
    path = write(tmp_path, "m.csv", f"step,loss,{name}\n1,3.0,{values[0]}\n2,2.9,{values[1]}\n")
    run = run_of(path)
    assert tuple(run.series("wall_time")) == pytest.approx(expected, rel=0, abs=1e-6)
    assert set(run.metrics) == {"loss", "wall_time"}


def test_a_time_column_that_is_no_clock_stays_a_metric(tmp_path):
    path = write(tmp_path, "m.csv", "step,loss,time\n1,3.0,0.12\n2,2.9,0.13\n")  # seconds per step
    run = run_of(path)
    assert "wall_time" not in run.metrics and run.series("time").tolist() == [0.12, 0.13]


def test_clock_of_a_long_table_and_of_a_table_without_loss(tmp_path):
    long = write(tmp_path, "long.csv", "step,metric,value,timestamp\n1,loss,3.0,1700000000000\n"
                                       "1,lr,0.1,1700000000900\n2,loss,2.9,1700000001000\n2,lr,0.1,1700000001900\n")
    assert run_of(long).series("wall_time").to_dict() == {1: 1700000000.0, 2: 1700000001.0}
    (tmp_path / "long.csv").unlink()
    wide = write(tmp_path, "acc.jsonl", '{"step": 1, "acc": 0.5, "_timestamp": 1700000000}\n'
                                        '{"step": 2, "acc": 0.6, "_timestamp": 1700000003}\n')
    assert run_of(wide).series("wall_time").to_dict() == {1: 1700000000.0, 2: 1700000003.0}


def ray_tune_trial(folder: Path, iterations: int = 60, nan_from: int | None = None) -> Path:
    """A Ray Tune trial folder as its default loggers write it: params.json, result.json (JsonLoggerCallback: one
    json.dumps of the result per line, the config nested) and progress.csv (CSVLoggerCallback: the same results,
    flattened with `config/` keys). Keys as in ray/tune/result.py (training_iteration, time_this_iter_s, ...)."""
    import csv
    import json

    folder.mkdir(parents=True)
    config = {"lr": 0.01, "batch_size": 32}
    (folder / "params.json").write_text(json.dumps(config))
    rows, total = [], 0.0
    for it in range(1, iterations + 1):
        loss = 2.3 * math.exp(-it / 20) + 0.2 + 0.01 * (it % 3)
        if nan_from is not None and it >= nan_from:
            loss = float("nan")
        total += 1.5
        rows.append({"loss": loss, "accuracy": 1 - loss / 3, "timestamp": int(1732240000 + total),
                     "checkpoint_dir_name": None, "done": it == iterations, "training_iteration": it,
                     "trial_id": "abc_00000", "date": "2024-11-22_01-00-00", "time_this_iter_s": 1.5,
                     "time_total_s": total, "pid": 4242, "hostname": "node1", "node_ip": "10.0.0.1",
                     "config": config, "time_since_restore": total, "iterations_since_restore": it})
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flat = [{**{k: v for k, v in r.items() if k != "config"}, **{f"config/{k}": v for k, v in config.items()}}
            for r in rows]
    with open(folder / "progress.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    return folder


def test_a_ray_tune_trial_is_read_once_with_its_iterations_as_steps(tmp_path):
    from analyzer.ingest import read_run

    run = read_run(ray_tune_trial(tmp_path / "trial"))
    assert set(run.metrics) == {"loss", "accuracy", "time_this_iter_s", "wall_time"}  # no config/*, no bookkeeping
    loss = run.series("loss")
    assert loss.index.tolist() == list(range(1, 61))
    assert {run.hparams["lr"].value, run.hparams["batch_size"].value} == {0.01, 32}
    assert not run.events_of("restart")  # progress.csv repeats result.json: it is not read as a second segment
    assert any("progress.csv" == n.file and "result.json is read" in n.message for n in run.notes)


def test_a_ray_tune_trial_that_went_nan_is_diagnosed_at_its_iteration(tmp_path):
    from analyzer.diagnose import diagnose_path

    diagnosis = diagnose_path(ray_tune_trial(tmp_path / "trial", nan_from=45))
    onset = next(f for f in diagnosis.findings if f.name == "nonfinite-onset")
    assert onset.first_step == 45 and "loss is NaN" in onset.message  # the loss, not accuracy, which went with it


# --- found by the red-team pass (tests/test_redteam_inputs.py has the CLI-level cases) ----------------------------------

def test_a_key_that_is_no_valid_unicode_is_kept_escaped(tmp_path):
    # json.loads turns the escape \ud800 into a lone surrogate, which no UTF-8 text can hold
    path = write(tmp_path, "metrics.jsonl", '{"step": 1, "loss": 3.0, "\\ud800": 1}\n{"step": 2, "loss": 2.9, "\\ud800": 1}\n')
    frame = table(path).frame
    assert series(frame, "\\ud800") == {1: 1.0, 2: 1.0} and series(frame, "loss") == {1: 3.0, 2: 2.9}


@pytest.mark.parametrize("bad", ['"x"', "[1]", "null", '"seven"'])
def test_a_record_whose_step_is_no_number_is_dropped_alone(tmp_path, bad):
    path = write(tmp_path, "metrics.jsonl", '{"step": 1, "loss": 3}\n{"step": 2, "loss": 2.9}\n'
                                            f'{{"step": {bad}, "loss": 2.8}}\n{{"step": 4, "loss": 2.7}}\n')
    result = table(path)
    assert series(result.frame, "loss") == {1: 3.0, 2: 2.9, 4: 2.7}
    assert any("without a step" in n.message and n.line == 3 for n in result.notes)


def test_steps_written_as_text_are_read(tmp_path):
    path = write(tmp_path, "metrics.jsonl", '{"step": "1", "loss": 3}\n{"step": "2", "loss": 2.9}\n')
    assert series(table(path).frame, "loss") == {1: 3.0, 2: 2.9}


@pytest.mark.parametrize("name, body, tail_line", [
    ("metrics.jsonl", '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.9}\n', 3),
    ("metrics.csv", "step,loss\n1,3.0\n2,2.9\n", 4),
])
def test_a_zero_filled_tail_is_ignored_with_a_note(tmp_path, name, body, tail_line):
    path = write(tmp_path, name, body.encode() + b"\x00" * (3 << 20))  # more than one scan block
    result = table(path)
    assert series(result.frame, "loss") == {1: 3.0, 2: 2.9}
    assert [(n.message, n.line) for n in result.notes] == [
        (f"the file ends in {3 << 20} zero bytes (left by a crash?); ignored", tail_line)]


def test_a_first_record_longer_than_the_sniff_window_is_claimed(tmp_path):
    wide = ", ".join(f'"k{i}": 1.0' for i in range(3000))  # ~40 KB per record
    path = write(tmp_path, "metrics.jsonl", f'{{"step": 1, "loss": 3.0, {wide}}}\n{{"step": 2, "loss": 2.9, {wide}}}\n')
    assert tabular.sniff(path)
    assert series(table(path).frame, "loss") == {1: 3.0, 2: 2.9}
    assert not tabular.sniff(write(tmp_path, "other.jsonl", f'{{"name": "x", {wide}, "step": 1}}\n'))


# --- Ultralytics results.csv: loss terms without a total ------------------------------------------------------------

ULTRALYTICS = FRAMEWORKS / "ultralytics_results" / "results.csv"  # ultralytics 8.4's own save_metrics
ULTRALYTICS_V8_0 = FRAMEWORKS / "ultralytics_results_v8_0" / "results.csv"  # 8.0's padded layout


@pytest.mark.parametrize("path, first_epoch", [(ULTRALYTICS, 1), (ULTRALYTICS_V8_0, 0)])
def test_ultralytics_total_loss_is_the_sum_of_its_terms(path, first_epoch):
    frame = table(needs(path)).frame
    terms = [series(frame, f"train/{t}_loss") for t in ("box", "cls", "dfl")]
    total = series(frame, "train/loss")
    assert min(total) == first_epoch and len(total) == 30
    assert all(total[e] == pytest.approx(sum(t[e] for t in terms)) for e in total)
    val = [series(frame, f"val/{t}_loss") for t in ("box", "cls", "dfl")]
    assert all(v == pytest.approx(sum(t[e] for t in val)) for e, v in series(frame, "val/loss").items())


@pytest.mark.parametrize("path", [ULTRALYTICS, ULTRALYTICS_V8_0])
def test_ultralytics_lr_is_the_weights_group_and_epoch_is_the_step(path):
    result = table(needs(path))
    names = set(result.frame["name"])
    assert "lr" in names and "lr/pg1" not in names and "lr/pg0" in names
    assert not {n for n in names if n.strip().lower() == "epoch"}  # the padded 8.0 header's step is not a metric
    assert any("sum of train/box_loss, train/cls_loss, train/dfl_loss" in n.message for n in result.notes)


def test_a_table_with_its_own_total_loss_gets_no_sum(tmp_path):
    path = write(tmp_path, "results.csv", "epoch,train/loss,train/box_loss,train/cls_loss\n1,3.0,1.0,1.5\n")
    assert series(table(path).frame, "train/loss") == {1: 3.0}


def test_a_nonfinite_term_makes_the_total_nonfinite(tmp_path):
    path = write(tmp_path, "results.csv", "epoch,train/box_loss,train/cls_loss\n1,1.0,1.5\n2,nan,1.4\n")
    total = series(table(path).frame, "train/loss")
    assert total[1] == 2.5 and math.isnan(total[2])
