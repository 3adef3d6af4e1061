"""Generic metric tables: CSV/TSV and JSON-lines files with a step column, wide or long (step, metric, value)."""

from __future__ import annotations

import codecs
import functools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzer import lineindex, prefetch
from analyzer.ingest import clock
from analyzer.run import CLOCK_METRIC, Ingested, Note
from analyzer.ingest.paths import relative

FORMAT = "table"

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")  # a `.json` file counts only when it holds one object per line
CSV_SUFFIXES = (".csv", ".tsv")
# A table under a log's name: Keras' CSVLogger documents `CSVLogger("training.log")`. Claimed only when its first
# line is a header with a step column and its second a row of numbers of the same width (see _text_is_table).
TEXT_TABLE_SUFFIXES = (".log", ".txt")
# Step columns by preference; `epoch` only when nothing finer is logged.
STEP_COLUMNS = ("step", "global_step", "trainer/global_step", "train/global_step", "iteration", "iter", "_step",
                "training_iteration", "epoch")  # training_iteration: Ray Tune's result.json / progress.csv
LONG_NAME_COLUMNS = ("metric", "name", "tag", "key")  # long format: one (step, name, value) per row
# Bookkeeping columns that are numbers but not training metrics.
NOT_METRICS = {"rank", "split", "timestamp", "_timestamp", "_runtime", "time_stamp", "wall_time", "walltime",
               "wallclock", "date", "datetime", "created_at", "local_rank", "global_rank", "process_index",
               # Ray Tune's bookkeeping, beside the trial's own metrics
               "time_total_s", "time_since_restore", "iterations_since_restore", "timesteps_total",
               "timesteps_since_restore", "pid", "warmup_time"}
# Ray Tune repeats the trial's config in every row (nested as `config`, flattened to `config/lr`): settings, not
# metrics; the trial's params.json holds them once.
CONFIG_PREFIX = "config/"
# Columns that may hold each record's wall-clock time, by preference; kept as the run's clock where their values
# read as times since the epoch (`time` is often a duration per step instead, and then stays a metric).
CLOCK_COLUMNS = ("wall_time", "walltime", "wallclock", "_timestamp", "timestamp", "time_stamp", "time", "datetime")
TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}  # ticks per second of pyarrow's timestamp types
EVAL_SPLITS = {"eval", "evaluation", "val", "valid", "validation", "dev", "test"}
TRAIN_SPLITS = {"train", "training"}
MAX_STEP = 2.0 ** 53  # beyond this a float step is no longer an exact integer
SNIFF_BYTES = 16384  # sniff looks at no more than this
_RANK_IN_NAME = re.compile(r"(?:^|[._-])rank[._-]?(\d+)(?:[._-]|$)", re.IGNORECASE)

# Python's json writes bare NaN/Infinity tokens for float nan/inf: they are the evidence of a diverged run. Recent
# pyarrow reads them; older versions refuse them, so there they are swapped for numbers no run logs and swapped back
# after parsing (and a file where that is ambiguous takes the exact, slow path).
NAN_SENTINEL = -1.2345678909876543e308
POS_INF_SENTINEL = 1.3579246801357924e308
NEG_INF_SENTINEL = -1.3579246801357924e308
_TOKENS = (b"-Infinity", b"Infinity", b"NaN")  # "-Infinity" first: it contains "Infinity"
_SENTINELS = {b"-Infinity": NEG_INF_SENTINEL, b"Infinity": POS_INF_SENTINEL, b"NaN": NAN_SENTINEL}
_SEPARATORS = (b": ", b":")  # json.dumps' default and compact separators; other spellings take the slow path
_BOM = b"\xef\xbb\xbf"
# Windows PowerShell's `>` and Out-File write UTF-16 (little-endian) with a byte order mark; so may .NET and Excel
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass
class Column:
    """One column of a parsed file: float64 values (or objects for text) and which rows hold a value at all."""

    values: np.ndarray
    valid: np.ndarray | None = None  # None: every row holds a value
    dictionary: tuple[np.ndarray, np.ndarray] | None = None  # text read as (codes, words): values is words[codes]
    is_time: bool = False  # date-times the parser recognised, as seconds since the epoch: never a metric

    @property
    def is_numeric(self) -> bool:
        return self.values.dtype.kind in "fiu"


@dataclass
class Parsed:
    """A parsed file before it becomes a tidy frame: named columns, the line of each row, and what was tolerated."""

    columns: dict[str, Column]
    lines: np.ndarray  # 1-based line of each row
    notes: list[Note] = field(default_factory=list)
    sentinels: bool = False  # NaN/Infinity tokens were swapped for sentinel numbers


@dataclass
class Table:
    """What one file gave: a frame in Ingested's shape (or None) and the notes about it."""

    frame: pd.DataFrame | None
    notes: list[Note]


# --- sniffing --------------------------------------------------------------------------------------------------------

