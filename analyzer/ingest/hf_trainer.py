"""Hugging Face Trainer: `trainer_state.json` at the top and in `checkpoint-*/`, merged with the newest winning."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzer.errors import InputError
from analyzer.run import BlindSpot, Ingested, Note
from analyzer.ingest.paths import relative

FORMAT = "hf-trainer"

STATE = "trainer_state.json"
TRAINING_ARGS_PICKLE = "training_args.bin"
JSON_ARGS = ("training_args.json", "args.json", "train_args.json")  # what configs.py reads instead
CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")
STEP_LIMIT = 2 ** 63  # steps are int64
# The final entry Trainer.train() appends: run facts, not a training step (its `train_loss` is the run's mean).
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")
# trainer_state.json top-level settings -> our hyperparameter names. `train_batch_size` there is the
# per-device batch (times the GPU count under DataParallel), not the global one.
STATE_HPARAMS = {"max_steps": "max_steps", "num_train_epochs": "epochs", "logging_steps": "logging_steps",
                 "eval_steps": "eval_steps", "save_steps": "save_steps", "train_batch_size": "batch_size"}
HPARAM_AFFECTED_BY_ARGS = ("small-effective-batch", "grad-explosion")


@dataclass
class _State:
    path: Path
    file: str
    text: str
    state: dict
    global_step: int
    in_checkpoint: bool
    checkpoint: int
    zero_tail: int = 0  # NUL bytes after the JSON (a crash's zero-filled tail), not read


def sniff(path: Path) -> bool:
    return path.name == STATE


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT)
    states, broken = [], []
    for path in paths:
        try:
            states.append(_load(path, relative(path, root)))
        except InputError as exc:
            broken.append(exc)
    if broken and not states:
        raise broken[0]
    for exc in broken:  # a corrupt copy in one checkpoint folder does not hide the others
        out.notes.append(Note(exc.path or "", f"{exc.message}; this copy was skipped", line=exc.line))
    for st in states:
        if st.zero_tail:
            out.notes.append(Note(st.file, f"{st.zero_tail} NUL bytes after the JSON (a zero-filled tail) ignored"))
    # oldest first: by step reached, then by history length (the final state adds its summary), then a top-level
    # file after a checkpoint copy
    states.sort(key=lambda s: (s.global_step, _history_length(s.state), not s.in_checkpoint, s.checkpoint, s.file))

    lineages: list[list[str]] = []
    for st in states:
        entries = st.state.get("log_history")
        if not isinstance(entries, list):
            out.notes.append(Note(st.file, "no log_history list; nothing logged here"))
            continue
        keys = [_entry_key(e) for e in entries]
        shared = max((_common_prefix(keys, earlier) for earlier in lineages), default=0)
        lineages.append(keys)
        # Entries this file shares with an older one were read there; the rest are new writes, and where they
        # diverge from an older history (a resume) their steps go back, which build_run records as a restart.
        frame = _frame(entries, shared, st, out.notes)
        if frame is not None:
            out.add_frame(st.file, frame)

    if states:
        newest = states[-1]
        _hparams(newest, out)
        _blind_spots(states, out)
        _training_args(states, root, out)
    return out


def _load(path: Path, file: str) -> _State:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=file) from None
    whole = len(text)
    text = text.rstrip("\x00")
    try:
        state = json.loads(text)  # Python's json reads the bare NaN/Infinity tokens of diverged runs
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg}, column {exc.colno})", path=file, line=exc.lineno) from None
    except RecursionError:
        raise InputError("not a trainer state (JSON nested too deeply)", path=file) from None
    if not isinstance(state, dict):
        raise InputError("not a trainer state (expected a JSON object)", path=file, line=1)
    folder = CHECKPOINT_DIR.fullmatch(path.parent.name)
    global_step = state.get("global_step")
    if not _is_int(global_step):
        steps = [e.get("step") for e in state.get("log_history") or [] if isinstance(e, dict)]
        global_step = max((s for s in steps if _is_int(s)), default=0)
    return _State(path, file, text, state, int(global_step), folder is not None,
                  int(folder.group(1)) if folder else -1, whole - len(text))


def _history_length(state: dict) -> int:
    entries = state.get("log_history")
    return len(entries) if isinstance(entries, list) else 0


def _entry_key(entry: Any) -> str:
    try:
        return json.dumps(entry, sort_keys=True)  # NaN dumps as NaN, so equal entries compare equal
    except (TypeError, ValueError):
        return repr(entry)


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _is_int(value: Any) -> bool:
    """A whole number that fits a step (int64); a larger one is garbage, not a step."""
    whole = isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer())
    return whole and -STEP_LIMIT <= value < STEP_LIMIT


def _is_summary(entry: dict) -> bool:
    return any(k in entry for k in SUMMARY_KEYS) and "loss" not in entry and not any(
        str(k).startswith("eval_") and k != "eval_steps" for k in entry)


# --- log_history -> frame --------------------------------------------------------------------------------------------

def _frame(entries: list, start: int, st: _State, notes: list[Note]) -> pd.DataFrame | None:
    """Rows (step, name, value, line) for entries[start:], each value cited at its own line where the file
    is pretty-printed (Trainer writes one key per line), else at its entry's `"step"` line."""
    step_lines = _step_lines(st.text, entries)
    records, steps, lines = [], [], []
    no_step = 0
    for i in range(start, len(entries)):
        entry = entries[i]
        if not isinstance(entry, dict) or not _is_int(entry.get("step")):
            no_step += 1
            continue
        if _is_summary(entry):
            continue
        records.append(entry)
        steps.append(int(entry["step"]))
        lines.append(step_lines[i] if step_lines is not None else i + 1)
    if no_step:
        notes.append(Note(st.file, f"{no_step} log_history entr{'y' if no_step == 1 else 'ies'} without a step "
                                   "ignored", count=no_step))
    if not records:
        return None
    per_key_lines = step_lines is not None and _pretty(st.text, entries, step_lines)
    # json.loads already made Python objects of every value, so one pass over them is the cheapest way to keep
    # a NaN that was logged apart from a key that was not
    out_step, out_name, out_value, out_line = [], [], [], []
    stray: dict[str, list[int]] = {}
    for entry, step, line in zip(records, steps, lines):
        offset = _offsets(entry) if per_key_lines else None
        for key, value in entry.items():
            if key == "step":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out_step.append(step)
                out_name.append(str(key))
                out_value.append(float(value))
                out_line.append(line + offset[key] if offset else line)
            elif isinstance(value, str):
                stray.setdefault(str(key), []).append(line)
    numeric = set(out_name)
    for key, where in stray.items():
        if key in numeric:  # text in a numeric key; a key that only holds text (remaining_time) is no metric
            notes.append(Note(st.file, f"{len(where)} non-numeric value(s) of {key!r} ignored", line=where[0],
                              count=len(where)))
    if not out_step:
        return None
    return pd.DataFrame({"step": np.asarray(out_step, dtype="int64"), "name": out_name,
                         "value": np.asarray(out_value, dtype="float64"), "line": np.asarray(out_line, dtype="int64")})


