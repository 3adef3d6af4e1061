"""Bad input from a red-team pass: each case gets one line naming the file and exit 2, or is read with a note; never
a traceback, a hang, a silent skip, or a change to the user's files."""

from __future__ import annotations

import builtins
import io
import json
import os
import threading

import pytest
from click.testing import CliRunner

from analyzer.cli import diagnose_command
from analyzer.errors import InputError
from analyzer.ingest import read_run
from tests.ingest.binary_writers import tb_event, tb_file, tb_simple

METRICS = "".join(json.dumps({"step": s, "loss": 3.0 - 0.1 * s}) + "\n" for s in range(1, 11))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _one_line_error(result) -> str:
    """The error on stderr: one line, exit 2 (stdout may already hold the run overview)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    return lines[0]


@pytest.fixture
def unreadable(monkeypatch):
    """Make files unreadable for this test, as chmod 000 would for a user who is not root."""
    denied: set[str] = set()
    real_open = io.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    return lambda path: denied.add(os.path.realpath(path))


# --- ingest: one broken file among good ones ------------------------------------------------------------------------

def test_a_torn_trainer_state_beside_good_metrics_is_a_note(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(METRICS)
    (tmp_path / "trainer_state.json").write_text("")  # killed as it was written
    run = read_run(tmp_path)
    assert len(run.series("loss")) == 10
    assert any(n.file == "trainer_state.json" and "not valid JSON" in n.message for n in run.notes)


def test_a_lone_torn_trainer_state_is_still_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "trainer_state.json").write_text('{\n  "log_history": [{"st')
    with pytest.raises(InputError) as err:
        read_run(tmp_path)
    assert err.value.path == "trainer_state.json" and err.value.line == 2


def test_an_unreadable_log_is_a_note_not_silently_skipped(tmp_path, unreadable):
    (tmp_path / "metrics.jsonl").write_text(METRICS)
    (tmp_path / "other.jsonl").write_text(METRICS)
    unreadable(tmp_path / "metrics.jsonl")
    run = read_run(tmp_path)
    assert any(n.file == "metrics.jsonl" and "Permission denied" in n.message for n in run.notes)


def test_only_unreadable_logs_name_the_file(tmp_path, unreadable):
    (tmp_path / "metrics.jsonl").write_text(METRICS)
    unreadable(tmp_path / "metrics.jsonl")
    with pytest.raises(InputError) as err:
        read_run(tmp_path)
    assert err.value.path.endswith("metrics.jsonl") and "Permission denied" in str(err.value)


def test_an_unreadable_lightning_version_does_not_hide_the_others(tmp_path, unreadable):
    for version in (0, 1):
        folder = tmp_path / "lightning_logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("epoch,step,train_loss\n" + "".join(
            f"0,{s},{3.0 - 0.1 * s}\n" for s in range(10 * version, 10 * version + 10)))
    unreadable(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    run = read_run(tmp_path)
    assert run.last_step == 19
    assert any(n.file == "lightning_logs/version_0/metrics.csv" and "Permission denied" in n.message
               for n in run.notes)


def test_a_cut_event_file_with_no_whole_record_says_so(tmp_path):
    data = tb_file(tb_event(1, tb_simple("loss", 2.0)))
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(data[:11])  # cut inside the first record's header
    with pytest.raises(InputError) as err:
        read_run(tmp_path)
    assert "events.out.tfevents.1.host.1.0" in str(err.value) and "cut short" in str(err.value)


def _within(seconds: float, func):
    """func's result, failing (not hanging the suite) when it blocks longer than `seconds`."""
    result = []
    worker = threading.Thread(target=lambda: result.append(func()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return result[0]


def test_a_fifo_in_the_run_dir_does_not_hang(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(METRICS)
    for name in ("train.log", "events.out.tfevents.1.host.1.0", "model.pt"):
        os.mkfifo(tmp_path / name)
    run = _within(30, lambda: read_run(tmp_path))
    assert len(run.series("loss")) == 10


def test_a_fifo_given_as_the_run_is_an_error(tmp_path):
    os.mkfifo(tmp_path / "metrics.jsonl")
    with pytest.raises(InputError) as err:
        read_run(tmp_path / "metrics.jsonl")
    assert "not a folder or a regular file" in str(err.value)


def test_a_trainer_state_step_beyond_int64_is_ignored_with_a_note(tmp_path):
    history = [{"step": 1, "loss": 2.0}, {"step": 2 ** 63, "loss": 1.0}, {"step": 1e30, "loss": 1.0}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history, "global_step": 2 ** 64}))
    run = read_run(tmp_path)
    assert run.series("loss").to_dict() == {1: 2.0}
    assert any("without a step" in n.message for n in run.notes)



def test_a_very_deep_folder_tree_is_walked_not_a_recursion_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(METRICS)
    deep = tmp_path
    for _ in range(1100):  # deeper than Python's recursion limit (mkdir(parents=True) recurses too)
        deep = deep / "d"
        deep.mkdir()
    (deep / "train.log").write_text("step 20 loss 1.0\n")
    try:
        assert read_run(tmp_path).last_step == 20
    finally:  # from the bottom up: shutil.rmtree (pytest's clean-up) recurses as well
        (deep / "train.log").unlink()
        while deep != tmp_path:
            deep.rmdir()
            deep = deep.parent


def test_the_walk_skips_links_to_folders_and_hidden_and_own_output(tmp_path):
    from analyzer.ingest import walk

    for name in ("a", "b/c", ".git", ".hydra", "postmortem"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "f.log").write_text("x")
    (tmp_path / "z.log").write_text("x")
    (tmp_path / ".hidden.log").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path)] == [
        "z.log", ".hydra/f.log", "a/f.log", "b/c/f.log"]