def sniff(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _csv_header_has_step(path)
    if suffix in JSONL_SUFFIXES:
        return _jsonl_head_has_step(path)
    if suffix in TEXT_TABLE_SUFFIXES:
        return _text_is_table(path)
    return False


_HEADER_NAME = re.compile(r"[A-Za-z_][\w./\-@()]*")
_CELL = re.compile(r"\s*(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?(?i:nan|inf|infinity))?\s*")


def _text_is_table(path: Path) -> bool:
    """A text file whose first line is a delimited header naming a step column and whose second line is a row of
    as many numbers (or empty cells): a table, not a log of sentences."""
    head, _ = _head(path)
    lines = head.decode("utf-8", "replace").splitlines()
    if len(lines) < 2:
        return False
    delimiter = _delimiter(path, head)
    names = [n.strip().strip('"') for n in lines[0].split(delimiter)]
    cells = lines[1].split(delimiter)
    return (len(names) >= 2 and len(cells) == len(names) and all(_HEADER_NAME.fullmatch(n) for n in names)
            and bool({n.lower() for n in names} & set(STEP_COLUMNS)) and all(_CELL.fullmatch(c) for c in cells))


def _csv_header_has_step(path: Path) -> bool:
    head, _ = _head(path)
    header = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    names = {n.strip().strip('"').lower() for n in re.split(r"[,\t;]", header)}
    return bool(names & set(STEP_COLUMNS)) or ("value" in names and bool(names & set(LONG_NAME_COLUMNS)))


_LONG_RECORD_HEAD = re.compile(rb'\s*\{(?:[^\n]*?[,{]\s*)?"(?:' + b"|".join(re.escape(s.encode()) for s in STEP_COLUMNS)
                               + rb')"\s*:\s*[-0-9]')


def _jsonl_head_has_step(path: Path) -> bool:
    """True when one of the first complete lines is a JSON object with a step (a `.json` needs two such lines)."""
    head, whole = _head(path)
    lines = [line.strip() for line in head.split(b"\n")[:-1] if line.strip()]
    if not lines and whole:  # one line without a newline at the end
        lines = [head.strip()]
    if not lines:  # a first record longer than the window: an object whose keys so far include a step
        return path.suffix.lower() != ".json" and bool(_LONG_RECORD_HEAD.match(head))
    objects = 0
    for line in lines[:20]:
        try:
            obj = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            continue
        if not isinstance(obj, dict):
            return False
        objects += 1
        keys = {str(k).lower() for k in obj}
        if keys & set(STEP_COLUMNS) and (path.suffix.lower() != ".json" or len(lines) > 1):
            return True
    return False


# --- reading -------------------------------------------------------------------------------------------------------

# Ray Tune writes each trial's results twice, as result.json (JSON lines) and progress.csv: one is read.
RAY_DUPLICATES = {"progress.csv": "result.json"}


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT)
    present = set(paths)
    for path in paths:
        file = relative(path, root)
        twin = RAY_DUPLICATES.get(path.name)
        if twin is not None and path.with_name(twin) in present:
            out.notes.append(Note(file, f"repeats {twin} beside it (Ray Tune writes both); {twin} is read"))
            continue
        table = read_file(path, file, rank=rank_from_name(path.name))
        out.notes.extend(table.notes)
        if table.frame is not None:
            out.add_frame(file, table.frame)
    return out


def read_file(path: Path, file: str, rank: int | None = None) -> Table:
    """Read one CSV/TSV or JSON-lines file into a tidy frame (step, name, value, line[, split][, rank])."""
    if path.suffix.lower() in CSV_SUFFIXES + TEXT_TABLE_SUFFIXES:
        parsed = parse_csv(path, file)
    else:
        parsed = parse_jsonl(path, file)
    table = tidy(parsed, file, rank=rank)
    del parsed  # the last reference to pyarrow's table, whose columns the frame copied
    if len(table.frame if table.frame is not None else ()) >= RELEASE_MIN_POINTS:
        _release_arrow_memory()
    return table


RELEASE_MIN_POINTS = 1 << 20  # a smaller table leaves little to give back


def _release_arrow_memory() -> None:
    """Give the pages of the freed table back: pyarrow's allocator (mimalloc) keeps them otherwise, ~150 MB after a
    90 MB file, for as long as the process lives."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def rank_from_name(name: str) -> int | None:
    """`metrics.rank1.jsonl` -> 1: per-rank files of one run."""
    found = _RANK_IN_NAME.search(name)
    return int(found.group(1)) if found else None


def _head(path: Path) -> tuple[bytes, bool]:
    """The first SNIFF_BYTES of a file as UTF-8 without a byte order mark, and whether that is the whole file."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    whole = len(head) < SNIFF_BYTES
    if head[:2] in UTF16_BOMS:
        return _utf8_of_utf16(head)[0], whole
    return head.removeprefix(_BOM), whole


def _text_bytes(raw: bytes, file: str, notes: list[Note]) -> bytes:
    """A file's text as UTF-8 without a byte order mark: UTF-16 (with its mark) is transcoded, with Notes; line
    numbers stay those of the file, as the two hold the same line ends."""
    if raw[:2] not in UTF16_BOMS:
        return raw.removeprefix(_BOM)
    notes.append(Note(file, "UTF-16 text (as Windows PowerShell writes it): read as such"))
    text, odd = _utf8_of_utf16(raw)
    if odd:
        notes.append(Note(file, "the file ends in half a UTF-16 character (the run was probably stopped "
                                "mid-write); ignored", line=text.count(b"\n") + 1))
    return text


def _utf8_of_utf16(raw: bytes) -> tuple[bytes, bool]:
    """UTF-8 of UTF-16 bytes that start with a byte order mark (which goes), and whether an odd last byte was
    dropped; a character that cannot be decoded (half a surrogate pair) becomes U+FFFD."""
    odd = len(raw) % 2
    return raw[:len(raw) - odd].decode("utf-16", errors="replace").encode("utf-8"), bool(odd)


def _read_raw(path: Path, file: str) -> bytes:
    from analyzer.errors import InputError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=file) from None


NUL_SCAN = 1 << 20


def _without_nul_tail(buf: bytes, file: str, notes: list[Note]) -> bytes:
    """The bytes before a zero-filled tail: a crash on some file systems leaves the file's last blocks as NUL bytes
    (a 3 GB tail took 9 GB of memory to parse). Scanned from the end in blocks; copied only when there is a tail."""
    end = len(buf)
    while end:
        start = max(0, end - NUL_SCAN)
        kept = len(buf[start:end].rstrip(b"\x00"))
        end = start + kept
        if kept:
            break
    if end == len(buf):
        return buf
    notes.append(Note(file, f"the file ends in {len(buf) - end} zero bytes (left by a crash?); ignored",
                      line=buf.count(b"\n", 0, end) + 1))
    return buf[:end]


# --- JSON lines ------------------------------------------------------------------------------------------------------

def parse_jsonl(path: Path, file: str) -> Parsed:
    """Parse a JSON-lines file with pyarrow; fall back to per-line parsing only when the fast path refuses it."""
    prefetched = prefetch.take(path)  # parsed in the background while the CLI imported the detectors
    raw = prefetched.raw if prefetched is not None else _read_raw(path, file)
    notes: list[Note] = []
    if raw[:2] in UTF16_BOMS:  # not the file's bytes: its line ends are counted again where a line is cited
        raw = _text_bytes(raw, file, notes)
        newlines = raw.count(b"\n")
    else:
        newlines = lineindex.remember(path, raw)  # counted once: lines up rows here, finds cited lines later
    buf = _without_nul_tail(raw.removeprefix(_BOM), file, notes)
    buf, truncated = _drop_truncated_last_line(buf)
    if truncated is not None:
        notes.append(Note(file, "last line is cut short (the run was probably stopped mid-write); dropped",
                          line=truncated))
    if not buf or buf.isspace():
        return Parsed({}, np.zeros(0, dtype="int64"), notes + [Note(file, "no records in the file")])
    if prefetch.may_be_too_wide(buf, newlines):
        keys = _keys_worth_reading(buf, newlines, file, notes)
        if keys is not None:
            return _jsonl_keeping(buf, keys, file, notes, newlines)
    fast = _jsonl_with_arrow(buf, prefetched, newlines)  # neither the BOM nor a cut last line holds a line end
    if fast is not None:
        fast.notes[:0] = notes
        return fast
    return _jsonl_line_by_line(buf, file, notes)


