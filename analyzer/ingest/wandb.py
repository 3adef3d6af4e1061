"""W&B offline runs: history and config decoded from the `run-<id>.wandb` record file, else the files/ W&B wrote.

Offline runs keep history and config only inside the `.wandb` file (wandb >= 0.17 writes no config.yaml or
wandb-history.jsonl until synced): a LevelDB-log framing of protobuf `Record`s, decoded with `_protobuf` (field
numbers from wandb/proto/wandb_internal.proto, checked against the installed wandb 0.31 descriptors).
`files/output.log` is the console; it is handed to the text-log reader for its warnings, and for its numbers only
when the run has no history of its own (otherwise the same values would be read twice, rounded). Without an
output.log (wandb 0.16 offline writes none), the console is rebuilt from the `output_raw` / `output` records of the
.wandb file and read the same way, each line cited by the record it starts in.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzer.ingest import _protobuf as pb
from analyzer.ingest import clock
from analyzer.run import Event, Ingested, Note
from analyzer.ingest.paths import relative

FORMAT = "wandb"

RUN_DIR = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9]+)$")
# What W&B itself writes into a run folder; anything else under files/ is the user's (wandb.save) and left to
# the other readers.
WANDB_FILES = {"output.log", "config.yaml", "wandb-summary.json", "wandb-metadata.json", "wandb-history.jsonl",
               "wandb-events.jsonl", "requirements.txt", "conda-environment.yaml", "diff.patch", "debug.log",
               "debug-internal.log", "debug-core.log"}
WANDB_LOGS = {"debug.log", "debug-internal.log", "debug-core.log", "debug-cli.log"}  # W&B's own, not training

# The .wandb file: a 7-byte header, then LevelDB log blocks of 32 KiB; chunks are (crc32, length, type) + data,
# where crc32 is zlib's CRC-32 of the type byte and the data.
FILE_HEADER = struct.Struct("<4sHB")
FILE_IDENT, FILE_MAGIC = b":W&B", 0xBEE1
BLOCK_SIZE = 32768
CHUNK_HEADER = struct.Struct("<IHB")
CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST = 1, 2, 3, 4

# wandb_internal.proto field numbers.
RECORD_HISTORY, RECORD_CONFIG, RECORD_RUN, RECORD_EXIT = 2, 5, 17, 18
RECORD_OUTPUT, RECORD_OUTPUT_RAW = 4, 13  # console text: OutputRecord / OutputRawRecord, the same fields
OUTPUT_TYPE, OUTPUT_TIMESTAMP, OUTPUT_LINE = 1, 2, 3
TIMESTAMP_SECONDS, TIMESTAMP_NANOS = 1, 2  # google.protobuf.Timestamp
STDERR, STDOUT = 0, 1  # OutputType; STDERR is the proto3 default, so an absent output_type means stderr
HISTORY_ITEM, HISTORY_STEP, STEP_NUM = 1, 2, 1
ITEM_KEY, ITEM_NESTED_KEY, ITEM_VALUE_JSON = 1, 2, 16
ITEM_BOOLEAN, ITEM_INTEGER, ITEM_NUMBER = 4, 5, 6  # HistoryItem's typed oneof (integer is a zigzag sint64)
CONFIG_UPDATE = 1
RUN_ID, RUN_CONFIG = 1, 4
EXIT_CODE = 1
STEP_KEY, TIME_KEY = "_step", "_timestamp"


def sniff(path: Path) -> bool:
    if path.suffix == ".wandb":
        return True
    if path.parent.name == "wandb" and path.name in WANDB_LOGS:  # links to the latest run's debug logs
        return True
    folder = _run_folder(path)
    return folder is not None and path.name in WANDB_FILES


def _run_folder(path: Path) -> Path | None:
    """The W&B run folder (`offline-run-<date>_<time>-<id>`) holding this file (in files/ or logs/)."""
    for ancestor in list(path.parents)[:2]:
        if RUN_DIR.match(ancestor.name):
            return ancestor
    return None


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT)
    runs: dict[Path, _Run] = {}
    for path in sorted(paths):
        folder = path.parent if path.suffix == ".wandb" else _run_folder(path)
        if folder is not None:  # else W&B's own debug logs beside the runs: nothing to read
            runs.setdefault(folder, _Run(folder)).files.append(path)
    chosen = _choose_run(runs, out, root)
    for run in chosen:  # one run id, its folders in start order: a resume continues the same run
        _read_run(run, root, out)
    return out


@dataclass
class _Run:
    folder: Path
    files: list[Path] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        match = RUN_DIR.match(self.folder.name)
        return match[2] if match else self.folder.name

    @property
    def started(self) -> str:
        match = RUN_DIR.match(self.folder.name)
        return match[1] if match else ""


def _choose_run(runs: dict[Path, _Run], out: Ingested, root: Path) -> list[_Run]:
    """The folders of the most recently started run id; other run ids are named in a Note."""
    by_id: dict[str, list[_Run]] = {}
    for run in sorted(runs.values(), key=lambda r: (r.started, r.folder.name)):
        by_id.setdefault(run.run_id, []).append(run)
    if not by_id:
        return []
    latest = max(by_id, key=lambda run_id: by_id[run_id][-1].started)
    others = sorted(run_id for run_id in by_id if run_id != latest)
    if others:
        out.notes.append(Note(relative(by_id[latest][-1].folder, root),
                              f"{len(by_id)} W&B runs found; only the most recent ({latest}) was read, not "
                              + ", ".join(others), count=len(others)))
    return by_id[latest]


def _read_run(run: _Run, root: Path, out: Ingested) -> None:
    named = {p.name: p for p in run.files}
    record_files = [_read_wandb_file(path, relative(path, root), out) for path in run.files if path.suffix == ".wandb"]
    has_history = any(f.history_lines.size for f in record_files)
    if not has_history and "wandb-history.jsonl" in named:
        has_history = _read_history_jsonl(named["wandb-history.jsonl"], root, out)
    if "config.yaml" in named:
        _read_config_yaml(named["config.yaml"], root, out)
    if "output.log" in named:  # W&B's own rendering of the console: the records would only repeat it
        _read_console(named["output.log"], root, out, keep_numbers=not has_history)
        return
    for record_file in record_files:
        if record_file.console:
            _read_record_console(record_file, out, keep_numbers=not has_history)


# --- the .wandb record file -------------------------------------------------------------------------------------------

def records(data: bytes, rel: str, notes: list[Note]) -> list[bytes]:
    """The Record payloads of a .wandb file, reassembled from their chunks; damage is noted, never raised."""
    if len(data) < FILE_HEADER.size:
        if data:
            notes.append(Note(rel, "too short to be a W&B record file"))
        return []
    ident, magic, _version = FILE_HEADER.unpack_from(data)
    if ident != FILE_IDENT or magic != FILE_MAGIC:
        notes.append(Note(rel, "not a W&B record file (wrong header); ignored"))
        return []
    found: list[bytes] = []
    pending: list[bytes] | None = None
    bad_crc = broken = 0
    pos, size = FILE_HEADER.size, len(data)
    while pos < size:
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < CHUNK_HEADER.size:  # block trailer: zero padding
            pos += left
            continue
        if pos + CHUNK_HEADER.size > size:
            break
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        if start + length > size or length > left - CHUNK_HEADER.size:
            if start + length > size and kind in (CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST):
                notes.append(Note(rel, "the last record is cut short (the writer stopped mid-record); ignored",
                                  line=len(found) + 1))
            else:
                notes.append(Note(rel, f"corrupt chunk header at byte {pos}; the rest of the file was not read",
                                  line=len(found) + 1))
            return found
        chunk = data[start:start + length]
        pos = start + length
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            bad_crc += 1
            pending = None
            continue
        if kind == CHUNK_FULL:
            found.append(chunk)
            pending = None
        elif kind == CHUNK_FIRST:
            pending = [chunk]
        elif kind == CHUNK_MIDDLE and pending is not None:
            pending.append(chunk)
        elif kind == CHUNK_LAST and pending is not None:
            pending.append(chunk)
            found.append(b"".join(pending))
            pending = None
        else:
            broken += 1
            pending = None
    if bad_crc:
        notes.append(Note(rel, "chunks whose checksum is wrong (corrupt) were skipped", count=bad_crc))
    if broken:
        notes.append(Note(rel, "record fragments without their start were skipped", count=broken))
    if pending is not None:
        notes.append(Note(rel, "the last record is cut short (the writer stopped mid-record); ignored",
                          line=len(found) + 1))
    return found


@dataclass
class _RecordFile:
    """What one .wandb file holds besides what went into Ingested: its console text and where its history is."""

    rel: str
    console: list[tuple[int, int, str, float]] = field(default_factory=list)  # (record number, stream, text, time)
    history_lines: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # record numbers
    history_steps: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    history_times: np.ndarray = field(default_factory=lambda: np.empty(0))  # `_timestamp` (NaN where absent)


def _read_wandb_file(path: Path, rel: str, out: Ingested) -> _RecordFile:
    """History, config and exit code from one .wandb file into `out`; its console records and history positions."""
    found = _RecordFile(rel)
    try:
        data = path.read_bytes()
    except OSError as error:
        out.notes.append(Note(rel, f"unreadable: {error.strerror or error}"))
        return found
    steps, names, values, lines, point_history = [], [], [], [], []
    history_lines, history_steps, history_times = [], [], []
    config: dict[str, Any] = {}
    undecodable: list[int] = []
    for index, record in enumerate(records(data, rel, out.notes), start=1):
        try:
            message = pb.parse(record)
            if RECORD_HISTORY in message:
                step, points, time = _history(message[RECORD_HISTORY][-1], len(history_lines))
                history_lines.append(index)
                history_steps.append(step)
                history_times.append(time)
                for name, value in points:
                    steps.append(step)
                    names.append(name)
                    values.append(value)
                    lines.append(index)
                    point_history.append(len(history_lines) - 1)
            if RECORD_RUN in message:
                run_config = pb.last(pb.parse(message[RECORD_RUN][-1]), RUN_CONFIG)
                if run_config:
                    config.update(_config_items(run_config))
            if RECORD_CONFIG in message:
                config.update(_config_items(message[RECORD_CONFIG][-1]))
            if RECORD_EXIT in message:
                _exit_event(message[RECORD_EXIT][-1], rel, index, out)
            for kind in (RECORD_OUTPUT_RAW, RECORD_OUTPUT):
                if kind in message:
                    output = pb.parse(message[kind][-1])
                    text = pb.last(output, OUTPUT_LINE, b"")
                    if text and isinstance(text, bytes):
                        found.console.append((index, pb.last(output, OUTPUT_TYPE, STDERR),
                                              text.decode("utf-8", errors="replace"), _output_time(output)))
        except (pb.DecodeError, UnicodeDecodeError, ValueError, OverflowError):
            undecodable.append(index)
    if undecodable:
        out.notes.append(Note(rel, "records that are not a well-formed W&B Record were skipped",
                              line=undecodable[0], count=len(undecodable)))
    found.history_lines = np.asarray(history_lines, dtype=np.int64)
    found.history_times = np.asarray(history_times, dtype=np.float64)
    frame = pd.DataFrame({
        "step": np.asarray(steps, dtype=np.int64), "name": np.asarray(names, dtype=object),
        "value": np.asarray(values, dtype=np.float64), "line": np.asarray(lines, dtype=np.int64)})
    point_history = np.asarray(point_history, dtype=np.int64)
    frame, point_history, found.history_steps = _framework_steps(
        frame, point_history, np.asarray(history_steps, dtype=np.int64))
    out.add_frame(rel, frame)
    # Every history row carries `_timestamp`: the clock is that of the rows that log the training loss.
    point_times = clock.epoch_seconds(found.history_times)[point_history]
    out.add_clock(rel, clock.clock_rows(frame, point_times, clock.frames_loop_metric([frame])))
    if config:
        out.add_hparams(config, rel)
    return found


# The trainer's own step, logged in every row by HF Trainer's WandbCallback (`train/global_step`, which it makes the
# x-axis with define_metric) and Lightning's WandbLogger (`trainer/global_step`). W&B's `_step` counts log calls.
FRAMEWORK_STEPS = ("train/global_step", "trainer/global_step")


def _framework_steps(frame: pd.DataFrame, point_history: np.ndarray,
                     history_steps: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Steps in the trainer's own count where the rows log it (a row without it takes the step of the row before,
    the first rows the first one logged), so a W&B run cites the steps its trainer and checkpoints use; the
    framework-step values themselves are not metrics. Unchanged when no row logs one."""
    is_step = frame["name"].isin(FRAMEWORK_STEPS).to_numpy() & np.isfinite(frame["value"].to_numpy())
    if not is_step.any():
        return frame, point_history, history_steps
    per_row = np.full(len(history_steps), np.nan)
    per_row[point_history[is_step]] = frame["value"].to_numpy()[is_step]
    known = np.flatnonzero(np.isfinite(per_row))
    filled = per_row[known[np.maximum(np.searchsorted(known, np.arange(len(per_row)), side="right") - 1, 0)]]
    rows = filled.astype(np.int64)
    keep = ~frame["name"].isin(FRAMEWORK_STEPS).to_numpy()
    frame = frame.assign(step=rows[point_history])[keep].reset_index(drop=True)
    return frame, point_history[keep], rows


