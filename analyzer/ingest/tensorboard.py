"""TensorBoard event files: every scalar point (simple_value and scalar tensors) and logged hparams, read directly.

TensorBoard's own EventAccumulator keeps a 10,000-point reservoir sample per tag and purges points after a restart,
so it is not used: every record is decoded here (TFRecord framing + the Event protobuf, see `_protobuf`). Restarts
are left to `build_run`, which sees the files in the order they were written.

As in TensorBoard, a folder of event files is a run, with its split sub-folders (`train/`, `validation/`, as Keras
writes) and add_scalars' per-key folders. Several runs in one run dir (`runs/<date>_<host>/` per launch, the
SummaryWriter default; Lightning's `version_N`) are one run only where each later one resumes the one before,
starting at a later step (HF Trainer opens a new folder when it resumes). Otherwise only the most recently started
is read, as for W&B, MLflow and Lightning's CSV logs, and the others are named in a note: merging two separate runs
point by point would make a series of neither.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from analyzer.ingest import _protobuf as pb
from analyzer.ingest import clock, configs
from analyzer.run import CANONICAL_METRICS, Ingested, Note, canonical_metric
from analyzer.ingest.paths import relative

FORMAT = "tensorboard"

HEADER = struct.Struct("<QI")  # record length, masked CRC-32C of the length bytes
HEADER_SIZE, FOOTER_SIZE = 12, 4
MAX_RECORD = 1 << 30  # a length above this is corruption, not a record
EVAL_DIRS = {"eval", "evaluation", "val", "valid", "validation"}  # Keras writes train/ and validation/ runs
FILE_TIME = re.compile(r"tfevents\.(\d+)")

# Field numbers, from tensorboard/compat/proto/{event,summary,tensor,tensor_shape}.proto.
EVENT_WALL_TIME, EVENT_STEP, EVENT_SUMMARY = 1, 2, 5
SUMMARY_VALUE = 1
VALUE_TAG, VALUE_SIMPLE, VALUE_TENSOR, VALUE_METADATA = 1, 2, 8, 9
METADATA_PLUGIN, PLUGIN_NAME, PLUGIN_CONTENT = 1, 1, 2
TENSOR_DTYPE, TENSOR_SHAPE, TENSOR_CONTENT = 1, 2, 4
SHAPE_DIM, DIM_SIZE = 2, 1
# DataType enum -> (struct format of one element in tensor_content, field holding typed values, its element format)
DT_HALF, DT_BFLOAT16 = 19, 14
DTYPES = {
    1: ("f", 5, "f"), 2: ("d", 6, "d"), 3: ("i", 7, "varint"), 4: ("B", 7, "varint"), 5: ("h", 7, "varint"),
    6: ("b", 7, "varint"), 9: ("q", 10, "varint"), 10: ("?", 11, "varint"), 17: ("H", 7, "varint"),
    22: ("I", 16, "varint"), 23: ("Q", 17, "varint"), DT_HALF: ("e", 13, "varint"), DT_BFLOAT16: ("H", 13, "varint"),
}
# hparams plugin (tensorboard/plugins/hparams/plugin_data.proto) and google.protobuf.Value (struct.proto).
HPARAMS_PLUGIN, HPARAMS_SESSION_START, SESSION_HPARAMS = "hparams", 3, 1
PB_NUMBER, PB_STRING, PB_BOOL = 2, 3, 4
SCALAR_PLUGINS = {"", "scalars"}
# HF Trainer's TensorBoardCallback (transformers/integrations/integration_utils.py): on_train_begin writes
# `add_text("args", args.to_json_string())`, the TrainingArguments as JSON, and `add_text("model_config", ...)`, the
# model's config as JSON; on_log writes every log with non-eval keys prefixed `train/` (`train/loss`,
# `train/learning_rate`, `train/epoch`: Trainer.log adds the epoch to every log), so its end-of-run summary
# (`train_runtime`, `train_loss` = the mean loss of the whole run, ...) comes as if it were a step's metrics.
TEXT_PLUGIN, DT_STRING, TENSOR_STRING_VAL = "text", 7, 8
HF_ARGS_TAG, HF_MODEL_CONFIG_TAG = "args/text_summary", "model_config/text_summary"
HF_TEXT_TAGS = (HF_MODEL_CONFIG_TAG, HF_ARGS_TAG)  # read in this order: the training arguments win a shared name
HF_SUMMARY_TAGS = tuple(f"train/{key}" for key in
                        ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
                         "total_flos"))
HF_SUMMARY_SIGNATURE = "train/train_runtime"  # always in HF's summary, never a metric of a training step
HF_EPOCH_TAG, HF_STEP_TAGS = "train/epoch", ("train/loss", "train/learning_rate")


def sniff(path: Path) -> bool:
    return "tfevents" in path.name


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT, lines_are_records=True)  # `line` is the record number
    read_files = []
    event_folders = {path.parent for path in paths}
    for path in sorted(paths, key=_write_order):
        rel = relative(path, root)
        try:
            data = path.read_bytes()
        except OSError as error:
            out.notes.append(Note(rel, f"unreadable: {error.strerror or error}"))
            continue
        frame, times, hparams, texts = _read_events(data, rel, out.notes)
        if texts or _has_hf_tags(frame):
            frame, times = _without_hf_summary(frame, times, hparams, rel, out.notes)
        hparams = [(hparams, "")] + _hf_texts(texts, rel, out.notes)
        if _is_eval_dir(path, root):
            frame["split"] = "eval"
        else:
            _name_add_scalars_series(frame, path.parent.name)
        read_files.append((_run_folder(path, root, event_folders), rel, frame, times, hparams))
    chosen = _chosen_runs(read_files, root, out)
    read_files = [(rel, frame, times, hparams) for folder, rel, frame, times, hparams in read_files if folder in chosen]
    for rel, _, _, hparams in read_files:
        for values, prefix in hparams:
            out.add_hparams(values, rel, prefix=prefix)
    # Every Event carries its wall time: the clock is that of the training loss's events, whichever file holds them
    # (one tag for all files, so a second writer's points never interleave with the loop's).
    loop = clock.frames_loop_metric(frame for _, frame, _, _ in read_files)
    for rel, frame, times, _ in read_files:
        out.add_frame(rel, frame)
        out.add_clock(rel, clock.clock_rows(frame, times, loop))
    return out


TRAIN_DIRS = {"train", "training"}


def _run_folder(path: Path, root: Path, event_folders: set[Path]) -> Path:
    """The TensorBoard run an event file belongs to: its folder, or the folder above a split sub-folder or an
    add_scalars key folder (whose parent holds the writer's own event file: one of `event_folders`)."""
    folder = path.parent
    if folder == root or root not in folder.parents:
        return folder
    if folder.name.lower() in EVAL_DIRS | TRAIN_DIRS or folder.parent in event_folders:
        return folder.parent
    return folder


def _chosen_runs(files: list[tuple], root: Path, out: Ingested) -> set[Path]:
    """The run folders to read: the most recently started run with the runs that resume it (see the module's
    docstring); the others are named in a note."""
    first_step: dict[Path, int] = {}
    order: list[Path] = []  # run folders in the order they started (files come in write order)
    for folder, _, frame, _, _ in files:
        if folder not in first_step:
            order.append(folder)
            first_step[folder] = 1 << 62
        if len(frame):
            first_step[folder] = min(first_step[folder], int(frame["step"].min()))
    runs: list[list[Path]] = []
    for folder in order:
        if runs and first_step[folder] > first_step[runs[-1][0]]:
            runs[-1].append(folder)
        else:
            runs.append([folder])
    if len(runs) > 1:
        others = [relative(run[0], root) or "." for run in runs[:-1]]
        out.notes.append(Note(relative(runs[-1][0], root) or ".",
                              f"{len(runs)} TensorBoard runs found; only the most recent was read, not "
                              + ", ".join(others), count=len(others)))
    return set(runs[-1]) if runs else set()


def _write_order(path: Path) -> tuple:
    """Event files in the order they were started: their names carry the start time (restarts write a new file)."""
    match = FILE_TIME.search(path.name)
    return (0, int(match[1]), path.as_posix()) if match else (1, 0, path.as_posix())


def _has_hf_tags(frame: pd.DataFrame) -> bool:
    """The file was written by HF's TensorBoardCallback: its per-step tags (the epoch with the loss or the lr)."""
    tags = set(pd.unique(frame["name"]))
    return HF_EPOCH_TAG in tags and any(tag in tags for tag in HF_STEP_TAGS)


def _without_hf_summary(frame: pd.DataFrame, times: np.ndarray, hparams: dict, rel: str,
                        notes: list[Note]) -> tuple[pd.DataFrame, np.ndarray]:
    """HF Trainer's end-of-run summary is run facts, kept as hparams (as the trainer_state.json reader does), not a
    step's metrics: its `train/train_loss` is the mean loss of the whole run and would replace the last logged
    loss. It is recognised by `train/train_runtime` at the same step, in a file HF wrote (the caller checks), so a
    user's own `train/train_loss` series is kept."""
    names = frame["name"]
    signature_steps = frame.loc[names == HF_SUMMARY_SIGNATURE, "step"].unique()
    if not len(signature_steps):
        return frame, times
    summary = (names.isin(HF_SUMMARY_TAGS) & frame["step"].isin(signature_steps)).to_numpy()
    last = frame[summary].drop_duplicates("name", keep="last")
    hparams.update(zip(last["name"].str.removeprefix("train/"), last["value"].tolist()))
    step = int(signature_steps[-1])
    notes.append(Note(rel, f"HF Trainer's end-of-run summary at step {step} (train_runtime, train_loss = the run's "
                           f"mean loss, ...) kept as run facts, not as step {step}'s metrics",
                      line=int(frame.loc[summary, "line"].min()), count=int(summary.sum())))
    return frame[~summary].reset_index(drop=True), times[~summary]


def _hf_texts(texts: list[tuple[int, str, bytes]], rel: str, notes: list[Note]) -> list[tuple[dict, str]]:
    """HF's TrainingArguments and model config, logged as JSON text, as (settings, key prefix) in HF_TEXT_TAGS
    order; the prefix names the tag and its record. Parsed with json only (the text is the log's, not ours to
    run); text that is not a JSON object is noted and not read."""
    found = []
    for record, tag, raw in sorted(texts, key=lambda t: (HF_TEXT_TAGS.index(t[1]), t[0])):
        settings = _json_text(raw)
        if settings is None:
            notes.append(Note(rel, f"{tag} (record {record}) is not a JSON object of settings; not read",
                              line=record))
            continue
        found.append((configs.settings(settings), f"{tag}[record {record}]."))
    return found


def _is_eval_dir(path: Path, root: Path) -> bool:
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = ()
    return bool(parts) and parts[-1].lower() in EVAL_DIRS


def _name_add_scalars_series(frame: pd.DataFrame, folder: str) -> None:
    """torch.utils.tensorboard's add_scalars(main_tag, {key: value}) writes each key's values under the tag main_tag
    in a folder of its own, `<main_tag with "/" as "_">_<key>` (SummaryWriter.add_scalars): add_scalars("Loss",
    {"train": ..., "val": ...}) gives two series both tagged Loss. Each is named by its key here: `Loss/val`, or the
    key alone where it is a metric name of its own (`{"train_loss": ..., "val_loss": ...}`)."""
    if not len(frame):
        return
    renames = {}
    for tag in pd.unique(frame["name"]):
        prefix = str(tag).replace("/", "_") + "_"
        if folder.startswith(prefix) and len(folder) > len(prefix):
            key = folder[len(prefix):]
            renames[tag] = key if canonical_metric(key)[0] in CANONICAL_METRICS else f"{tag}/{key}"
    if renames:
        frame["name"] = frame["name"].replace(renames)


# --- TFRecord framing -------------------------------------------------------------------------------------------------

def frame_records(data: bytes, rel: str, notes: list[Note]) -> tuple[np.ndarray, np.ndarray]:
    """(payload offsets, payload lengths) of the complete records whose length checksum holds.

    A last record cut short is normal (the writer was killed): noted, the rest kept. A bad length checksum means the
    framing is lost (a length cannot be trusted, so no later record can be found): reading stops there, noted.
    """
    offsets, lengths = [], []
    pos, size = 0, len(data)
    while pos + HEADER_SIZE <= size:
        length = HEADER.unpack_from(data, pos)[0]
        # an Event is never empty: a zero length is a zero-filled tail (a crash on some file systems), which would
        # otherwise frame as millions of 16-byte records before the checksums below reject them
        if length == 0 or length > MAX_RECORD or pos + HEADER_SIZE + length + FOOTER_SIZE > size:
            break
        offsets.append(pos)
        lengths.append(length)
        pos += HEADER_SIZE + length + FOOTER_SIZE
    heads = offsets + ([pos] if pos + HEADER_SIZE <= size else [])
    stored = np.array([HEADER.unpack_from(data, o)[1] for o in heads], dtype=np.uint32)
    computed = pb.mask(pb.crc32c_many(data, heads, [8] * len(heads)).astype(np.uint64)).astype(np.uint32)
    bad = np.flatnonzero(stored != computed)
    n_complete = len(offsets)
    if len(bad) and bad[0] < n_complete:
        n_complete = int(bad[0])
        notes.append(Note(rel, f"record {n_complete + 1}: its length checksum is wrong (the file is corrupt); reading "
                               f"stopped there, {size - offsets[n_complete]} bytes not read", line=n_complete + 1))
    elif pos < size and len(bad):  # what follows the last record is not a record header
        notes.append(Note(rel, f"the {size - pos} bytes after record {n_complete} are not a valid record (bad length "
                               "checksum); not read", line=n_complete + 1))
    elif pos < size:  # a valid header whose record runs past the end, or a partial header: the writer was stopped
        notes.append(Note(rel, f"record {n_complete + 1} is cut short (the writer stopped mid-record); "
                               f"{size - pos} bytes at the end ignored", line=n_complete + 1))
    starts = np.asarray(offsets[:n_complete], dtype=np.int64) + HEADER_SIZE
    return starts, np.asarray(lengths[:n_complete], dtype=np.int64)


def _data_crc_ok(data: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    if not len(starts):
        return np.zeros(0, dtype=bool)
    stored = np.frombuffer(b"".join(data[int(s + n):int(s + n) + 4] for s, n in zip(starts, lengths)), dtype="<u4")
    computed = pb.mask(pb.crc32c_many(data, starts, lengths).astype(np.uint64)).astype(np.uint32)
    return stored == computed


# --- Event records ----------------------------------------------------------------------------------------------------

def _read_events(data: bytes, rel: str, notes: list[Note]) -> tuple[pd.DataFrame, np.ndarray, dict, list]:
    """(step, name, value, line frame; each row's wall time in seconds since the epoch, NaN where unusable;
    hparams; HF's JSON texts as (record number, tag, tensor))."""
    starts, lengths = frame_records(data, rel, notes)
    steps, names, values, lines, used, times = [], [], [], [], [], []
    hparams: dict = {}
    texts: list[tuple[int, str, bytes]] = []
    plugins: dict[str, str] = {}  # tag -> plugin: metadata comes only with a tag's first value
    undecodable = []
    for index in range(len(starts)):
        start = int(starts[index])
        record = data[start:start + int(lengths[index])]
        record_texts: list[tuple[str, bytes]] = []
        try:
            found = _decode_event(record, plugins, hparams, record_texts)
        except pb.DecodeError:
            undecodable.append(index)
            continue
        texts.extend((index + 1, tag, raw) for tag, raw in record_texts)
        if found is None:
            continue
        step, wall_time, points = found
        for name, value in points:
            steps.append(step)
            names.append(name)
            values.append(value)
            lines.append(index + 1)
            times.append(wall_time)
        used.append(index)
    if undecodable:
        notes.append(Note(rel, "records that are not a well-formed Event were skipped", line=undecodable[0] + 1,
                          count=len(undecodable)))
    frame = pd.DataFrame({"step": np.asarray(steps, dtype=np.int64), "name": np.asarray(names, dtype=object),
                          "value": np.asarray(values, dtype=np.float64), "line": np.asarray(lines, dtype=np.int64)})
    wall_times = clock.epoch_seconds(np.asarray(times, dtype=np.float64))
    if used:  # payload checksums, checked for the records that gave us something
        used_idx = np.asarray(used)
        ok = _data_crc_ok(data, starts[used_idx], lengths[used_idx])
        if not ok.all():
            bad_lines = set((used_idx[~ok] + 1).tolist())
            notes.append(Note(rel, "records whose payload checksum is wrong (corrupt) were skipped",
                              line=min(bad_lines), count=len(bad_lines)))
            kept = ~frame["line"].isin(bad_lines).to_numpy()
            frame, wall_times = frame[kept].reset_index(drop=True), wall_times[kept]
    return frame, wall_times, hparams, texts


def _decode_event(record: bytes, plugins: dict[str, str], hparams: dict,
                  texts: list) -> tuple[int, float, list] | None:
    """(step, wall time, [(tag, value)]) of one Event record with scalar values, else None."""
    step, wall_time, summary = 0, np.nan, None
    for number, wire, value in pb.fields(record):
        if number == EVENT_STEP and wire == pb.VARINT:
            step = pb.as_int64(value)
        elif number == EVENT_WALL_TIME and wire == pb.I64:
            wall_time = pb.as_double(value)
        elif number == EVENT_SUMMARY and wire == pb.LEN:
            summary = value
    if summary is None:
        return None
    points = []
    for number, wire, value in pb.fields(summary):
        if number == SUMMARY_VALUE and wire == pb.LEN:
            point = _decode_value(value, plugins, hparams, texts)
            if point is not None:
                points.append(point)
    return (step, wall_time, points) if points else None


def _decode_value(raw: bytes, plugins: dict[str, str], hparams: dict, texts: list) -> tuple[str, float] | None:
    tag, simple, tensor, plugin, content = "", None, None, None, None
    for number, wire, value in pb.fields(raw):
        if number == VALUE_TAG and wire == pb.LEN:
            tag = pb.as_text(value)
        elif number == VALUE_SIMPLE and wire == pb.I32:
            simple = pb.as_float(value)
        elif number == VALUE_TENSOR and wire == pb.LEN:
            tensor = value
        elif number == VALUE_METADATA and wire == pb.LEN:
            plugin, content = _plugin(value)
    if plugin is not None:
        plugins[tag] = plugin
    plugin = plugins.get(tag, "")
    if plugin == HPARAMS_PLUGIN:
        if content:
            hparams.update(_session_hparams(content))
        return None
    if plugin == TEXT_PLUGIN and tag in HF_TEXT_TAGS and tensor is not None:
        texts.append((tag, tensor))  # the caller adds the record number
        return None
    if simple is not None:
        return tag, simple
    if tensor is not None and plugin in SCALAR_PLUGINS:
        scalar = tensor_scalar(tensor)
        if scalar is not None:
            return tag, scalar
    return None  # histograms, images, audio, text, non-scalar tensors


def _plugin(raw: bytes) -> tuple[str, bytes | None]:
    for number, wire, value in pb.fields(raw):
        if number == METADATA_PLUGIN and wire == pb.LEN:
            message = pb.parse(value)
            return pb.as_text(pb.last(message, PLUGIN_NAME, b"")), pb.last(message, PLUGIN_CONTENT)
    return "", None


def tensor_scalar(raw: bytes) -> float | None:
    """The value of a one-element numeric TensorProto, or None (strings, several elements, unknown dtypes)."""
    message = pb.parse(raw)
    dtype = pb.last(message, TENSOR_DTYPE, 0)
    if dtype not in DTYPES:
        return None
    numel = 1
    shape = pb.last(message, TENSOR_SHAPE)
    if shape:
        for dim in pb.parse(shape).get(SHAPE_DIM, []):
            numel *= pb.as_int64(pb.last(pb.parse(dim), DIM_SIZE, 0))
    if numel != 1:
        return None
    content_format, typed_field, typed_format = DTYPES[dtype]
    content = pb.last(message, TENSOR_CONTENT)
    if content:
        if len(content) != struct.calcsize(content_format):
            return None
        value = struct.unpack("<" + content_format, content)[0]
    else:
        typed = message.get(typed_field)
        if not typed:
            return 0.0  # proto3 leaves out default values: an all-zero tensor has no values at all
        value = _typed_value(typed[-1], typed_format)
        if value is None:
            return None
    if dtype == DT_BFLOAT16:
        return struct.unpack("<f", struct.pack("<I", (int(value) & 0xFFFF) << 16))[0]
    if dtype == DT_HALF and not content:
        return struct.unpack("<e", struct.pack("<H", int(value) & 0xFFFF))[0]
    return float(value)


def _typed_value(raw, fmt: str):
    """The last element of a repeated numeric field, packed (bytes) or not (an int or raw fixed bytes)."""
    if isinstance(raw, int):
        return raw
    values = pb.packed_varints(raw) if fmt == "varint" else pb.packed_fixed(raw, fmt)
    return values[-1] if values else None


def _json_text(raw: bytes) -> dict | None:
    """The JSON object in a string TensorProto (HF's add_text), or None: parsed as JSON only, never evaluated."""
    try:
        message = pb.parse(raw)
        if pb.last(message, TENSOR_DTYPE, 0) != DT_STRING:
            return None
        value = json.loads(bytes(pb.last(message, TENSOR_STRING_VAL, b"")).decode("utf-8"))
    except (pb.DecodeError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _session_hparams(content: bytes) -> dict:
    """hparams logged with the hparams plugin (SummaryWriter.add_hparams, Lightning's TensorBoardLogger)."""
    session = pb.last(pb.parse(content), HPARAMS_SESSION_START)
    if not session:
        return {}
    found = {}
    for entry in pb.parse(session).get(SESSION_HPARAMS, []):
        item = pb.parse(entry)
        key, value = pb.as_text(pb.last(item, 1, b"")), pb.parse(pb.last(item, 2, b""))
        if PB_NUMBER in value:
            number = pb.as_double(value[PB_NUMBER][-1])
            found[key] = int(number) if number.is_integer() and abs(number) < 2**53 else number
        elif PB_STRING in value:
            found[key] = pb.as_text(value[PB_STRING][-1])
        elif PB_BOOL in value:
            found[key] = bool(value[PB_BOOL][-1])
    return found