# --- JSON lines with too many keys -----------------------------------------------------------------------------------

CENSUS_BLOCK = 1 << 20  # keys are counted block by block: where a key first occurs is known to a block
MAX_CENSUS_KEYS = 1 << 20  # distinct keys held while counting; beyond it keys seen once are let go
MIN_KEY_RECORDS = 2  # a key logged once is a value, not a series a detector can read
TYPE_SAMPLE_LINES = 500  # the first lines whose parse gives the kept keys their types
TYPE_SAMPLE_BYTES = 1 << 18


@dataclass(frozen=True)
class _Keys:
    """The keys to read from a file with too many (bytes, as written), each with the start of the block it first
    occurs in."""

    names: list[bytes]
    first_block: dict[bytes, int]


def _keys_worth_reading(buf: bytes, newlines: int, file: str, notes: list[Note]) -> _Keys | None:
    """Count every key of a JSON-lines file that may hold too many (prefetch.may_be_too_wide); None when it holds no
    more than MAX_KEYS and a table of them fits in MAX_TABLE_BYTES. Otherwise the keys logged in MIN_KEY_RECORDS or
    more records, the most logged first, as many as fit (a step key always), with Notes on the rest."""
    counts: Counter = Counter()
    first_block: dict[bytes, int] = {}
    let_go = 0
    start = 0
    while start < len(buf):
        end = buf.find(b"\n", start + CENSUS_BLOCK) + 1 or len(buf)
        found = Counter(prefetch.KEY.findall(buf, start, end))
        counts.update(found)
        for key in found:
            first_block.setdefault(key, start)
        if len(counts) > MAX_CENSUS_KEYS:  # bounded memory, whatever the file: keys seen once go
            once = [key for key, n in counts.items() if n == 1]
            let_go += len(once)
            for key in once:
                del counts[key], first_block[key]
        start = end
    distinct, rows = len(counts) + let_go, newlines + (not buf.endswith(b"\n"))
    if distinct <= prefetch.MAX_KEYS and rows * distinct * 8 <= prefetch.MAX_TABLE_BYTES:
        return None
    kept = _most_logged(counts, distinct, rows, file, notes, "key")
    return _Keys(kept, {key: first_block[key] for key in kept})