def _output_time(output: dict[int, list]) -> float:
    """Seconds since the epoch when the console text was written; NaN when the record has no timestamp."""
    raw = pb.last(output, OUTPUT_TIMESTAMP)
    if not isinstance(raw, bytes):
        return math.nan
    stamp = pb.parse(raw)
    seconds, nanos = pb.last(stamp, TIMESTAMP_SECONDS, 0), pb.last(stamp, TIMESTAMP_NANOS, 0)
    if not isinstance(seconds, int) or not isinstance(nanos, int) or not seconds:
        return math.nan
    return pb.as_int64(seconds) + nanos / 1e9


def _history(raw: bytes, sequence: int) -> tuple[int, list[tuple[str, float]], float]:
    """(step, [(metric, value)], `_timestamp` or NaN) of one HistoryRecord; non-numeric values (media, tables,
    text) are skipped."""
    message = pb.parse(raw)
    step = None
    time = math.nan
    step_message = pb.last(message, HISTORY_STEP)
    if step_message:
        step = pb.as_int64(pb.last(pb.parse(step_message), STEP_NUM, 0))
    points = []
    for item_raw in message.get(HISTORY_ITEM, []):
        item = pb.parse(item_raw)
        key = _item_key(item)
        value = _item_value(item)
        if key == STEP_KEY:
            if step is None and isinstance(value, (int, float)) and math.isfinite(value):
                step = int(value)
            continue
        if key == TIME_KEY and isinstance(value, (int, float)) and not isinstance(value, bool):
            time = float(value)
        if key.startswith("_"):  # W&B's own bookkeeping: _runtime, _timestamp, _wandb
            continue
        points.extend(_numbers(key, value))
    return (step if step is not None else sequence), points, time