def test_a_zero_filled_event_file_tail_is_skipped_at_once(tmp_path):
    import time

    from analyzer.ingest import tensorboard

    data = tb_file(*(tb_event(s, tb_simple("loss", 2.0 - s / 10)) for s in range(1, 6))) + bytes(32 << 20)
    notes = []
    start = time.monotonic()
    starts, _ = tensorboard.frame_records(data, "events.out.tfevents.1.host.1.0", notes)
    assert time.monotonic() - start < 1.0  # was a Python loop over two million empty "records"
    assert len(starts) == 6 and "not a valid record" in notes[0].message


LOG = "".join(f"step {s} loss {3.0 - 0.1 * s:.1f}\n" for s in range(1, 11))


def test_a_log_with_a_zero_filled_tail_is_read(tmp_path):
    (tmp_path / "train.log").write_bytes(LOG.encode() + bytes(10_000))  # the crash left the file's end as NULs
    run = read_run(tmp_path)
    assert len(run.series("loss")) == 10


def test_nul_bytes_inside_a_log_skip_only_their_line(tmp_path):
    (tmp_path / "train.log").write_bytes(b"step 1 loss 3.0\n\x00\x00step 2 loss 2.9\nstep 3 loss 2.8\n")
    run = read_run(tmp_path)
    assert run.series("loss").to_dict() == {1: 3.0, 3: 2.8}
    assert any(n.line == 2 for n in run.notes)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_a_utf16_log_with_a_byte_order_mark_is_read(tmp_path, encoding):
    (tmp_path / "train.log").write_bytes(("\ufeff" + LOG.replace("\n", "\r\n")).encode(encoding))
    run = read_run(tmp_path)
    assert run.series("loss").to_dict()[10] == pytest.approx(2.0)
    assert any("UTF-16" in n.message for n in run.notes)


def test_a_trainer_state_with_a_zero_filled_tail_is_read_with_a_note(tmp_path):
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    (tmp_path / "trainer_state.json").write_bytes(json.dumps({"log_history": history}).encode() + bytes(4096))
    run = read_run(tmp_path)
    assert run.series("loss").to_dict() == {1: 2.0, 2: 1.5}
    assert any("4096 NUL bytes" in n.message for n in run.notes)