def _most_logged(counts: Counter, distinct: int, rows: int, file: str, notes: list[Note], noun: str) -> list:
    """Of a file with too many keys (columns), those logged in MIN_KEY_RECORDS records or more, the most logged first
    (ties in file order), as many as MAX_KEYS and MAX_TABLE_BYTES allow, its step key first; Notes on the rest.
    `counts`: records holding each key (bytes or str); `distinct` may exceed len(counts) by keys let go."""
    fit = min(prefetch.MAX_KEYS, max(1, prefetch.MAX_TABLE_BYTES // (8 * rows)))
    repeated = [key for key, n in counts.most_common() if n >= MIN_KEY_RECORDS]
    kept = [key for key in repeated if _shown(key).strip().lower() in STEP_COLUMNS][:1]
    kept += [key for key in repeated if key not in kept][:fit - len(kept)]
    once = distinct - len(repeated)
    if once:
        examples = ", ".join(repr(_shown(k)) for k in [k for k, n in counts.items() if n < MIN_KEY_RECORDS][:3])
        notes.append(Note(file, f"{once} {noun}(s) hold a value in at most one record each ({examples}, ...): "
                                f"with {distinct} {noun}s in all, too many to be metrics; not read", count=once))
    left = len(repeated) - len(kept)
    if left:
        need = rows * len(repeated) * 8
        why = (f"more than {prefetch.MAX_KEYS} are not metrics" if need <= prefetch.MAX_TABLE_BYTES
               else f"a table of all {len(repeated)} over {rows} records would take {need / 1e9:.1f} GB")
        notes.append(Note(file, f"{len(repeated)} {noun}s hold values in several records; the {len(kept)} most "
                                f"logged are read and {left} are not ({why})", count=left))
    return kept


def _shown(key: bytes | str) -> str:
    return _unicode(key.decode("utf-8", "replace") if isinstance(key, bytes) else key)


def _jsonl_keeping(buf: bytes, keys: _Keys, file: str, notes: list[Note], newlines: int) -> Parsed:
    """Parse only `keys` (the others are skipped by pyarrow, never stored), with types from a sample of lines."""
    names = {_unicode(k.decode("utf-8", "replace")) for k in keys.names}
    schema = _schema_of(buf, keys, names)
    if schema is not None:
        fast = _jsonl_with_arrow(buf, newlines=newlines, schema=schema)
        if fast is not None:
            fast.notes[:0] = notes
            return fast
    return _jsonl_line_by_line(buf, file, notes, schema=schema, keep=names)


def _schema_of(buf: bytes, keys: _Keys, names: set[str]):
    """A pyarrow schema for the kept top-level keys, their types read from the file's first lines and the first
    line of each kept key not among them; numbers as float64, which takes ints and floats alike. None when the
    sample does not parse (the slow path reads the file then)."""
    import pyarrow as pa
    import pyarrow.json as pj

    end = 0
    for _ in range(TYPE_SAMPLE_LINES):
        end = buf.find(b"\n", end, TYPE_SAMPLE_BYTES) + 1
        if not end:
            end = min(len(buf), TYPE_SAMPLE_BYTES)
            break
    head = buf[:buf.rfind(b"\n", 0, end) + 1] if end < len(buf) else buf
    seen = set(prefetch.KEY.findall(head))
    lines = head.split(b"\n")
    for key in keys.names:
        if key in seen:
            continue
        found = re.compile(b'"' + re.escape(key) + rb'"\s*:').search(buf, keys.first_block[key])
        if found:
            start = buf.rfind(b"\n", 0, found.start()) + 1
            stop = buf.find(b"\n", found.end())
            lines.append(buf[start:stop if stop >= 0 else len(buf)])
    objects = [line for line in map(bytes.strip, lines) if line[:1] == b"{" and line[-1:] == b"}"]
    sample, _ = _swap_tokens(b"\n".join(objects) + b"\n")
    try:
        table = pj.read_json(pa.BufferReader(sample))
    except (pa.ArrowException, ValueError):
        return None
    fields = [pa.field(f.name, _widened(f.type)) for f in table.schema if f.name in names]
    return pa.schema([f for f in fields if f.type is not None])


def _widened(kind):
    """The type a kept key is read as: numbers (and keys so far only null) as float64, structs field by field;
    None for lists and other values that are never metrics."""
    import pyarrow as pa

    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return pa.float64()
    if pa.types.is_struct(kind):
        fields = [pa.field(kind.field(i).name, _widened(kind.field(i).type)) for i in range(kind.num_fields)]
        fields = [f for f in fields if f.type is not None]
        return pa.struct(fields) if fields else None
    if pa.types.is_string(kind) or pa.types.is_timestamp(kind) or pa.types.is_boolean(kind):
        return kind
    return None


def _drop_truncated_last_line(buf: bytes) -> tuple[bytes, int | None]:
    """A last line without a newline that does not parse was cut by a killed writer: drop it, return its line."""
    if not buf or buf.endswith(b"\n"):
        return buf, None
    cut = buf.rfind(b"\n") + 1
    last = buf[cut:]
    if not last.strip():
        return buf, None
    try:
        json.loads(last.decode("utf-8", "replace"))
        return buf, None
    except (ValueError, RecursionError):
        return buf[:cut], buf.count(b"\n", 0, cut) + 1


def _swap_tokens(buf: bytes) -> tuple[bytes, dict[float, int]]:
    """Swap bare NaN/Infinity values for sentinel numbers; returns how many of each sentinel were written."""
    written: dict[float, int] = {}
    if _arrow_reads_nonfinite_tokens() or (b"NaN" not in buf and b"Infinity" not in buf):
        return buf, written
    for token in _TOKENS:
        sentinel = _SENTINELS[token]
        for sep in _SEPARATORS:
            found = buf.count(sep + token)
            if found:
                buf = buf.replace(sep + token, sep + repr(sentinel).encode())
                written[sentinel] = written.get(sentinel, 0) + found
    return buf, written


@functools.lru_cache(maxsize=None)
def _arrow_reads_nonfinite_tokens() -> bool:
    """Whether this pyarrow reads bare NaN/Infinity itself (older versions refuse them): then no swap is needed."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        row = pj.read_json(pa.BufferReader(b'{"a": NaN, "b": Infinity, "c": -Infinity}\n')).to_pylist()[0]
    except (pa.ArrowException, ValueError):
        return False
    return math.isnan(row["a"]) and row["b"] == math.inf and row["c"] == -math.inf


def _sentinels_match(columns: dict[str, Column], written: dict[float, int]) -> bool:
    """Every sentinel in the table is one we wrote: no logged value happens to equal one, and no token we swapped
    sat inside a string. Otherwise the exact (slow) path must read the file."""
    seen = dict.fromkeys(_SENTINELS.values(), 0)
    for col in columns.values():
        if col.values.dtype.kind == "f":
            for sentinel in seen:
                seen[sentinel] += int(np.count_nonzero(col.values == sentinel))
    return all(seen[s] == written.get(s, 0) for s in seen)


def _jsonl_with_arrow(buf: bytes, prefetched: prefetch.Prefetched | None = None,
                      newlines: int | None = None, schema=None) -> Parsed | None:
    """The fast path: pyarrow over the whole buffer. None when it refuses the file or rows cannot be lined up.
    With a `schema`, only its keys are read (as its types) and the others are skipped."""
    import pyarrow as pa
    import pyarrow.json as pj

    swapped, written = _swap_tokens(buf)
    try:
        table = None
        if prefetched is not None and swapped is prefetched.raw and schema is None:  # parsed in the background
            table, error = prefetched.parsed()
            if error is not None:
                raise error
        if table is None:
            options = (pj.ParseOptions() if schema is None
                       else pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
            table = pj.read_json(pa.BufferReader(swapped), parse_options=options)
        columns = _arrow_columns(table)
    except (pa.ArrowException, UnicodeDecodeError, ValueError, TypeError):
        return None
    if written and not _sentinels_match(columns, written):
        return None
    lines = _row_lines(buf, table.num_rows, json_lines=True, newlines=newlines)
    if lines is None:
        return None
    return Parsed(columns, lines, sentinels=bool(written))


def _row_lines(buf: bytes, n_rows: int, json_lines: bool, skip_header: bool = False,
               newlines: int | None = None) -> np.ndarray | None:
    """1-based line numbers of the rows a parser returned, which skips blank lines; None if they do not line up.
    `newlines` is buf.count(b"\n") where the caller counted it already."""
    n_lines = (buf.count(b"\n") if newlines is None else newlines) + (0 if buf.endswith(b"\n") else 1)
    first = 2 if skip_header else 1
    if n_rows == n_lines - first + 1:
        return np.arange(first, n_rows + first, dtype="int64")
    content = _content_lines(buf, json_lines)
    if skip_header:
        content = content[1:]
    return content if len(content) == n_rows else None


def _content_lines(buf: bytes, any_whitespace: bool) -> np.ndarray:
    """1-based numbers of the lines that hold something other than whitespace (or than `\\r`, for CSV)."""
    a = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(a == 10)
    if not len(a) or a[-1] != 10:
        ends = np.append(ends, len(a))
    starts = np.concatenate(([0], ends[:-1] + 1))
    ink = (a > 32) if any_whitespace else ((a != 13) & (a != 10))
    if not len(a):
        return np.zeros(0, dtype="int64")
    counts = np.add.reduceat(ink.astype(np.int32), np.minimum(starts, len(a) - 1))
    counts[starts >= ends] = 0  # empty lines: reduceat returns the element itself there
    return np.flatnonzero(counts > 0).astype("int64") + 1


def _jsonl_line_by_line(buf: bytes, file: str, notes: list[Note], schema=None,
                        keep: set[str] | None = None) -> Parsed:
    """The tolerant path: drop lines that are not JSON objects (counted), then parse the rest (only the keys in
    `keep`, when given, read as `schema` on the fast try)."""
    raw_lines = buf.split(b"\n")
    numbered = [(i + 1, line.strip()) for i, line in enumerate(raw_lines) if line.strip()]
    candidates = [(n, line) for n, line in numbered if line[:1] == b"{" and line[-1:] == b"}"]
    garbage_lines = [n for n, line in numbered if not (line[:1] == b"{" and line[-1:] == b"}")]
    parsed = None
    if candidates and (keep is None or schema is not None):
        joined = b"\n".join(line for _, line in candidates) + b"\n"
        parsed = _jsonl_with_arrow(joined, schema=schema)
        if parsed is not None and len(parsed.lines) == len(candidates):
            parsed.lines = np.array([n for n, _ in candidates], dtype="int64")
        else:
            parsed = None
    if parsed is None:  # some candidate is still broken, or types clash between lines: the slow, exact path
        records, kept = [], []
        for n, line in candidates:
            try:
                obj = json.loads(line.decode("utf-8", "replace"))  # reads NaN/Infinity as floats
            except (ValueError, RecursionError):
                garbage_lines.append(n)
                continue
            if isinstance(obj, dict):
                records.append(obj if keep is None else {k: v for k, v in obj.items() if k in keep})
                kept.append(n)
            else:
                garbage_lines.append(n)
        parsed = Parsed(_record_columns(records), np.array(kept, dtype="int64"))
    if garbage_lines:
        garbage_lines.sort()
        notes.append(Note(file, f"{len(garbage_lines)} line(s) that are not JSON objects were skipped "
                                f"(first at line {garbage_lines[0]})", line=garbage_lines[0],
                          count=len(garbage_lines)))
    parsed.notes[:0] = notes
    return parsed


_MISSING = object()


def _record_columns(records: list[dict]) -> dict[str, Column]:
    """Columns from parsed JSON objects (the slow path): nested objects flattened as `outer/inner`; a key that is
    absent is no value, a NaN that was written is one."""
    flat = [_flat_record(r) for r in records]
    names = list(dict.fromkeys(k for r in flat for k in r))
    columns: dict[str, Column] = {}
    for name in names:
        raw = [r.get(name, _MISSING) for r in flat]
        valid = np.array([v is not _MISSING and v is not None for v in raw], dtype=bool)
        present = [v for v in raw if v is not _MISSING and v is not None]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            values = np.array([float(v) if ok else np.nan for v, ok in zip(raw, valid)], dtype="float64")
        elif any(isinstance(v, bool) for v in present) or all(isinstance(v, (list, dict)) for v in present):
            continue
        else:
            values = np.array([v if ok and not isinstance(v, (list, dict)) else None for v, ok in zip(raw, valid)],
                              dtype=object)
        columns[name] = Column(values, valid)
    return columns


def _flat_record(record: dict, prefix: str = "", depth: int = 0) -> dict:
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 8:
            out.update(_flat_record(value, f"{name}/", depth + 1))
        else:
            out[name] = value
    return out


def _arrow_columns(table) -> dict[str, Column]:
    """numpy columns from a pyarrow table: numbers as float64, text as objects, structs flattened as `a/b`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: dict[str, Column] = {}

    def add(name: str, col) -> None:
        kind = col.type
        if pa.types.is_struct(kind):
            for i in range(kind.num_fields):
                add(f"{name}/{kind.field(i).name}", pc.struct_field(col, [i]))
            return
        valid = None if col.null_count == 0 else pc.is_valid(col).to_numpy(zero_copy_only=False)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            columns[name] = Column(col.to_numpy(zero_copy_only=False).astype("float64", copy=False), valid)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            codes, words = _arrow_strings(col)
            columns[name] = Column(words[codes], valid, dictionary=(codes, words))
        elif pa.types.is_timestamp(kind):  # a clock column written as text (naive times read as UTC)
            ticks = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False).astype("float64")
            columns[name] = Column(ticks / TIME_UNITS[kind.unit], valid, is_time=True)
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            values = col.to_numpy(zero_copy_only=False)
            columns[name] = Column(np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                                             for v in values], dtype=object), valid)
        # booleans, lists and nulls-only columns are not metrics

    for name, col in zip(table.column_names, table.columns):
        add(name, col)
    return columns


