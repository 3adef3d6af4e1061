"""Line ends of big files, counted once by the reader that read them, so that citing a line reads one block.

Diagnose's evidence text quotes cited lines: without this it would read and count the whole file again. A reader
calls `remember(path, data)` with the whole file as it read it; `read_lines(path, numbers)` answers only while the
file is unchanged (same device, inode, size and modification time), else None and the caller reads the file itself.
Standard library and numpy only.
"""

from __future__ import annotations

import bisect
import os
import threading

import numpy as np

BLOCK = 1 << 20  # bytes per block whose line ends are counted
MAX_FILES = 8  # files remembered at once (a sweep reads many runs; each entry is a few hundred integers)
MIN_BYTES = 1 << 20  # smaller files are cheap to read again

_lock = threading.Lock()
# path -> (identity, block size, line ends through block b)
_known: dict[str, tuple[tuple[int, int, int, int], int, list[int]]] = {}


def remember(path: str | os.PathLike, data: bytes) -> int:
    """Count the line ends of `data`, the whole content of `path`, block by block; remember the counts when the
    file is large and still what `data` holds. Returns the number of line ends (data.count(b"\\n"))."""
    block = BLOCK
    through, total = [], 0
    for start in range(0, len(data), block):
        total += data.count(b"\n", start, start + block)
        through.append(total)
    if len(data) >= MIN_BYTES:
        try:
            key, stat = os.path.realpath(path), os.stat(path)
        except OSError:
            return total
        if stat.st_size == len(data):
            with _lock:
                _known.pop(key, None)
                _known[key] = (_identity(stat), block, through)
                while len(_known) > MAX_FILES:
                    _known.pop(next(iter(_known)))
    return total


def read_lines(path: str | os.PathLike, numbers: set[int], max_chars: int) -> dict[int, str] | None:
    """{number: line text, stripped, at most max_chars} for the given 1-based lines that exist, as a full read
    would give them ({} for a binary file); None when the file's line ends are not known or it has changed."""
    try:
        key = os.path.realpath(path)
        with _lock:
            known = _known.get(key)
        if known is None:
            return None
        identity, block, through = known
        with open(key, "rb") as fh:
            if _identity(os.fstat(fh.fileno())) != identity:
                return None
            if b"\0" in fh.read(1024):
                return {}
            size = identity[2]
            total = through[-1] if through else 0
            blocks: dict[int, np.ndarray] = {}

            def line_end(k: int) -> int:
                """Offset of the k-th line end (1-based, k <= total)."""
                b = bisect.bisect_left(through, k)
                if b not in blocks:
                    fh.seek(b * block)
                    chunk = np.frombuffer(fh.read(block), dtype=np.uint8)
                    blocks[b] = np.flatnonzero(chunk == 10) + b * block
                return int(blocks[b][k - (through[b - 1] if b else 0) - 1])

            out = {}
            for number in sorted(numbers):
                if number < 1 or number - 1 > total:
                    continue
                start = 0 if number == 1 else line_end(number - 1) + 1
                if start >= size:
                    continue
                stop = line_end(number) + 1 if number <= total else size
                fh.seek(start)
                out[number] = fh.read(stop - start).decode("utf-8", "replace").strip()[:max_chars]
            return out
    except (OSError, IndexError):
        return None


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