def _offsets(entry: dict) -> dict:
    """Lines from the `"step"` key to each key of a one-key-per-line entry."""
    order = {key: i for i, key in enumerate(entry)}
    at_step = order["step"]
    return {key: i - at_step for key, i in order.items()}


def _step_lines(text: str, entries: list) -> list[int] | None:
    """Line of each entry's `"step"` key, found by scanning the text after `"log_history"`; None if ambiguous."""
    start = text.find('"log_history"')
    if start < 0:
        return None
    end = _log_history_end(text, start)
    with_step = [i for i, e in enumerate(entries) if isinstance(e, dict) and "step" in e]
    found = [m.start() for m in re.finditer(r'"step"\s*:', text[start:end])]
    if len(found) != len(with_step) or any(_nested_step(entries[i]) for i in with_step[:50]):
        return None
    lines = [0] * len(entries)
    line, pos = text.count("\n", 0, start) + 1, start
    for i, offset in zip(with_step, found):
        line += text.count("\n", pos, start + offset)
        pos = start + offset
        lines[i] = line
    return lines


def _log_history_end(text: str, start: int) -> int:
    """Where the log_history list ends: the next top-level key after it (Trainer sorts keys), else the end."""
    following = re.search(r'\n  "(?!log_history)[^"]+"\s*:', text[start:])
    return start + following.start() if following else len(text)


def _nested_step(entry: dict) -> bool:
    return any(isinstance(v, dict) and "step" in v for v in entry.values())