def _arrow_strings(col) -> tuple[np.ndarray, np.ndarray]:
    """Text column as (codes, words) with words[codes] the objects, via a dictionary so that a million `"train"`s
    cost one string each; the last word is None, for missing values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(col)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    words = np.array(encoded.dictionary.to_pylist() + [None], dtype=object)
    codes = encoded.indices.fill_null(len(words) - 1).to_numpy(zero_copy_only=False)
    return codes, words


# --- CSV -------------------------------------------------------------------------------------------------------------

def parse_csv(path: Path, file: str) -> Parsed:
    """Parse a CSV/TSV file with pyarrow: rows with the wrong number of fields are skipped and counted."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    notes: list[Note] = []
    buf = _without_nul_tail(_text_bytes(_read_raw(path, file), file, notes), file, notes)
    if not buf.strip():
        return Parsed({}, np.zeros(0, dtype="int64"), [Note(file, "no records in the file")])
    delimiter = _delimiter(path, buf)
    bad: list[str] = []

    def skip(row) -> str:
        bad.append(row.text)
        return "skip"

    def parse(data: bytes, threads: bool, columns: list[str] | None = None):
        bad.clear()
        return pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(use_threads=threads),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip, newlines_in_values=False),
            # Only an empty field is "no value": "nan" and "inf" are values, and evidence.
            convert_options=pcsv.ConvertOptions(null_values=[""], strings_can_be_null=True,
                                                quoted_strings_can_be_null=True, include_columns=columns))

    cut = buf.rfind(b"\n") + 1
    if not buf.endswith(b"\n") and cut and buf[cut:].strip():
        # CSV writers end every row with a line break: a last row without one was cut by a killed writer, and a
        # cut number ("1." of "1.9") would parse as a wrong value
        notes.append(Note(file, "last line has no line end, so it may be cut short (the run was probably stopped "
                                "mid-write); dropped", line=buf.count(b"\n") + 1))
        buf = buf[:cut]
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError:  # pyarrow cannot hand a row of invalid UTF-8 to the skip handler
        buf = buf.decode("utf-8", "replace").encode("utf-8")
    try:
        columns = None
        if buf[:buf.find(b"\n")].count(delimiter.encode()) >= prefetch.MAX_KEYS:  # a header of too many names?
            columns = _csv_columns_worth_reading(buf, delimiter, file, notes)
        table = parse(buf, threads=True, columns=columns)
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        from analyzer.errors import InputError

        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise InputError(f"not a readable CSV table ({reason})", path=file) from None
    columns = _arrow_columns(table)
    lines = None
    if bad:
        notes.append(Note(file, f"{len(bad)} line(s) with the wrong number of fields were skipped",
                          count=len(bad)))
        lines = _csv_lines_without(buf, bad)
    if lines is None or len(lines) != table.num_rows:
        lines = _row_lines(buf, table.num_rows, json_lines=False, skip_header=True)
    if lines is None:  # quoted line breaks or skipped rows we cannot place: cite the row order instead
        lines = np.arange(2, table.num_rows + 2, dtype="int64")
        notes.append(Note(file, "line numbers are row numbers (the file has quoted line breaks or odd rows)"))
    return Parsed(columns, lines, notes)


