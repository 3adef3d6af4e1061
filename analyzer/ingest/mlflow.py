"""MLflow runs: the file store (`mlruns/<experiment>/<run>/metrics|params|meta.yaml`) and the SQLite store.

A store can hold many runs; the diagnosis is about one, so the most recent run that logged metrics is read and the
others are named in a Note. The SQLite file is opened read-only and never written (not even a journal).
"""

from __future__ import annotations

import math
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzer.ingest import clock
from analyzer.run import Event, Ingested, Note
from analyzer.ingest.paths import relative

FORMAT = "mlflow"

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
RUN_PARTS = ("metrics", "params", "tags")
# `timestamp value [step [dataset_name dataset_digest]]`, as FileStore._get_metric_from_line accepts.
METRIC_LINE = r"^\s*(-?\d+) (\S+)(?: (-?\d+)(?: \S+ \S+)?)?\s*$"
NAN_TOKENS = re.compile(r"^[+-]?(nan|inf|infinity)$", re.I)
# The SQLite store cannot hold inf: it writes +-sys.float_info.max instead (and NaN as 0.0 with is_nan = 1).
DBL_MAX = sys.float_info.max
RUN_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
FAILED_STATUSES = {"FAILED", "KILLED"}
MAX_NAMED_RUNS = 10  # runs named in the "not read" note
MAX_STEP = 2**53  # a step beyond this is not exact as a float: damage, not a training step
LOCK_WAIT_S = 1.0  # a writer holding the database locked longer than this: read it as it is on disk (immutable)


def sniff(path: Path) -> bool:
    if path.suffix.lower() in SQLITE_SUFFIXES:
        return _is_mlflow_db(path)
    return _run_dir(path) is not None or (path.name == "meta.yaml" and _is_experiment_meta(path))


def _run_dir(path: Path) -> Path | None:
    """The run folder a file-store file belongs to: the folder holding meta.yaml next to metrics/ params/ tags/."""
    if path.name == "meta.yaml":
        folder = path.parent
        return folder if any((folder / part).is_dir() for part in RUN_PARTS) else None
    for ancestor in list(path.parents)[:8]:  # metric and param names may contain "/" (nested folders)
        if ancestor.name in RUN_PARTS and (ancestor.parent / "meta.yaml").is_file():
            return ancestor.parent
    return None


def _is_experiment_meta(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return b"experiment_id:" in head and b"artifact_location:" in head


def _is_mlflow_db(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                return False
    except OSError:
        return False
    # a damaged database by MLflow's name is still claimed, so that the reader says why it gave nothing
    damaged = path.stem.lower().startswith("mlflow")
    try:
        connection = _connect(path)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.Error:
        return damaged
    return {"metrics", "params", "runs"} <= tables or damaged


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT)
    runs: dict[Path, _FileRun] = {}
    for path in sorted(paths):
        if path.suffix.lower() in SQLITE_SUFFIXES:
            _read_db(path, root, out)
            continue
        folder = _run_dir(path)
        if folder is None:
            continue  # an experiment's meta.yaml: nothing to read
        run = runs.setdefault(folder, _FileRun(folder))
        part = _part_of(path, folder)
        if part is not None:
            run.files.setdefault(part[0], []).append((part[1], path))
    if runs:
        _read_file_store(list(runs.values()), root, out)
    return out


# --- file store -------------------------------------------------------------------------------------------------------

@dataclass
class _FileRun:
    folder: Path
    files: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)  # part -> [(key, path)]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("run_name") or self.folder.name)


def _part_of(path: Path, folder: Path) -> tuple[str, str] | None:
    relative = path.relative_to(folder).parts
    if len(relative) >= 2 and relative[0] in RUN_PARTS:
        return relative[0], "/".join(relative[1:])
    return None