def _item_key(item: dict[int, list]) -> str:
    if ITEM_KEY in item:
        return pb.as_text(item[ITEM_KEY][-1])
    return "/".join(pb.as_text(k) for k in item.get(ITEM_NESTED_KEY, []))


def _item_value(item: dict[int, list]) -> Any:
    if ITEM_VALUE_JSON in item:
        return json.loads(pb.as_text(item[ITEM_VALUE_JSON][-1]))  # NaN / Infinity tokens parse as floats
    if ITEM_NUMBER in item:
        return pb.as_double(item[ITEM_NUMBER][-1])
    if ITEM_INTEGER in item:
        raw = item[ITEM_INTEGER][-1]
        return (raw >> 1) ^ -(raw & 1)  # zigzag
    if ITEM_BOOLEAN in item:
        return bool(item[ITEM_BOOLEAN][-1])
    return None


def _numbers(key: str, value: Any, depth: int = 0) -> list[tuple[str, float]]:
    """Numeric leaves of a logged value: `run.log({"train": {"loss": x}})` gives ("train/loss", x)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        try:
            return [(key, float(value))]
        except OverflowError:  # a JSON integer beyond float range
            return []
    if isinstance(value, dict) and "_type" not in value and depth < 4:  # "_type": a media object or table
        return [point for k, v in value.items() for point in _numbers(f"{key}/{k}", v, depth + 1)]
    return []


def _config_items(raw: bytes) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item_raw in pb.parse(raw).get(CONFIG_UPDATE, []):
        item = pb.parse(item_raw)
        key = _item_key(item).replace("/", ".")
        if not key or key.startswith("_wandb"):
            continue
        try:
            config[key] = json.loads(pb.as_text(item[ITEM_VALUE_JSON][-1])) if ITEM_VALUE_JSON in item else None
        except ValueError:
            continue
    return config


def _exit_event(raw: bytes, rel: str, index: int, out: Ingested) -> None:
    code = pb.last(pb.parse(raw), EXIT_CODE, 0)
    code = code - (1 << 64) if code >= 1 << 63 else code
    if code:
        out.events.append(Event("error", None, f"W&B run exited with code {code}", rel, index, {"exit_code": code}))


# --- files/ -----------------------------------------------------------------------------------------------------------

def _read_history_jsonl(path: Path, root: Path, out: Ingested) -> bool:
    """files/wandb-history.jsonl (synced runs): one JSON object per logged step."""
    rel = relative(path, root)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        out.notes.append(Note(rel, f"unreadable: {error.strerror or error}"))
        return False
    steps, names, values, lines, times = [], [], [], [], []
    garbage: list[int] = []
    rows = text.split("\n")
    # One json.loads per line: W&B writes NaN/Infinity tokens that pyarrow's JSON reader rejects; this file only
    # exists for runs synced from the cloud, where it is the fallback to the .wandb file.
    for number, row in enumerate(rows, start=1):
        if not row.strip():
            continue
        try:
            entry = json.loads(row)
        except ValueError:
            if number == len(rows) and not text.endswith("\n"):
                out.notes.append(Note(rel, "the last line is cut short (the writer stopped mid-line); ignored",
                                      line=number))
            else:
                garbage.append(number)
            continue
        if not isinstance(entry, dict):
            garbage.append(number)
            continue
        step = entry.get(STEP_KEY)
        step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else len(set(lines))
        time = entry.get(TIME_KEY)
        time = float(time) if isinstance(time, (int, float)) and not isinstance(time, bool) else math.nan
        for key, value in entry.items():
            if not key.startswith("_"):
                for name, number_value in _numbers(key, value):
                    steps.append(step)
                    names.append(name)
                    values.append(number_value)
                    lines.append(number)
                    times.append(time)
    if garbage:
        out.notes.append(Note(rel, "lines that are not JSON objects were skipped", line=garbage[0],
                              count=len(garbage)))
    frame = pd.DataFrame({
        "step": np.asarray(steps, dtype=np.int64), "name": np.asarray(names, dtype=object),
        "value": np.asarray(values, dtype=np.float64), "line": np.asarray(lines, dtype=np.int64)})
    out.add_frame(rel, frame)
    times = clock.epoch_seconds(np.asarray(times, dtype=np.float64))
    out.add_clock(rel, clock.clock_rows(frame, times, clock.frames_loop_metric([frame])))
    return bool(steps)


def _read_config_yaml(path: Path, root: Path, out: Ingested) -> None:
    """files/config.yaml: {key: {desc: ..., value: ...}} plus W&B's own wandb_version and _wandb entries."""
    import yaml

    rel = relative(path, root)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, yaml.YAMLError) as error:
        out.notes.append(Note(rel, f"config unreadable ({type(error).__name__}); ignored"))
        return
    if not isinstance(loaded, dict):
        return
    config = {str(key): (entry.get("value") if isinstance(entry, dict) and "value" in entry else entry)
              for key, entry in loaded.items() if str(key) not in ("wandb_version", "_wandb")}
    out.add_hparams(config, rel)