def _csv_columns_worth_reading(buf: bytes, delimiter: str, file: str, notes: list[Note]) -> list[str] | None:
    """The columns to read of a CSV whose header names more than MAX_KEYS (see _most_logged); None when all of them
    are to be read. Its cells are counted on the bytes: pyarrow takes ~8 kB per column only to look at a header (400
    MB for 50000 columns), and reading the chosen ones (include_columns) costs little."""
    import csv
    import io

    header_end = buf.find(b"\n") + 1
    names = next(csv.reader(io.StringIO(buf[:header_end].decode("utf-8", "replace").rstrip("\r\n")),
                            delimiter=delimiter), [])
    if len(set(names)) <= prefetch.MAX_KEYS or len(set(names)) < len(names):  # duplicates: pyarrow's names differ
        return None
    if b'"' in buf[header_end:]:  # quoted cells may hold the delimiter: no byte count; pyarrow reads them all
        return None
    filled, rows = np.zeros(len(names), dtype="int64"), 0
    start = header_end
    while start < len(buf):
        end = buf.find(b"\n", start + CENSUS_BLOCK) + 1 or len(buf)
        block_filled, block_rows = _csv_filled(buf[start:end], delimiter, len(names))
        filled += block_filled
        rows += block_rows
        start = end
    if len(names) <= prefetch.MAX_KEYS and rows * len(names) * 8 <= prefetch.MAX_TABLE_BYTES:
        return None
    counts = Counter(dict(zip(names, filled.tolist())))  # ties keep the header's order
    return _most_logged(counts, len(counts), max(rows, 1), file, notes, "column")


def _csv_filled(block: bytes, delimiter: str, width: int) -> tuple[np.ndarray, int]:
    """(cells holding something per column, rows) of whole CSV lines without quotes; rows of another width, which
    the parser skips, and blank lines are not counted."""
    if not block.endswith(b"\n"):
        block += b"\n"
    a = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero((a == ord(delimiter)) | (a == 10))  # where each field ends
    ink = np.concatenate(([0], np.cumsum(a != 13, dtype=np.int64)))  # a `\r` before a line end is no content
    begins = np.concatenate(([0], ends[:-1] + 1))
    has_value = ink[ends] - ink[begins] > 0
    line_end = a[ends] == 10
    row = np.concatenate(([0], np.cumsum(line_end)[:-1]))  # the row each field belongs to
    per_row = np.bincount(row)
    row_start = np.concatenate(([0], np.cumsum(per_row)[:-1]))
    column = np.arange(len(ends)) - row_start[row]
    good = per_row[row] == width
    return np.bincount(column[good & has_value], minlength=width)[:width], int((per_row == width).sum())


def _delimiter(path: Path, buf: bytes) -> str:
    header = buf[:4096].split(b"\n", 1)[0]
    if path.suffix.lower() == ".tsv" or header.count(b"\t") > header.count(b","):
        return "\t"
    if header.count(b";") > header.count(b","):
        return ";"
    return ","


def _csv_lines_without(buf: bytes, bad: list[str]) -> np.ndarray | None:
    """Line numbers of the good data rows when some rows were skipped: content lines minus header minus bad ones."""
    content = _content_lines(buf, any_whitespace=False)
    if not len(content):
        return None
    text_lines = buf.split(b"\n")
    bad_set = {b.encode("utf-8", "replace") for b in bad}
    keep = [n for n in content[1:].tolist() if text_lines[n - 1].rstrip(b"\r") not in bad_set]
    return np.array(keep, dtype="int64")


# --- from columns to a tidy frame ------------------------------------------------------------------------------------

def tidy(parsed: Parsed, file: str, rank: int | None = None) -> Table:
    """Turn parsed columns into Ingested's long frame: one row per (record, metric) that holds a value."""
    notes = list(parsed.notes)
    columns = parsed.columns
    n_rows = len(parsed.lines)
    if not columns or not n_rows:
        return Table(None, notes)
    lower = {}
    for name in columns:
        lower.setdefault(name.strip().lower(), name)
    step_name = next((lower[s] for s in STEP_COLUMNS if s in lower and columns[lower[s]].is_numeric), None)
    if step_name is None:
        step_name = _text_step_column(columns, lower, file, notes, parsed)
    if step_name is None:
        notes.append(Note(file, f"no step column ({', '.join(STEP_COLUMNS[:4])}, ...): "
                                f"{n_rows} record(s) are not metric records; ignored", count=n_rows))
        return Table(None, notes)

    steps, has_step = _steps(columns[step_name], step_name, file, notes, n_rows)
    if not has_step.all():
        missing = int((~has_step).sum())
        first = int(parsed.lines[np.flatnonzero(~has_step)[0]])
        notes.append(Note(file, f"{missing} record(s) without a {step_name} are not metric records; ignored",
                          line=first, count=missing))
    split = _split_column(columns, lower)
    ranks = _rank_column(columns, lower, rank)

    clock_name, times = _clock_column(columns, lower)

    long_name = next((lower[c] for c in LONG_NAME_COLUMNS if c in lower and not columns[lower[c]].is_numeric), None)
    if long_name is not None and "value" in lower:
        metrics = _long_metrics(columns[long_name], columns[lower["value"]], file, notes, parsed)
    else:
        skip = {step_name.strip().lower(), *STEP_COLUMNS[:-1], *NOT_METRICS} | (
            {clock_name.strip().lower()} if clock_name else set())
        metrics = _wide_metrics(columns, skip, file, notes, parsed)
        metrics = _ultralytics_totals(metrics, file, notes)

    pieces_idx, pieces_val, pieces_name = [], [], []
    for name, values, valid in metrics:
        keep = has_step if valid is None else (has_step & valid)
        idx = np.flatnonzero(keep)
        if not len(idx):
            continue
        pieces_idx.append(idx)
        pieces_val.append(values[idx] if values.ndim else np.full(len(idx), float(values)))
        pieces_name.append((name, len(idx)) if isinstance(name, str) else (name[idx], len(idx)))
    if not pieces_idx:
        notes.append(Note(file, "no numeric metric columns"))
        return Table(None, notes)
    if times is not None:
        clock_idx = _clock_rows(pieces_idx, pieces_name, split, times)
        if len(clock_idx):
            pieces_idx.append(clock_idx)
            pieces_val.append(times[clock_idx])
            pieces_name.append((CLOCK_METRIC, len(clock_idx)))
    idx = np.concatenate(pieces_idx)
    value = np.concatenate(pieces_val)
    if parsed.sentinels:
        value = _restore_nonfinite(value)
    names = _names(pieces_name)
    frame = {"step": steps[idx], "name": names, "value": value, "line": parsed.lines[idx]}
    if split is not None:
        frame["split"] = pd.Categorical.from_codes(split[idx], categories=SPLITS)
    if ranks is not None:
        frame["rank"] = ranks if np.isscalar(ranks) else ranks[idx]
    return Table(pd.DataFrame(frame, copy=False), notes)