def _read_file_store(runs: list[_FileRun], root: Path, out: Ingested) -> None:
    for run in runs:
        run.meta = _load_meta(run.folder / "meta.yaml", root, out)
    chosen = _choose(runs, lambda r: bool(r.files.get("metrics")), lambda r: _number(r.meta.get("start_time")))
    _note_others(out, [r for r in runs if r is not chosen], lambda r: f"{r.name} ({r.folder.name})",
                 relative(chosen.folder, root))
    metric_files = []
    for key, path in sorted(chosen.files.get("metrics", [])):
        frame = _read_metric_file(path, relative(path, root), out.notes)
        metric_files.append((relative(path, root), frame.assign(name=key)))
    # Every point carries its time: the clock is the training loss's (its metric file's times).
    loop = clock.frames_loop_metric(frame for _, frame in metric_files)
    for rel, frame in metric_files:
        out.add_frame(rel, frame.drop(columns="time"))
        out.add_clock(rel, clock.clock_rows(frame, frame["time"].to_numpy(), loop))
    for key, path in sorted(chosen.files.get("params", [])):
        try:
            value = path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            out.notes.append(Note(relative(path, root), f"unreadable: {error.strerror or error}"))
            continue
        out.add_hparams({key: parse_param(value)}, relative(path, root))
    status = chosen.meta.get("status")
    status = RUN_STATUS.get(status, status) if isinstance(status, int) else status
    _status_event(out, status, relative(chosen.folder / "meta.yaml", root))


def _load_meta(path: Path, root: Path, out: Ingested) -> dict[str, Any]:
    import yaml

    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, yaml.YAMLError) as error:
        out.notes.append(Note(relative(path, root), f"run metadata unreadable ({type(error).__name__}); ignored"))
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_metric_file(path: Path, rel: str, notes: list[Note]) -> pd.DataFrame:
    """One metric file: a frame of step, value, line and time (seconds since the epoch, NaN where unusable).
    Whole-buffer parsing, no Python loop per line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        notes.append(Note(rel, f"unreadable: {error.strerror or error}"))
        return pd.DataFrame({"step": [], "value": [], "line": [], "time": []})
    lines = pd.Series(text.split("\n"))
    truncated = not text.endswith("\n") and text != ""
    parts = lines.str.extract(METRIC_LINE)
    blank = lines.str.strip().eq("")
    matched = parts[0].notna()
    values = pd.to_numeric(parts[1], errors="coerce")
    numeric = values.notna() | parts[1].fillna("").str.match(NAN_TOKENS)
    good = matched & numeric
    steps = pd.to_numeric(parts[2], errors="coerce")
    has_step = steps.abs().lt(MAX_STEP)  # NaN (no step) compares False
    old_format = bool(good.any()) and not bool((good & has_step).any())  # MLflow < 1.0 wrote no step
    if not old_format:
        good &= has_step  # a line without step among lines with one is damage, not an old file
    bad = ~good & ~blank
    if truncated and bad.iloc[-1]:  # a writer killed mid-line: normal, not garbage
        notes.append(Note(rel, "the last line is cut short (the writer stopped mid-line); ignored",
                          line=len(lines)))
        bad.iloc[-1] = False
    if bad.any():
        notes.append(Note(rel, "lines that are not `timestamp value [step]` were skipped",
                          line=int(np.flatnonzero(bad.to_numpy())[0]) + 1, count=int(bad.sum())))
    rows = np.flatnonzero(good.to_numpy())
    if old_format:  # MLflow itself reads them all as step 0, which would collapse the series
        notes.append(Note(rel, "metric lines carry no step (an old MLflow file); the line order is used as "
                               "the step", line=int(rows[0]) + 1))
        step_values = np.arange(len(rows), dtype=np.int64)
    else:
        step_values = pd.to_numeric(parts[2].iloc[rows]).astype("int64").to_numpy()  # exact: parsed as int
    times = clock.epoch_seconds(pd.to_numeric(parts[0].iloc[rows], errors="coerce").to_numpy(dtype="float64"))
    return pd.DataFrame({"step": step_values, "value": values.iloc[rows].to_numpy(dtype="float64"),
                         "line": rows.astype("int64") + 1, "time": times})


def parse_param(text: str) -> Any:
    """MLflow stores every param as text: give numbers and booleans back their type."""
    value = text.strip()
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# --- SQLite store -----------------------------------------------------------------------------------------------------

def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection that creates nothing beside the file.

    A rollback-journal database (MLflow's default) opens with mode=ro. A WAL database would get a `-shm` file
    created even by a read-only reader, so it is opened `immutable` (and the caller notes an unmerged `-wal`);
    so is a database that mode=ro cannot open (a hot journal, a read-only folder).
    """
    uri = path.resolve().as_uri()
    with open(path, "rb") as handle:
        header = handle.read(20)
    wal = len(header) == 20 and header[18] == 2
    if not wal:
        try:
            connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
            connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            return connection
        except sqlite3.OperationalError:
            connection.close()
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=LOCK_WAIT_S)