def _read_console(path: Path, root: Path, out: Ingested, keep_numbers: bool) -> None:
    """files/output.log through the text-log reader: its events always, its numbers only without a history."""
    from analyzer.ingest import textlog

    try:
        piece = textlog.read([path], root)
    except Exception as error:  # noqa: BLE001 - another reader's failure must not lose the W&B history
        out.notes.append(Note(relative(path, root), f"console log not read ({type(error).__name__})"))
        return
    out.events.extend(piece.events)
    if keep_numbers:  # otherwise its notes are about numbers the history already has
        out.frames.extend(piece.frames)
        out.notes.extend(piece.notes)
        out.blind_spots.extend(piece.blind_spots)




# --- the console kept inside the .wandb file --------------------------------------------------------------------------

def _read_record_console(record_file: _RecordFile, out: Ingested, keep_numbers: bool) -> None:
    """Console records through the text-log reader, as files/output.log would be; lines are cited by record number.

    With history in the file, an event takes the step of W&B's own history, which the metrics of this file are
    indexed by: that of the first row logged after the line was printed (the last row for lines after it), the
    text-log reader's rule for its step lines (a line printed while step N runs comes before step N is logged).
    `_timestamp` and the output record's timestamp say what was first; record order cannot, as W&B writes a row
    with an explicit step only once the next step is logged.
    """
    from analyzer.ingest import textlog

    rel = record_file.rel
    text, line_records, line_times, partial = _console_lines(record_file.console)
    if partial is not None:
        out.notes.append(Note(rel, "console output ends mid-line (the run stopped mid-print?); that line not read",
                              line=partial))
    if not text:
        return
    try:
        piece = textlog.read_text(text, rel)
    except Exception as error:  # noqa: BLE001 - another reader's failure must not lose the W&B history
        out.notes.append(Note(rel, f"console records not read ({type(error).__name__})"))
        return

    def record_of(line: int | None) -> int | None:
        return int(line_records[line - 1]) if line is not None and 0 < line <= len(line_records) else line

    at = np.asarray([e.line - 1 for e in piece.events], dtype=np.int64)  # the text reader's lines are all in range
    steps = _history_steps(record_file, line_records[at], line_times[at])
    out.events.extend(replace(e, line=int(line_records[i]), step=int(steps[k]) if steps.size else e.step)
                      for k, (e, i) in enumerate(zip(piece.events, at.tolist())))
    if keep_numbers:  # otherwise its notes are about numbers the history already has
        if piece.frame is not None and len(piece.frame):
            frame = piece.frame.copy()
            frame["line"] = line_records[frame["line"].to_numpy() - 1]
            out.add_frame(rel, frame)
        out.notes.extend(replace(note, line=record_of(note.line)) for note in piece.notes)


