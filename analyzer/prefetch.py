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
import re
import threading
from collections import Counter
from pathlib import Path

MIN_BYTES = 8 << 20  # a smaller file parses in a few tens of milliseconds: not worth a thread
MAX_FILES = 2
SUFFIXES = (".jsonl", ".ndjson")

# A JSON-lines file whose records each bring keys of their own (`{"step": 7, "metric_7": 1.0}`) parses into one mostly
# empty column per key: 20000 such records (700 kB) took pyarrow 5.6 GB. `may_be_too_wide` says from a sample whether
# a file may be one; the tabular reader then counts its keys exactly and reads only those that repeat.
MAX_KEYS = 1000  # more distinct keys than this are not metrics: a real logger writes hundreds at most
MAX_TABLE_BYTES = 1 << 30  # the most a parsed table may take: records x columns x 8 bytes
KEY_SAMPLE_BYTES = 1 << 17  # bytes of the file whose keys are counted (a few milliseconds)
KEY_SAMPLE_WINDOWS = 8  # spread over the file, so that keys that start late are seen
MIN_KEY_BYTES = 6  # `"a":1,`: a file smaller than MAX_KEYS keys of this size cannot hold too many
KEY = re.compile(rb'"((?:[^"\\\n]|\\.)*)"\s*:')  # a JSON key: a string followed by a colon

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
            if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                return  # UTF-16: the reader transcodes it first
            self.raw = raw
        except Exception:  # unreadable here: the reader reads it and reports the problem as usual
            return
        finally:
            self.read.set()
        # the reader can count the lines of `raw` meanwhile (see take)
        if may_be_too_wide(raw):
            return  # the reader reads only the keys that repeat
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
        if found:
            _return_freed_memory()
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


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
# Blocks this large get pages of their own. Lower (1 MB) saved ~60 MB more on the 1M-step benchmark but cost ~0.3 s
# of page faults: the detectors' many 8 MB temporaries (a million float64) would get fresh pages every time.
MMAP_THRESHOLD_BYTES = 8 << 20


def _return_freed_memory() -> None:
    """Have glibc allocate blocks of MMAP_THRESHOLD_BYTES and more on their own pages, which go back to the system
    when freed. By default the threshold rises to the largest block freed so far (up to 32 MB), so once a column of
    a few million rows is freed, the next ones come from the heap, which keeps their memory after they are freed:
    reading and diagnosing a 1M-step file then held ~180 MB more at its peak. No effect where the C library is not
    glibc."""
    import ctypes

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, ValueError, AttributeError):  # no such confstr name, or no mallopt
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


def may_be_too_wide(buf: bytes, newlines: int | None = None) -> bool:
    """Whether the JSON-lines `buf` (`newlines` line ends; estimated from the sample when None, which spares the
    background thread a count that holds the GIL) may hold more than MAX_KEYS distinct keys, or keys so sparse that
    a table of them would take more than MAX_TABLE_BYTES. Estimated from a sample of whole lines: keys seen once in
    it are extrapolated by how many each window brings per line (the median window, so that one config record at
    the top is not mistaken for a key per record). A yes is checked exactly by the reader."""
    if len(buf) <= MIN_KEY_BYTES * MAX_KEYS:
        return False
    windows = [buf] if len(buf) <= KEY_SAMPLE_BYTES else _windows(buf)
    if newlines is None:
        sampled = sum(len(w) for w in windows)
        newlines = len(buf) * sum(w.count(b"\n") for w in windows) // max(1, sampled)
    counts = [Counter(KEY.findall(window)) for window in windows]
    total: Counter = Counter()
    for count in counts:
        total.update(count)
    once = {key for key, n in total.items() if n == 1}
    rates = sorted(sum(1 for key in count if key in once) / max(1, window.count(b"\n"))
                   for count, window in zip(counts, windows))
    distinct = len(total) + rates[len(rates) // 2] * newlines
    return distinct > MAX_KEYS or (newlines + 1) * distinct * 8 > MAX_TABLE_BYTES


def _windows(buf: bytes) -> list[bytes]:
    """KEY_SAMPLE_WINDOWS stretches of whole lines, evenly spread from the start of `buf` to its end."""
    size = KEY_SAMPLE_BYTES // KEY_SAMPLE_WINDOWS
    out = []
    for i in range(KEY_SAMPLE_WINDOWS):
        start = (len(buf) - size) * i // (KEY_SAMPLE_WINDOWS - 1)
        window = buf[start:start + size]
        if start:
            window = window[window.find(b"\n") + 1:]
        out.append(window[:window.rfind(b"\n") + 1])
    return out