def _read_db(path: Path, root: Path, out: Ingested) -> None:
    rel = relative(path, root)
    if Path(f"{path}-wal").is_file():
        out.notes.append(Note(rel, "changes still in the write-ahead log (-wal file) were not read: the database "
                                   "is opened without touching it"))
    try:
        connection = _connect(path)
        try:
            _read_db_runs(connection, rel, out)
        finally:
            connection.close()
    except sqlite3.Error as error:
        out.notes.append(Note(rel, f"MLflow database unreadable ({error}); ignored"))


def _read_db_runs(connection: sqlite3.Connection, rel: str, out: Ingested) -> None:
    runs = connection.execute(
        "SELECT run_uuid, name, status, start_time, lifecycle_stage, "
        "EXISTS(SELECT 1 FROM metrics m WHERE m.run_uuid = runs.run_uuid) FROM runs").fetchall()
    if not runs:
        out.notes.append(Note(rel, "the MLflow database holds no run"))
        return
    runs.sort(key=lambda r: r[0])
    chosen = _choose(runs, lambda r: bool(r[5]) and r[4] != "deleted", lambda r: _number(r[3]))
    _note_others(out, [r for r in runs if r is not chosen], lambda r: f"{r[1] or '?'} ({r[0]})",
                 f"{rel} run {chosen[1] or chosen[0]}")
    run_id = chosen[0]
    rows = connection.execute(
        "SELECT rowid, key, value, step, is_nan, timestamp FROM metrics WHERE run_uuid = ? ORDER BY rowid", (run_id,)
    ).fetchall()
    if rows:
        rowid, keys, values, steps, is_nan, stamps = (np.asarray(column) for column in zip(*rows))
        values = values.astype("float64")
        values = np.where(is_nan.astype(bool), np.nan, values)
        values = np.where(values >= DBL_MAX, np.inf, np.where(values <= -DBL_MAX, -np.inf, values))
        frame = pd.DataFrame({"step": steps.astype("int64"), "name": keys.astype(object), "value": values,
                              "line": rowid.astype("int64")})
        # One frame per metric key, in logging order, so a step that goes back is a restart of that metric only.
        for _, group in frame.groupby("name", sort=True):
            out.frames.append((rel, group.reset_index(drop=True)))
        # Every point carries its time (ms): the clock is the training loss's.
        times = clock.epoch_seconds(pd.to_numeric(pd.Series(stamps), errors="coerce").to_numpy(dtype="float64"))
        out.add_clock(rel, clock.clock_rows(frame, times, clock.frames_loop_metric([frame])))
    for key, value in connection.execute("SELECT key, value FROM params WHERE run_uuid = ? ORDER BY key",
                                         (run_id,)):
        out.add_hparams({str(key): parse_param(str(value))}, rel)
    _status_event(out, chosen[2], rel)


# --- shared -----------------------------------------------------------------------------------------------------------

def _choose(runs: list, has_metrics, start_time):
    """The run to diagnose: the most recently started one among those that logged metrics."""
    candidates = [r for r in runs if has_metrics(r)] or runs
    return max(candidates, key=lambda r: (start_time(r) if start_time(r) is not None else -math.inf))


def _note_others(out: Ingested, others: list, describe, chosen: str) -> None:
    if others:
        names = ", ".join(describe(r) for r in others[:MAX_NAMED_RUNS])
        more = f" and {len(others) - MAX_NAMED_RUNS} more" if len(others) > MAX_NAMED_RUNS else ""
        out.notes.append(Note(chosen, f"the MLflow store holds {len(others) + 1} runs; only the most recent one "
                                      f"with metrics ({chosen}) was read, not {names}{more}", count=len(others)))


def _status_event(out: Ingested, status: Any, rel: str) -> None:
    if isinstance(status, str) and status.upper() in FAILED_STATUSES:
        out.events.append(Event("error", None, f"MLflow run status: {status.upper()}", rel, None,
                                {"status": status.upper()}))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