def _history_steps(record_file: _RecordFile, records: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The history step each console line belongs to (see _read_record_console); empty without history."""
    lines, steps, stamps = record_file.history_lines, record_file.history_steps, record_file.history_times
    if not steps.size:
        return np.empty(0, dtype=np.int64)
    if np.isfinite(times).all() and np.isfinite(stamps).all():
        order = np.argsort(stamps, kind="stable")
        at = np.searchsorted(stamps[order], times, side="right")
        return steps[order][np.minimum(at, steps.size - 1)]
    return steps[np.minimum(np.searchsorted(lines, records), steps.size - 1)]  # no clock: the next row written


def _console_lines(chunks: list[tuple[int, int, str, float]]) -> tuple[str, np.ndarray, np.ndarray, int | None]:
    """The complete console lines as a terminal shows them, in the order they started; per line, the record where
    its shown text starts and that record's time; and the record of a line left unfinished at the end, if any.

    Each stream is joined on its own (a print is often two records: the text, then its newline; a progress bar is
    many); only what follows a line's last `\\r` is shown (a redrawn bar keeps its last drawing)."""
    by_stream: dict[int, list[tuple[int, str, float]]] = {}
    for record, stream, text, time in chunks:
        by_stream.setdefault(stream, []).append((record, text, time))
    line_records: list[np.ndarray] = []
    line_times: list[np.ndarray] = []
    shown: list[str] = []
    partial: int | None = None
    for parts in by_stream.values():
        part_records = np.asarray([record for record, _, _ in parts], dtype=np.int64)
        part_times = np.asarray([time for _, _, time in parts], dtype=np.float64)
        part_offsets = np.cumsum([0] + [len(text) for _, text, _ in parts[:-1]])
        pieces = "".join(text for _, text, _ in parts).split("\n")
        if pieces.pop().rpartition("\r")[2].strip():  # text after the last newline: a line not finished
            partial = min(partial or int(part_records[-1]), int(part_records[-1]))
        if not pieces:
            continue
        line_offsets = np.cumsum([0] + [len(piece) + 1 for piece in pieces[:-1]])
        cuts = np.asarray([piece.rstrip("\r").rfind("\r") + 1 for piece in pieces], dtype=np.int64)
        shown.extend(piece.rstrip("\r")[cut:] for piece, cut in zip(pieces, cuts.tolist()))
        part = np.searchsorted(part_offsets, line_offsets + cuts, side="right") - 1
        line_records.append(part_records[part])
        line_times.append(part_times[part])
    if not shown:
        return "", np.empty(0, dtype=np.int64), np.empty(0), partial
    records, times = np.concatenate(line_records), np.concatenate(line_times)
    order = np.argsort(records, kind="stable")  # a record holds one stream: ties are lines of one record
    return "\n".join(shown[i] for i in order.tolist()) + "\n", records[order], times[order], partial