def _pretty(text: str, entries: list, step_lines: list[int]) -> bool:
    """True when the file has one key per line in dict order (json.dump(indent=...)): check a few entries."""
    lines = text.splitlines()
    checked = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "step" not in entry or _nested_step(entry):
            continue
        for key in (next(iter(entry)), list(entry)[-1]):
            at = step_lines[i] + _key_offset(entry, key)
            if not (0 < at <= len(lines) and lines[at - 1].lstrip().startswith(json.dumps(key) + ":")):
                return False
        checked += 1
        if checked >= 3:
            break
    return checked > 0


def _key_offset(entry: dict, key: str) -> int:
    return _offsets(entry)[key]


# --- hyperparameters and blind spots ---------------------------------------------------------------------------------

def _hparams(newest: _State, out: Ingested) -> None:
    state = newest.state
    for key, name in STATE_HPARAMS.items():
        value = state.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.hparams.append((name, value, newest.file, key))
    if isinstance(state.get("trial_params"), dict):
        out.add_hparams(state["trial_params"], newest.file, prefix="trial_params.")
    entries = state.get("log_history") if isinstance(state.get("log_history"), list) else []
    summary = next((e for e in reversed(entries) if isinstance(e, dict) and _is_summary(e)), None)
    if summary:  # run facts: the mean train loss over the run, wall time, throughput
        for key in SUMMARY_KEYS:
            if isinstance(summary.get(key), (int, float)) and not isinstance(summary.get(key), bool):
                out.hparams.append((key, summary[key], newest.file, f"log_history[].{key}"))


def _logging_interval(state: dict) -> int | None:
    interval = state.get("logging_steps")
    if _is_int(interval) and interval > 0:
        return int(interval)
    entries = state.get("log_history") if isinstance(state.get("log_history"), list) else []
    steps = sorted({int(e["step"]) for e in entries if isinstance(e, dict) and "loss" in e and _is_int(e.get("step"))})
    if len(steps) < 3:
        return None
    return int(np.median(np.diff(steps)))


def _blind_spots(states: list[_State], out: Ingested) -> None:
    newest = states[-1].state
    entries = [e for st in states for e in (st.state.get("log_history") or []) if isinstance(e, dict)]
    nonfinite_loss = any(isinstance(e.get("loss"), float) and not math.isfinite(e["loss"]) for e in entries)
    if not nonfinite_loss:
        out.blind_spots.append(BlindSpot(
            "HF Trainer filters NaN/Inf losses out of log_history by default (logging_nan_inf_filter): a "
            "non-finite step's loss is replaced by the mean of its logging window, so NaN shows up as a repeat "
            "of earlier losses, or as 0.0 where the whole window was NaN",
            affects=("nonfinite-onset",)))
    interval = _logging_interval(newest)
    if interval and interval > 1:
        out.blind_spots.append(BlindSpot(
            f"HF Trainer logs the loss averaged over each {interval}-step logging window: a spike shorter than "
            f"the window is diluted up to {interval}x",
            affects=("loss-spike",)))
        if any("grad_norm" in e for e in entries):
            out.blind_spots.append(BlindSpot(
                f"HF Trainer logs grad_norm only at logging steps (every {interval} steps): the gradient norm of "
                "the steps in between is not recorded",
                affects=("grad-explosion",)))


def _training_args(states: list[_State], root: Path, out: Ingested) -> None:
    """The training arguments are not in trainer_state.json, and training_args.bin is a pickle (never loaded):
    say what that hides, and how to give us the arguments."""
    folders = sorted({st.path.parent for st in states} | ({root} if root.is_dir() else set()), key=str)
    if any((f / name).is_file() for f in folders for name in JSON_ARGS):
        return  # the arguments as JSON are read by the config reader
    how = ("Save them as JSON beside the run, e.g. "
           "`open('training_args.json', 'w').write(trainer.args.to_json_string())`")
    if any((f / TRAINING_ARGS_PICKLE).is_file() for f in folders):
        message = ("Training arguments (gradient accumulation, clipping, world size, schedule) were not read: "
                   f"training_args.bin is a pickle and is never loaded. {how}")
    else:
        message = ("trainer_state.json holds the per-device batch size only: gradient accumulation, clipping and "
                   f"world size were not saved with this run. {how}")
    out.blind_spots.append(BlindSpot(message, affects=HPARAM_AFFECTED_BY_ARGS))