def test_a_checkpoint_zip_bomb_is_refused_before_loading(tmp_path, monkeypatch):
    import zipfile

    import torch

    from analyzer.ingest import checkpoints

    (tmp_path / "metrics.jsonl").write_text(METRICS)
    torch.save({"model": {"w": torch.zeros(4)}}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as plain, \
            zipfile.ZipFile(tmp_path / "step_10.pt", "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        for name in plain.namelist():  # data.pkl padded with zeros after its STOP: inflates far past its size
            bomb.writestr(name, plain.read(name) + (bytes(100_000) if name.endswith("data.pkl") else b""))
    monkeypatch.setattr(checkpoints, "MAX_INFLATED_BYTES", 50_000)
    run = read_run(tmp_path)
    errors = {c.path: c.error for c in run.checkpoints}
    assert errors["plain.pt"] is None and errors["step_10.pt"].startswith("refused:")

# --- the command line: where reports go ------------------------------------------------------------------------------

def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(METRICS)
    return run


def test_out_naming_an_existing_file_is_exit_2_and_the_file_is_kept(runner, tmp_path):
    run, out = _run_dir(tmp_path), tmp_path / "out"
    out.write_text("keep me")
    line = _one_line_error(runner.invoke(diagnose_command, [str(run), "--out", str(out)]))
    assert str(out) in line and "a file of that name exists" in line
    assert out.read_text() == "keep me"


def test_out_under_a_file_is_exit_2_naming_it(runner, tmp_path):
    run, blocker = _run_dir(tmp_path), tmp_path / "blocker"
    blocker.write_text("keep me")
    line = _one_line_error(runner.invoke(diagnose_command, [str(run), "--out", str(blocker / "reports")]))
    assert str(blocker) in line and "cannot write reports" in line


def test_default_out_that_is_a_users_file_is_exit_2_and_kept(runner, tmp_path):
    run = _run_dir(tmp_path)
    (run / "postmortem").write_text("the user's own notes")
    line = _one_line_error(runner.invoke(diagnose_command, [str(run)]))
    assert "postmortem" in line and "--out" in line
    assert (run / "postmortem").read_text() == "the user's own notes"


def test_an_unwritable_step_summary_is_exit_2_naming_it(runner, tmp_path, monkeypatch):
    run = _run_dir(tmp_path)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing" / "summary.md"))
    line = _one_line_error(runner.invoke(diagnose_command, [str(run), "--out", str(tmp_path / "r")]))
    assert "summary.md" in line


def test_an_empty_run_dir_argument_is_not_the_current_folder(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(_run_dir(tmp_path))
    line = _one_line_error(runner.invoke(diagnose_command, ["", "--json"]))
    assert "empty" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_run_dir_is_one_line(runner, tmp_path):
    run = _run_dir(tmp_path)
    run.chmod(0)
    try:
        line = _one_line_error(runner.invoke(diagnose_command, [str(run), "--json"]))
    finally:
        run.chmod(0o755)
    assert "not readable" in line


# --- MLflow SQLite ----------------------------------------------------------------------------------------------------

def _mlflow_db(path):
    import sqlite3

    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE runs (run_uuid TEXT, name TEXT, status TEXT, start_time INTEGER, end_time INTEGER,"
        " lifecycle_stage TEXT, experiment_id INTEGER);"
        "CREATE TABLE metrics (key TEXT, value REAL, timestamp INTEGER, run_uuid TEXT, step INTEGER, is_nan INTEGER);"
        "CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT);"
        "INSERT INTO runs VALUES ('r1', 'x', 'FINISHED', 1, 2, 'active', 0);"
        + "".join(f"INSERT INTO metrics VALUES ('loss', {3 - s / 10}, {s}, 'r1', {s}, 0);" for s in range(10)))
    connection.commit()
    connection.close()


def test_a_damaged_mlflow_db_says_why_it_gave_nothing(tmp_path):
    _mlflow_db(tmp_path / "mlflow.db")
    data = (tmp_path / "mlflow.db").read_bytes()
    (tmp_path / "mlflow.db").write_bytes(data[:100] + bytes(len(data) - 100))  # pages zeroed: malformed
    with pytest.raises(InputError) as err:
        read_run(tmp_path)
    assert "mlflow.db: MLflow database unreadable" in str(err.value)


def test_a_damaged_mlflow_db_beside_good_metrics_is_a_note(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(METRICS)
    (tmp_path / "mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 2000)
    run = read_run(tmp_path)
    assert len(run.series("loss")) == 10
    assert any(n.file == "mlflow.db" and "unreadable" in n.message for n in run.notes)


def test_a_locked_mlflow_db_is_read_without_a_long_wait(tmp_path):
    import sqlite3
    import time

    _mlflow_db(tmp_path / "mlflow.db")
    writer = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        run = read_run(tmp_path)
        took = time.monotonic() - start
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert len(run.series("loss")) == 10
    assert took < 4.0  # sqlite's default busy wait is 5 s per open
