"""Parse a run's large JSON-lines metrics file in a background thread while the detectors import.

The two then overlap instead of adding up. Only pyarrow and the standard library here (importing pandas in this
thread would queue behind the main thread's import of it). The table read in the background is used only when the
tabular reader would parse exactly the same bytes, so the Run is the same as without this: `analyzer.ingest.tabular`
asks `take(path)` for the file's bytes and parsed table, and compares them by identity with the buffer it would hand
to pyarrow itself.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

MIN_BYTES = 8 << 20  # a smaller file parses in a few tens of milliseconds: not worth a thread
MAX_FILES = 2
SUFFIXES = (".jsonl", ".ndjson")

_lock = threading.Lock()
_jobs: dict[str, "_Job"] = {}  # started and not yet taken
_threads: list[threading.Thread] = []  # started and maybe still running (joined at exit)
_exit_hook: list = []


class Prefetched:
    """A file's bytes as read in the background (`raw`), and what pyarrow.json.read_json made of them, once that
    parse ends (`parsed()`: the table, or the error it raised)."""

    def __init__(self, job: "_Job") -> None:
        self.raw: bytes = job.raw
        self._job = job

    def parsed(self) -> tuple[object, BaseException | None]:
        self._job.thread.join()
        return self._job.table, self._job.error


class _Job:
    def __init__(self, path: str, stat: os.stat_result) -> None:
        self.path, self.stat = path, stat
        self.raw: bytes | None = None
        self.table: object = None
        self.error: BaseException | None = None
        self.read = threading.Event()  # set once `raw` is final (None: not read, or changed while read)
        self.thread = threading.Thread(target=self._run, name="postmortem-prefetch", daemon=True)

    def _run(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
            if _identity(os.stat(self.path)) != _identity(self.stat) or len(raw) != self.stat.st_size:
                return  # written to while we read: let the reader read it itself
            self.raw = raw
        except Exception:  # unreadable here: the reader reads it and reports the problem as usual
            return
        finally:
            self.read.set()
        # the reader can count the lines of `raw` meanwhile (see take)
        import pyarrow as pa
        import pyarrow.json as pj

        try:
            self.table = pj.read_json(pa.BufferReader(self.raw))
        except Exception as exc:  # the reader's own call would raise the same: it decides what that means
            self.error = exc


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
                if not _exit_hook:
                    _exit_hook.append(atexit.register(_finish))
                _threads[:] = [t for t in _threads if t.is_alive()] + [job.thread]
                _jobs[job.path] = job
            job.thread.start()
    except Exception:
        return


def _finish() -> None:
    """At exit (a usage error, a file no reader claimed): let a running parse end before the interpreter does."""
    with _lock:
        threads = list(_threads)
        _jobs.clear()
    for thread in threads:
        if thread.ident is not None:  # started
            thread.join()


def take(path: str | os.PathLike) -> Prefetched | None:
    """The background read of `path`, once: its bytes as soon as they are read (the parse may still be running);
    None when there is none or the file has changed since."""
    try:
        key = _key(path)
    except OSError:
        return None
    with _lock:
        job = _jobs.pop(key, None)
    if job is None:
        return None
    job.read.wait()
    try:
        unchanged = _identity(os.stat(key)) == _identity(job.stat)
    except OSError:
        return None
    return Prefetched(job) if unchanged and job.raw is not None else None


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
