"""Diagnose: run the detectors on a Run, chain the findings, and produce the Diagnosis every renderer reads."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from analyzer.chain import link
from analyzer.detectors import DETECTORS, lookup
from analyzer.detectors.base import Detector
from analyzer.errors import InputError
from analyzer.findings import (
    BlindSpotOut, DetectorError, Diagnosis, Evidence, Finding, RunSummary, Skipped,
)
from analyzer.run import BlindSpot, Run

MAX_EVIDENCE_LINE = 300  # characters of a cited log line kept in a report


def diagnose_path(path: str | Path, *, select: Iterable[str] = (), ignore: Iterable[str] = (),
                  overrides: Mapping[str, str] | None = None, progress=None) -> Diagnosis:
    """Read a run directory and diagnose it."""
    from analyzer.ingest import read_run

    return diagnose_run(read_run(path, progress=progress), select=select, ignore=ignore, overrides=overrides)


def diagnose_run(run: Run, *, select: Iterable[str] = (), ignore: Iterable[str] = (),
                 overrides: Mapping[str, str] | None = None) -> Diagnosis:
    detectors = choose(select, ignore)
    params = parse_overrides(overrides or {})
    findings: list[Finding] = []
    skipped: list[Skipped] = []
    errors: list[DetectorError] = []
    for result in _check_all(run, detectors, params):  # in table order, however they were run
        if isinstance(result, DetectorError):
            errors.append(result)
        elif isinstance(result, Skipped):
            skipped.append(result)
        else:
            findings.extend(result)
    findings = fill_evidence_text(findings, run)
    ordered, roots = link(tuple(findings))
    return Diagnosis(
        run=summarize(run), findings=ordered, root_causes=roots,
        blind_spots=tuple(BlindSpotOut(b.message, b.affects) for b in (*run.blind_spots, *coverage_blind_spots(run))),
        skipped=tuple(skipped), errors=tuple(errors), detectors=tuple(d.name for d in detectors),
    )


PARALLEL_MIN_POINTS = 200_000  # below this the detectors take milliseconds: threads would only add overhead
MAX_THREADS = 2


def _check_all(run: Run, detectors: list[Detector], params: Mapping[str, Mapping[str, Any]]) -> list:
    """Each detector's result (findings, Skipped or DetectorError), in the order given.

    On a large run two threads share the work: detectors are pure functions of the Run, their heavy parts are
    numpy calls that release the GIL, and what they share is computed once (analyzer.detectors.stats.cached
    makes a second caller wait for the first). The results, and their order, are the same either way."""
    threads = min(MAX_THREADS, _cpus()) if len(run.scalars) >= PARALLEL_MIN_POINTS else 1
    if threads <= 1 or len(detectors) <= 1:
        return [_check(run, det, params) for det in detectors]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="postmortem-detector") as pool:
        return list(pool.map(lambda det: _check(run, det, params), detectors))


def _check(run: Run, det: Detector, params: Mapping[str, Mapping[str, Any]]):
    if det.requires and not any(run.has(m) for m in det.requires):
        return Skipped(det.name, "the run logs no " + " or ".join(det.requires))
    try:
        return det.check(run, {**det.params, **params.get(det.name, {})})
    except Exception as exc:  # a detector bug must not take the report down with it
        return DetectorError(det.name, f"{type(exc).__name__}: {exc}")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose(select: Iterable[str], ignore: Iterable[str]) -> list[Detector]:
    """The detectors to run, in table order; unknown names or codes are a usage error."""
    def resolve(keys: Iterable[str]) -> set[str]:
        out = set()
        for key in keys:
            det = lookup(key)
            if det is None:
                raise InputError(f"unknown detector {key!r} (see `postmortem detectors`)")
            out.add(det.name)
        return out

    chosen, dropped = resolve(select), resolve(ignore)
    return [d for d in DETECTORS.values() if (not chosen or d.name in chosen) and d.name not in dropped]


def parse_overrides(overrides: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`{"loss-spike.factor": "3"}` -> `{"loss-spike": {"factor": 3.0}}`, typed like the default."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, raw in overrides.items():
        name, _, param = key.partition(".")
        det = lookup(name)
        if det is None or not param:
            raise InputError(f"--set {key}={raw}: expected DETECTOR.PARAM=VALUE with a known detector")
        if param not in det.params:
            known = ", ".join(sorted(det.params)) or "none"
            raise InputError(f"--set {key}={raw}: {det.name} has no parameter {param!r} (known: {known})")
        out[det.name][param] = _typed(raw, det.params[param], key)
    return dict(out)


def _typed(raw: str, default: Any, key: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
    except ValueError:
        raise InputError(f"--set {key}={raw}: expected a {type(default).__name__}") from None
    return raw


def summarize(run: Run) -> RunSummary:
    return RunSummary(
        path=run.path, name=run.name, formats=run.formats, first_step=run.first_step, last_step=run.last_step,
        n_points=len(run.scalars), metrics=run.metrics,
        hparams={name: hp.value for name, hp in run.hparams.items()},
        checkpoints=tuple(
            {"path": c.path, "step": c.step, "format": c.format,
             **({"nonfinite": c.stats.nonfinite} if c.stats is not None else {}),
             **({"error": c.error} if c.error else {})}
            for c in run.checkpoints),
        status=run.status,
    )


def coverage_blind_spots(run: Run) -> list[BlindSpot]:
    """What the logged data cannot show, whatever the format."""
    spots = []
    if not run.has("grad_norm"):
        spots.append(BlindSpot("the run logs no gradient norm: explosions and vanishing gradients are invisible",
                               ("grad-explosion", "grad-vanishing", "loss-spike")))
    loss = run.series("loss") if run.has("loss") else None
    if loss is not None and len(loss) > 2:
        interval = int(_median_gap(loss.index.to_numpy()))
        if interval >= 50:
            spots.append(BlindSpot(f"the loss is logged every {interval} steps: a spike shorter than that "
                                   "can fall between two points", ("loss-spike", "nonfinite-onset")))
    if not run.checkpoints:
        spots.append(BlindSpot("no checkpoint was found: weights and optimizer state cannot be checked, and no "
                               "restart point can be named", ("checkpoint-nonfinite", "init-variance")))
    return spots


def _median_gap(steps) -> float:
    import numpy as np

    ordered = np.sort(np.asarray(steps))
    # np.unique goes through a hash table on numpy >= 2.3: ~1 s for a million steps, where sorting takes 15 ms
    gaps = np.diff(ordered[np.r_[True, ordered[1:] != ordered[:-1]]]) if len(ordered) else ordered
    return float(np.median(gaps)) if len(gaps) else 0.0


def fill_evidence_text(findings: list[Finding], run: Run) -> list[Finding]:
    """Fill each evidence item's text from its file, so a reader can check it in the original.

    Detectors cite (file, line) only: they do no I/O. Each cited file is read once, up to its last cited line.
    """
    wanted: dict[str, set[int]] = defaultdict(set)
    for f in findings:
        for e in f.evidence:
            if not e.text and e.line is not None:
                wanted[e.file].add(e.line)
    if not wanted:
        return findings
    root = Path(run.path) if Path(run.path).is_dir() else Path(run.path).parent
    texts = {(file, n): text for file, lines in wanted.items() for n, text in _read_lines(root / file, lines).items()}
    return [replace(f, evidence=tuple(e if e.text else Evidence(e.file, e.line, texts.get((e.file, e.line), ""))
                                      for e in f.evidence)) for f in findings]


EVIDENCE_BLOCK = 1 << 20  # bytes per block when counting line ends to find a cited line


def _read_lines(path: Path, lines: set[int]) -> dict[int, str]:
    """The given 1-based lines of a text file; nothing for binary files (TensorBoard, SQLite: the record is cited).

    Line ends are counted block by block in C, so a line near the end of a million-line log is found without a
    Python step per line."""
    import bisect

    import numpy as np

    from analyzer import lineindex

    known = lineindex.read_lines(path, lines, MAX_EVIDENCE_LINE)  # a reader counted this file's lines already
    if known is not None:
        return known
    out: dict[int, str] = {}
    try:
        with open(path, "rb") as fh:
            if b"\0" in fh.read(1024):
                return out
            fh.seek(0)
            data = fh.read()
    except OSError:
        return out
    block_starts = range(0, len(data), EVIDENCE_BLOCK)
    through = []  # line ends in data[:end of block b]
    total = 0
    for a in block_starts:
        total += data.count(b"\n", a, a + EVIDENCE_BLOCK)
        through.append(total)
    ends_in_block: dict[int, np.ndarray] = {}

    def line_end(k: int) -> int:
        """Offset of the k-th line end (1-based); it exists (k <= total)."""
        b = bisect.bisect_left(through, k)
        if b not in ends_in_block:
            a = block_starts[b]
            chunk = np.frombuffer(data, dtype=np.uint8, count=min(EVIDENCE_BLOCK, len(data) - a), offset=a)
            ends_in_block[b] = np.flatnonzero(chunk == 10) + a
        before = through[b - 1] if b else 0
        return int(ends_in_block[b][k - before - 1])

    for number in sorted(lines):
        if number < 1 or number - 1 > total:
            continue
        start = 0 if number == 1 else line_end(number - 1) + 1
        if start >= len(data):
            continue  # after the last line end there is no further line
        stop = line_end(number) + 1 if number <= total else len(data)
        out[number] = data[start:stop].decode("utf-8", "replace").strip()[:MAX_EVIDENCE_LINE]
    return out