def _text_step_column(columns: dict[str, Column], lower: dict[str, str], file: str, notes: list[Note],
                      parsed: Parsed) -> str | None:
    """A step column that the parser left as text because a few records hold no number there (`"step": "x"`,
    `"7"`): mostly numbers, it is the step column, and its numbers are used (numbers written as text too); the
    records without one are counted as such."""
    for key in STEP_COLUMNS:
        if key in lower and not columns[lower[key]].is_numeric:
            numbers, ok = _numeric_text(columns[lower[key]], lower[key], file, notes, parsed)
            if numbers is not None:
                columns[lower[key]] = Column(numbers, valid=ok)
                return lower[key]
    return None


def _clock_column(columns: dict[str, Column], lower: dict[str, str]) -> tuple[str | None, np.ndarray | None]:
    """(column, each row's time in seconds since the epoch, NaN where none) of the first clock column whose values
    read as such (numbers in s/ms/us/ns, or date-time text), else (None, None)."""
    for key in CLOCK_COLUMNS:
        if key not in lower:
            continue
        col = columns[lower[key]]
        if col.is_numeric:
            values = col.values.astype("float64", copy=True)
            if col.valid is not None:
                values[~col.valid] = np.nan
            if not clock.is_epoch_clock(values):
                continue
            return lower[key], clock.epoch_seconds(values)
        if col.values.dtype == object:  # date-time text the parser left as text (the slow JSON path)
            stamps = pd.to_datetime(pd.Series(col.values, dtype=object), utc=True, errors="coerce", format="ISO8601")
            values = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype="float64", copy=True)
            present = pd.notna(col.values) if col.valid is None else col.valid & pd.notna(col.values)
            values[~present] = np.nan
            seconds = clock.epoch_seconds(values)
            if np.isfinite(seconds).sum() * 2 > present.sum():  # mostly date-times, not a column of words
                return lower[key], seconds
    return None, None


def _clock_rows(pieces_idx: list[np.ndarray], pieces_name: list[tuple[Any, int]], split: np.ndarray | None,
                times: np.ndarray) -> np.ndarray:
    """Rows whose time is the training loop's clock: those holding a point of the loop metric (clock.loop_metric:
    the training loss, else the most logged training metric), not marked eval, with a time."""
    not_eval = None if split is None else split != SPLITS.index("eval")
    counts: dict[str, int] = {}
    names_of = []  # per piece: each row's name (a str for a wide column, an array for the long format)
    for idx, (name, _) in zip(pieces_idx, pieces_name):
        train = np.ones(len(idx), dtype=bool) if not_eval is None else not_eval[idx]
        if isinstance(name, str):
            counts[name] = counts.get(name, 0) + int(train.sum())
        else:
            for key, count in pd.Series(name[train]).value_counts(sort=False).items():
                counts[str(key)] = counts.get(str(key), 0) + int(count)
        names_of.append((idx, name, train))
    loop = clock.loop_metric(counts, counts.values())
    rows = [idx[train & (name == loop)] for idx, name, train in names_of if not isinstance(name, str) or name == loop]
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype="int64")
    return np.sort(rows[np.isfinite(times[rows])])


def _names(pieces: list[tuple[Any, int]]) -> pd.Categorical:
    """The name column as a categorical: a few distinct names over millions of rows cost one string each."""
    if all(isinstance(name, str) for name, _ in pieces):
        codes = np.repeat(np.arange(len(pieces), dtype=np.int32), [n for _, n in pieces])
        uniques = [name for name, _ in pieces]
    else:
        codes, uniques = pd.factorize(np.concatenate([np.full(n, name, dtype=object) if isinstance(name, str)
                                                      else name for name, n in pieces]))
    names = [_unicode(str(name)) for name in uniques]
    categories = list(dict.fromkeys(names))
    if len(categories) < len(names):  # two names became one
        codes = np.array([categories.index(name) for name in names], dtype=np.int32)[codes]
    return pd.Categorical.from_codes(codes, categories=categories)


