"""Parse a run's large JSON-lines metrics in a background thread while the interpreter imports pandas and the
detectors, so the two overlap instead of adding up.

Only pyarrow and the standard library here (importing pandas in this thread would queue behind the main thread's
import of it). The table read in the background is used only when the tabular reader would parse exactly the same
bytes, so the Run is the same as without this: `analyzer.ingest.tabular` asks `take(path)` for the file's bytes and
parsed table, and compares them by identity with the buffer it would hand to pyarrow itself.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from pathlib import Path

MIN_BYTES = 8 << 20  # a smaller file parses in a few tens of milliseconds: not worth a thread
MAX_FILES = 2
SUFFIXES = (".jsonl", ".ndjson")

_lock = threading.Lock()
_jobs: dict[str, "_Job"] = {}


@dataclass
class Prefetched:
    """The file's bytes as read, and what pyarrow.json.read_json made of them (a table, or the error it raised)."""

    raw: bytes
    table: object = None
    error: BaseException | None = None


class _Job:
    def __init__(self, path: str, stat: os.stat_result) -> None:
        self.path, self.stat = path, stat
        self.result: Prefetched | None = None
        self.thread = threading.Thread(target=self._run, name="postmortem-prefetch", daemon=True)

    def _run(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
            if _identity(os.stat(self.path)) != _identity(self.stat) or len(raw) != self.stat.st_size:
                return  # written to while we read: let the reader read it itself
            import pyarrow as pa
            import pyarrow.json as pj

            try:
                self.result = Prefetched(raw, table=pj.read_json(pa.BufferReader(raw)))
            except Exception as exc:  # the reader's own call would raise the same: it decides what that means
                self.result = Prefetched(raw, error=exc)
        except Exception:  # unreadable here: the reader reads it and reports the problem as usual
            self.result = None


def start(run_dir: str | os.PathLike) -> None:
    """Begin parsing the largest JSON-lines files directly in `run_dir` (or `run_dir` itself if it is such a
    file). Never raises: anything wrong is left to the readers to find and report."""
    try:
        root = Path(run_dir)
        entries = [root] if root.is_file() else [Path(e.path) for e in os.scandir(root) if e.is_file()]
        found = []
        for path in entries:
            if path.suffix.lower() in SUFFIXES and not path.name.startswith("."):
                stat = path.stat()
                if stat.st_size >= MIN_BYTES:
                    found.append((stat.st_size, str(path), stat))
        for _, path, stat in sorted(found, reverse=True)[:MAX_FILES]:
            job = _Job(_key(path), stat)
            with _lock:
                if not _jobs:
                    atexit.register(_finish)
                _jobs[job.path] = job
            job.thread.start()
    except Exception:
        return


def _finish() -> None:
    """At exit (a usage error, a file no reader claimed): let a running parse end before the interpreter does."""
    with _lock:
        jobs = list(_jobs.values())
        _jobs.clear()
    for job in jobs:
        job.thread.join()


def take(path: str | os.PathLike) -> Prefetched | None:
    """The background result for `path` (waiting for it), once; None when there is none or the file has changed."""
    try:
        key = _key(path)
    except OSError:
        return None
    with _lock:
        job = _jobs.pop(key, None)
    if job is None:
        return None
    job.thread.join()
    try:
        unchanged = _identity(os.stat(key)) == _identity(job.stat)
    except OSError:
        return None
    return job.result if unchanged else None


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
