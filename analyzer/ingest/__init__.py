"""Ingest: find every file of a run directory that some reader understands, read it, and build one Run.

Each reader module has `FORMAT` (its name in findings.json), `sniff(path) -> bool` (cheap: the name and at most the
first few KB) and `read(paths, root) -> Ingested` (all the files it claimed, so it can merge related files such as
HF `checkpoint-*/trainer_state.json` or Lightning versions). Readers are asked in the order of READERS; the first one
whose sniff says yes claims the file. Checkpoint files are read by `checkpoints`, whatever the format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from analyzer.errors import InputError
from analyzer.ingest.paths import relative  # noqa: F401  (re-exported: ingest.relative)
from analyzer.ingest import (
    canonical, checkpoints, configs, hf_trainer, lightning, mlflow, tabular, tensorboard, textlog, wandb,
)
from analyzer.run import Ingested, Note, Run, build_run

# Order matters: specific formats before generic ones (a Lightning metrics.csv is also a CSV).
READERS = (canonical, hf_trainer, lightning, mlflow, wandb, tensorboard, tabular, configs, textlog)

OUTPUT_DIR = "postmortem"  # diagnose's own default output folder inside a run dir: never read as input
_SKIP_DIRS = {OUTPUT_DIR, "__pycache__", "node_modules", ".git", ".hg", ".svn", ".ipynb_checkpoints"}
_HIDDEN_READ = {".hydra"}  # Hydra keeps the run's resolved config there

Progress = Callable[[int, int], None]


def walk(root: Path) -> list[Path]:
    """Every regular file under root, in a stable order, skipping VCS/cache folders and our own output."""
    if root.is_file():
        return [root]
    found = []
    # an explicit stack, not os.walk: Python 3.11's os.walk recurses and a deep enough tree raises RecursionError
    todo = [root]
    while todo:
        folder = todo.pop()
        try:
            with os.scandir(folder) as entries:
                items = [(entry.name, _is_dir(entry), entry.is_symlink()) for entry in entries]
        except OSError:  # unreadable or gone: os.walk skipped these too
            continue
        for name, is_dir, _ in sorted(i for i in items if not i[1]):
            path = folder / name
            if not name.startswith(".") and path.is_file():
                found.append(path)
        subfolders = sorted(name for name, is_dir, link in items if is_dir and not link  # links: not followed
                            and name not in _SKIP_DIRS and (not name.startswith(".") or name in _HIDDEN_READ))
        todo.extend(folder / name for name in reversed(subfolders))  # popped in name order: depth first
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def claim(files: list[Path]) -> tuple[dict, list[Path], list[Path]]:
    """Split files between readers: ({reader: [paths]}, checkpoint paths, unclaimed paths)."""
    claimed: dict = {reader: [] for reader in READERS}
    ckpts, rest = [], []
    for path in files:
        if checkpoints.sniff(path):
            ckpts.append(path)
            continue
        for reader in READERS:
            if _safe_sniff(reader, path):
                claimed[reader].append(path)
                break
        else:
            rest.append(path)
    return claimed, ckpts, rest


def _safe_sniff(reader, path: Path) -> bool:
    try:
        return bool(reader.sniff(path))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def read_run(path: str | Path, scan_checkpoints: bool = True, progress: Progress | None = None) -> Run:
    """Read a run directory (or a single log file) into a Run. Raises InputError for input we cannot use."""
    root = Path(path)
    if not root.exists():
        raise InputError("no such file or directory", path=root)
    if not root.is_dir() and not root.is_file():  # a FIFO or device: reading it could block forever
        raise InputError("not a folder or a regular file", path=root)
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise InputError("directory is not readable", path=root)
    files = walk(root)
    if not files:
        raise InputError("the run directory is empty", path=root)
    base = root if root.is_dir() else root.parent
    claimed, ckpts, rest = claim(files)

    pieces: list[Ingested] = []
    failed: list[InputError] = []  # a reader that could not use its files: fatal only when nothing else was read
    todo = [(reader, paths) for reader, paths in claimed.items() if paths]
    total = len(todo) + (1 if ckpts else 0)
    for done, (reader, paths) in enumerate(todo):
        if progress:
            progress(done, total)
        try:
            pieces.append(reader.read(paths, base))
        except InputError as exc:
            failed.append(exc)
    if ckpts:
        if progress:
            progress(len(todo), total)
        pieces.append(checkpoints.read(ckpts, base, scan=scan_checkpoints))
    if progress:
        progress(total, total)

    unreadable = [(p, reason) for p in rest if (reason := _unreadable(p))]
    if not any(p.frames or p.events or p.checkpoints for p in pieces):
        if failed:
            raise failed[0]
        if unreadable:
            raise InputError(f"cannot read file: {unreadable[0][1]}", path=unreadable[0][0])
        first = next((n for p in pieces for n in p.notes), None)  # why a file of a known format gave nothing
        why = f"; {_where(first)}: {first.message}" if first else ""
        raise InputError("no training log or checkpoint in a format postmortem reads "
                         f"({len(files)} file(s) looked at; see `postmortem formats`){why}", path=root)
    if failed:
        pieces.append(Ingested(format="unreadable", notes=[
            Note(file=_relative_name(exc.path, base), message=f"{exc.message}; not read", line=exc.line)
            for exc in failed]))
    if rest:
        cannot = dict(unreadable)
        pieces.append(Ingested(format="unrecognised", notes=[
            Note(file=str(p.relative_to(base)),
                 message=f"cannot read file: {cannot[p]}; ignored" if p in cannot
                 else "not a format postmortem reads; ignored") for p in rest[:50]]))
    return build_run(root, pieces, status=_status(base))


def _unreadable(path: Path) -> str | None:
    """Why a file no reader claimed cannot be opened (its sniff could not look inside), or None."""
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _where(note: Note) -> str:
    return f"{note.file}:{note.line}" if note.line is not None else note.file


def _relative_name(path: str | None, base: Path) -> str:
    """A reader's error path as notes name files: relative to the run folder."""
    if not path:
        return ""
    return relative(Path(path), base) if Path(path).is_absolute() else path


def _status(base: Path) -> str | None:
    """The run's own word on how it ended, where it wrote one (the reference trainer's run.json)."""
    try:
        status = json.loads((base / "run.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None
