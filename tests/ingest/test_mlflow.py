"""MLflow reader: the file store and the SQLite store written by MLflow 3.17, plus older and damaged inputs."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from analyzer.ingest import mlflow
from analyzer.run import build_run

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
FILESTORE = FRAMEWORKS / "mlflow_filestore"
SQLITE = FRAMEWORKS / "mlflow_sqlite"


def read_dir(root: Path):
    files = sorted(p for p in root.rglob("*") if p.is_file() and mlflow.sniff(p))
    return mlflow.read(files, root)


def run_of(root: Path):
    return build_run(root, [read_dir(root)])


def file_run(root: Path, run_id: str, *, start: int, name: str = "r", metrics: dict | None = None,
             params: dict | None = None, status: int = 3) -> Path:
    folder = root / "mlruns" / "1" / run_id
    (folder / "metrics").mkdir(parents=True)
    (folder / "params").mkdir()
    (folder / "meta.yaml").write_text(
        f"run_id: {run_id}\nrun_name: {name}\nstart_time: {start}\nstatus: {status}\n")
    for key, text in (metrics or {}).items():
        (folder / "metrics" / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / "metrics" / key).write_text(text)
    for key, text in (params or {}).items():
        (folder / "params" / key).write_text(text)
    return folder


# --- real stores ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("root", [FILESTORE, SQLITE], ids=["filestore", "sqlite"])
def test_real_store_metrics_and_nonfinite_values(root):
    run = run_of(root)
    assert set(run.metrics) == {"loss", "lr", "grad_norm", "eval_loss", "wall_time"}
    loss = run.series("loss")
    assert len(loss) == 100 and loss.index[0] == 1 and math.isnan(loss[57]) and loss.drop(57).notna().all()
    assert run.series("grad_norm")[73] == math.inf
    assert list(run.series("eval_loss").index) == [20, 40, 60, 80, 100]


@pytest.mark.parametrize("root", [FILESTORE, SQLITE], ids=["filestore", "sqlite"])
def test_real_store_params_typed(root):
    run = run_of(root)
    assert run.hparam("lr") == 0.05 and run.hparam("batch_size") == 16 and run.hparam("optimizer") == "SGD"


def test_filestore_provenance_is_the_metric_file_and_line():
    run = run_of(FILESTORE)
    file, line = run.point("loss", 57)
    assert file.endswith("/metrics/loss") and line == 57
    assert (FILESTORE / file).read_text().splitlines()[line - 1].split()[1] == "nan"


def test_sqlite_is_opened_read_only_and_left_untouched(tmp_path):
    shutil.copy(SQLITE / "mlflow.db", tmp_path / "mlflow.db")
    before = hashlib.sha256((tmp_path / "mlflow.db").read_bytes()).hexdigest()
    mtime = os.stat(tmp_path / "mlflow.db").st_mtime_ns
    os.chmod(tmp_path, 0o555)
    try:
        run = run_of(tmp_path)
    finally:
        os.chmod(tmp_path, 0o755)
    assert len(run.series("loss")) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]
    assert hashlib.sha256((tmp_path / "mlflow.db").read_bytes()).hexdigest() == before
    assert os.stat(tmp_path / "mlflow.db").st_mtime_ns == mtime


def test_all_fixture_files_are_claimed():
    for root in (FILESTORE, SQLITE):
        assert all(mlflow.sniff(p) for p in root.rglob("*") if p.is_file())


# --- crafted file stores ----------------------------------------------------------------------------------------------

def test_nested_metric_names_and_five_field_lines(tmp_path):
    file_run(tmp_path, "a", start=1, metrics={"train/loss": "10 2.5 1\n11 2.0 2 ds digest\n"})
    assert run_of(tmp_path).series("loss").to_dict() == {1: 2.5, 2: 2.0}


def test_old_lines_without_step_use_line_order(tmp_path):
    file_run(tmp_path, "a", start=1, metrics={"loss": "10 3.0\n11 2.0\n12 1.0\n"})
    piece = read_dir(tmp_path)
    assert piece.frames[0][1]["step"].tolist() == [0, 1, 2]
    assert "no step" in piece.notes[0].message


def test_garbage_and_truncated_lines_are_noted_not_fatal(tmp_path):
    text = "10 1.0 1\n\u00e9\u00e8 garbage\n\x00\x01\n11 abc 2\n12 0.5 3\n13 0.4"
    file_run(tmp_path, "a", start=1, metrics={"loss": text})
    piece = read_dir(tmp_path)
    frame = piece.frames[0][1]
    assert frame["step"].tolist() == [1, 3] and frame["line"].tolist() == [1, 5]
    garbage = [n for n in piece.notes if "skipped" in n.message]
    truncated = [n for n in piece.notes if "cut short" in n.message]
    assert garbage[0].count == 3 and garbage[0].line == 2 and truncated[0].line == 6


def test_repeated_steps_after_a_resume_make_a_restart(tmp_path):
    file_run(tmp_path, "a", start=1, metrics={"loss": "1 3.0 1\n2 2.0 2\n3 1.0 3\n4 9.0 2\n5 8.0 3\n"})
    run = run_of(tmp_path)
    assert run.series("loss").to_dict() == {1: 3.0, 2: 9.0, 3: 8.0}
    assert [e.step for e in run.events_of("restart")] == [2]


def test_several_runs_read_the_most_recent_with_metrics_and_name_the_others(tmp_path):
    file_run(tmp_path, "old", start=100, name="first", metrics={"loss": "1 5.0 1\n"})
    file_run(tmp_path, "new", start=200, name="second", metrics={"loss": "1 7.0 1\n"})
    file_run(tmp_path, "parent", start=300, name="sweep-parent")  # no metrics
    piece = read_dir(tmp_path)
    assert len(piece.frames) == 1 and piece.frames[0][1]["value"].tolist() == [7.0]
    (note,) = piece.notes
    assert "first (old)" in note.message and "sweep-parent (parent)" in note.message and note.count == 2


def test_param_values_get_their_types():
    assert [mlflow.parse_param(t) for t in ("3", "1e-4", "True", "None", "adamw", " 0.9 ")] == [
        3, 1e-4, True, None, "adamw", 0.9]


def test_failed_run_status_is_an_event(tmp_path):
    file_run(tmp_path, "a", start=1, metrics={"loss": "1 1.0 1\n"}, status=4)
    (event,) = read_dir(tmp_path).events
    assert event.kind == "error" and "FAILED" in event.text


def test_unrelated_files_are_not_claimed(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "loss.txt").write_text("1 2 3\n")
    (tmp_path / "other.db").write_bytes(b"not sqlite")
    assert not mlflow.sniff(tmp_path / "metrics" / "loss.txt") and not mlflow.sniff(tmp_path / "other.db")


# --- crafted SQLite stores --------------------------------------------------------------------------------------------

def make_db(path: Path, runs: list[tuple], metrics: list[tuple], params: list[tuple] = (), wal: bool = False):
    connection = sqlite3.connect(path)
    if wal:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(
        "CREATE TABLE runs (run_uuid TEXT, name TEXT, status TEXT, start_time INTEGER, lifecycle_stage TEXT);"
        "CREATE TABLE metrics (key TEXT, value REAL, timestamp INTEGER, run_uuid TEXT, step INTEGER, is_nan BOOL);"
        "CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT);")
    connection.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?)", runs)
    connection.executemany("INSERT INTO metrics VALUES (?, ?, 0, ?, ?, ?)", metrics)
    connection.executemany("INSERT INTO params VALUES (?, ?, ?)", params)
    connection.commit()
    connection.close()


def test_sqlite_is_nan_and_dbl_max(tmp_path):
    make_db(tmp_path / "mlflow.db", [("r1", "x", "FINISHED", 1, "active")], [
        ("loss", 0.0, "r1", 1, 1), ("loss", 2.0, "r1", 2, 0), ("gn", sys.float_info.max, "r1", 1, 0),
        ("gn", -sys.float_info.max, "r1", 2, 0)])
    run = run_of(tmp_path)
    assert math.isnan(run.series("loss")[1]) and run.series("loss")[2] == 2.0
    assert run.series("gn").tolist() == [math.inf, -math.inf]


def test_sqlite_several_runs_pick_the_most_recent_with_metrics(tmp_path):
    make_db(tmp_path / "mlflow.db",
            [("r1", "old", "FINISHED", 1, "active"), ("r2", "new", "FAILED", 2, "active"),
             ("r3", "empty", "RUNNING", 3, "active")],
            [("loss", 1.0, "r1", 1, 0), ("loss", 5.0, "r2", 1, 0)], [("lr", "0.1", "r2"), ("lr", "0.5", "r1")])
    piece = read_dir(tmp_path)
    assert piece.frames[0][1]["value"].tolist() == [5.0]
    assert [(n, v) for n, v, _, _ in piece.hparams] == [("lr", 0.1)]
    assert "old (r1)" in piece.notes[0].message and "empty (r3)" in piece.notes[0].message
    assert piece.events[0].kind == "error"


def test_sqlite_wal_database_is_read_without_creating_files(tmp_path):
    make_db(tmp_path / "mlflow.db", [("r1", "x", "FINISHED", 1, "active")], [("loss", 1.5, "r1", 1, 0)], wal=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_of(tmp_path).series("loss").tolist() == [1.5]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_corrupt_sqlite_is_a_note(tmp_path):
    make_db(tmp_path / "mlflow.db", [("r1", "x", "FINISHED", 1, "active")], [("loss", 1.5, "r1", 1, 0)])
    assert mlflow.sniff(tmp_path / "mlflow.db")
    data = (tmp_path / "mlflow.db").read_bytes()
    (tmp_path / "mlflow.db").write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    piece = mlflow.read([tmp_path / "mlflow.db"], tmp_path)
    assert piece.frames == [] and "unreadable" in piece.notes[0].message


def test_sqlite_that_is_not_mlflow_is_not_claimed(tmp_path):
    connection = sqlite3.connect(tmp_path / "optuna.db")
    connection.execute("CREATE TABLE trials (id INTEGER)")
    connection.close()
    assert not mlflow.sniff(tmp_path / "optuna.db")


# --- the clock: every point's timestamp (ms), kept as `wall_time` from the training loss's points ----------------

@pytest.mark.parametrize("root", [FILESTORE, SQLITE], ids=["filestore", "sqlite"])
def test_real_store_keeps_the_loss_points_timestamps_as_the_clock(root):
    run = run_of(root)
    clock, loss = run.series("wall_time"), run.series("loss")
    assert list(clock.index) == list(loss.index) and clock.dtype == "float64"
    assert 1.79e9 < clock.iloc[0] < 1.8e9 and clock.is_monotonic_increasing  # seconds since the epoch
    if root == FILESTORE:  # cited where the loss point was written
        file, line = run.point("wall_time", 3)
        stamp = (FILESTORE / file).read_text().splitlines()[line - 1].split()[0]
        assert file.endswith("/metrics/loss") and clock[3] == int(stamp) / 1000


def test_filestore_clock_is_the_train_loss_s_not_the_eval_loss_s(tmp_path):
    file_run(tmp_path, "a", start=1, metrics={"train/loss": "1000000000000 2.5 1\n1000000001500 2.0 2\n",
                                              "eval/loss": "1000000009000 2.4 2\n"})
    run = run_of(tmp_path)
    assert run.series("wall_time").to_dict() == {1: 1e9, 2: 1e9 + 1.5}
    assert [frame["name"].iloc[0] for _, frame in read_dir(tmp_path).frames] == ["eval/loss", "train/loss"]


def test_sqlite_clock_from_the_timestamp_column(tmp_path):
    make_db(tmp_path / "mlflow.db", [("r1", "x", "FINISHED", 1, "active")],
            [("loss", 2.0, "r1", 1, 0), ("loss", 1.0, "r1", 2, 0)])
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        connection.execute("UPDATE metrics SET timestamp = 1700000000000 + 250 * step")
    assert run_of(tmp_path).series("wall_time").to_dict() == {1: 1700000000.25, 2: 1700000000.5}


def test_timestamps_that_are_no_time_give_no_clock(tmp_path):
    file_run(tmp_path, "a", start=1, metrics={"loss": "10 2.5 1\n11 2.0 2\n"})
    assert not run_of(tmp_path).has("wall_time")