def _unicode(text: str) -> str:
    """`text`, with what cannot be UTF-8 (a lone surrogate from a JSON `\\ud800` escape) written as its escape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _restore_nonfinite(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values[values == NAN_SENTINEL] = np.nan
    values[values == POS_INF_SENTINEL] = np.inf
    values[values == NEG_INF_SENTINEL] = -np.inf
    return values


def _steps(col: Column, name: str, file: str, notes: list[Note], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    values = col.values.astype("float64", copy=False)
    if col.values.dtype.kind == "f":
        values = _restore_nonfinite(values)
    has = np.isfinite(values) if col.valid is None else (col.valid & np.isfinite(values))
    huge = has & (np.abs(values) >= MAX_STEP)
    if huge.any():
        notes.append(Note(file, f"{int(huge.sum())} {name} value(s) too large to be a step ignored",
                          count=int(huge.sum())))
        has &= ~huge
    fractional = has & (values != np.floor(values))
    if fractional.any():
        if name.lower() == "epoch":  # fractional epochs as the only clock: the row order is the finer step
            notes.append(Note(file, "steps are fractional epochs; the row number is used as the step"))
            return np.arange(n_rows, dtype="int64"), has
        notes.append(Note(file, f"{int(fractional.sum())} non-integer {name} value(s) rounded down",
                          count=int(fractional.sum())))
    out = np.zeros(n_rows, dtype="int64")
    out[has] = np.floor(values[has]).astype("int64")
    return out, has


SPLITS = ("train", "eval")


def _split_column(columns: dict[str, Column], lower: dict[str, str]) -> np.ndarray | None:
    """Codes into SPLITS per row (-1: no split given, the metric's name decides)."""
    if "split" not in lower or columns[lower["split"]].is_numeric:
        return None
    column = columns[lower["split"]]
    if column.dictionary is not None:  # the reader's own codes: no hashing of a million strings again
        codes, uniques = column.dictionary
    else:
        codes, uniques = pd.factorize(column.values, use_na_sentinel=True)
    table = np.array([SPLITS.index(w) if (w := _split_word(u)) else -1 for u in uniques] + [-1], dtype=np.int8)
    return table[codes]  # -1 (missing) picks the trailing -1


def _split_word(word: Any) -> str | None:
    if not isinstance(word, str):
        return None
    key = word.strip().lower()
    if key in EVAL_SPLITS:
        return "eval"
    if key in TRAIN_SPLITS:
        return "train"
    return None


def _rank_column(columns: dict[str, Column], lower: dict[str, str], rank: int | None):
    for name in ("rank", "global_rank", "process_index"):
        if name in lower and columns[lower[name]].is_numeric:
            col = columns[lower[name]]
            values = col.values
            ok = np.isfinite(values) if col.valid is None else (col.valid & np.isfinite(values))
            out = np.full(len(values), rank or 0, dtype="int64")
            out[ok] = values[ok].astype("int64")
            return out
    return rank


def _wide_metrics(columns: dict[str, Column], skip: set[str], file: str, notes: list[Note], parsed: Parsed):
    """(name, values, valid) per metric column; names without the padding of a fixed-width header (Ultralytics
    8.0 writes `'%23s,'`)."""
    out = []
    for name, col in columns.items():
        key = name.strip().lower()
        if key in skip or key.startswith(CONFIG_PREFIX) or col.is_time:
            continue
        if col.is_numeric:
            out.append((name.strip(), col.values, col.valid))
            continue
        numbers, valid = _numeric_text(col, name, file, notes, parsed)
        if numbers is not None:
            out.append((name.strip(), numbers, valid))
    return out


# Ultralytics' results.csv (BaseTrainer.save_metrics) logs each loss term per epoch (train/box_loss, cls_loss,
# dfl_loss; seg_loss, pose_loss, kobj_loss by task) and no total; its trainer backpropagates their sum. Its
# optimizer's param groups are biases (pg0, warmed up from warmup_bias_lr), decayed weights (pg1) and norm weights
# (pg2): pg1 is the learning rate of the model's weights (BaseTrainer.build_optimizer).
ULTRALYTICS_TERMS = re.compile(r"(train|val)/(\w+)_loss")
ULTRALYTICS_SIGNATURE = {"train/box_loss", "train/cls_loss"}
ULTRALYTICS_LR = "lr/pg1"


def _ultralytics_totals(metrics: list, file: str, notes: list[Note]) -> list:
    """Add `train/loss` and `val/loss` (the sum of the terms) and name lr/pg1 `lr`, for a results.csv that has the
    terms but no total; anything else is returned as it is."""
    names = {name.strip().lower(): i for i, (name, _, _) in enumerate(metrics) if isinstance(name, str)}
    if not ULTRALYTICS_SIGNATURE <= names.keys() or {"train/loss", "loss", "val/loss"} & names.keys():
        return metrics
    out = list(metrics)
    for split in ("train", "val"):
        terms = sorted(n for n in names if (m := ULTRALYTICS_TERMS.fullmatch(n)) and m.group(1) == split)
        if len(terms) < 2:
            continue
        values = np.sum([np.asarray(metrics[names[t]][1], dtype="float64") for t in terms], axis=0)
        valids = [metrics[names[t]][2] for t in terms if metrics[names[t]][2] is not None]
        valid = np.logical_and.reduce(valids) if valids else None
        out.append((f"{split}/loss", values, valid))
        notes.append(Note(file, f"Ultralytics logs no total {split} loss: {split}/loss is the sum of "
                                f"{', '.join(terms)}, as its trainer backpropagates"))
    if ULTRALYTICS_LR in names and "lr" not in names:
        name, values, valid = metrics[names[ULTRALYTICS_LR]]
        out[names[ULTRALYTICS_LR]] = ("lr", values, valid)
        notes.append(Note(file, "lr is Ultralytics' lr/pg1, the learning rate of the weights (pg0 is the biases', "
                                "which warm up from warmup_bias_lr)"))
    return out


def _long_metrics(names: Column, values: Column, file: str, notes: list[Note], parsed: Parsed):
    if values.is_numeric:
        numbers, valid = values.values, values.valid
    else:
        numbers, valid = _numeric_text(values, "value", file, notes, parsed)
        if numbers is None:
            return []
    has_name = np.array([isinstance(n, str) and bool(n) for n in pd.unique(names.values)])  # per unique name
    uniques = pd.unique(names.values)
    good = {u for u, ok in zip(uniques, has_name) if ok}
    name_ok = pd.Series(names.values).isin(good).to_numpy()
    valid = name_ok if valid is None else (valid & name_ok)
    return [(names.values, numbers, valid)]


def _numeric_text(col: Column, name: str, file: str, notes: list[Note], parsed: Parsed):
    """Numbers written as text ("3.2", "nan"): kept; columns of words are not metrics; stray words are counted."""
    text = pd.Series(col.values, dtype=object)
    present = text.notna().to_numpy() if col.valid is None else col.valid & text.notna().to_numpy()
    if not present.any():
        return None, None
    numbers = pd.to_numeric(text.where(present, None).map(_as_number_text), errors="coerce").to_numpy(
        dtype="float64")
    nonfinite_ok = text.map(lambda v: (isinstance(v, str) and v.strip().lower().lstrip("+-") in
                                       ("nan", "inf", "infinity")) or isinstance(v, float)).to_numpy(dtype=bool)
    parsed_ok = present & (np.isfinite(numbers) | nonfinite_ok)
    if parsed_ok.sum() * 2 < present.sum():  # mostly words: a label column, not a metric
        return None, None
    stray = present & ~parsed_ok
    if stray.any():
        first = int(parsed.lines[np.flatnonzero(stray)[0]])
        notes.append(Note(file, f"{int(stray.sum())} non-numeric value(s) in column {name!r} ignored",
                          line=first, count=int(stray.sum())))
    return numbers, parsed_ok


def _as_number_text(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return value.strip()
    return None


