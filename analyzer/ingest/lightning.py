"""PyTorch Lightning CSVLogger: `lightning_logs/version_*/metrics.csv` + `hparams.yaml`; versions of a folder are
one run (each resume starts a new version).

Every `trainer.fit` opens a new version, a fresh experiment as well as a resume. A version whose first step is no
later than the first step of the run so far starts again from the beginning: a new run, not a resume (a resume
carries on from a checkpoint's step). Of several runs only the most recent (the highest versions) is read, and the
others are named in a note, as for W&B, MLflow and TensorBoard: merged step by step, two runs would make a series of
neither."""

from __future__ import annotations

import re
from pathlib import Path

from analyzer.errors import InputError
from analyzer.ingest import configs, tabular
from analyzer.ingest.paths import relative
from analyzer.run import Event, Ingested, Note

FORMAT = "lightning"

METRICS = "metrics.csv"
HPARAMS = "hparams.yaml"
VERSION_DIR = re.compile(r"version_(\d+)")
_LIGHTNING_COLUMN = re.compile(r".+_(step|epoch)")


def sniff(path: Path) -> bool:
    if path.name not in (METRICS, HPARAMS):
        return False
    if VERSION_DIR.fullmatch(path.parent.name):
        return True
    if path.name == HPARAMS:  # beside a Lightning metrics.csv or TensorBoard events
        beside = path.parent / METRICS
        return (beside.is_file() and _lightning_header(beside)) or any(path.parent.glob("events.out.tfevents.*"))
    return _lightning_header(path)


def _lightning_header(path: Path) -> bool:
    """A CSV with a `step` column and Lightning's `epoch` or `*_step`/`*_epoch` columns."""
    with open(path, "rb") as fh:
        header = fh.read(8192).removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].decode("utf-8", "replace")
    names = [n.strip().strip('"') for n in header.split(",")]
    return "step" in names and ("epoch" in names or any(_LIGHTNING_COLUMN.fullmatch(n) for n in names))


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT)
    runs: list[list[tuple[Path, str | None, object]]] = []  # each run's versions: (folder, metrics file, table)
    for _, folders in sorted(_runs(paths).items()):
        fresh = True  # a new parent folder is a new run
        for folder in folders:
            file, table = _read_version(folder, paths, root, out)
            first = int(table.frame["step"].min()) if table is not None else None
            if fresh or (first is not None and first <= _first_step(runs[-1])):
                runs.append([])
            runs[-1].append((folder, file, table))
            fresh = False
    if not runs:
        return out
    *others, latest = runs  # the highest version numbers (Lightning numbers versions in the order they start)
    if others:
        out.notes.append(Note(relative(latest[0][0], root), f"{len(runs)} Lightning runs found; only the most "
                              "recent was read, not " + ", ".join(relative(run[0][0], root) for run in others),
                              count=len(others)))
    _add_run(latest, paths, root, out)
    return out


def _read_version(folder: Path, paths: list[Path], root: Path, out: Ingested):
    """(metrics file, its table) of one version folder; (file or None, None) where it gave no points."""
    metrics = folder / METRICS
    if metrics not in paths:
        return None, None
    file = relative(metrics, root)
    try:
        table = tabular.read_file(metrics, file)
    except InputError as exc:  # one unreadable version does not hide the others
        out.notes.append(Note(file, f"{exc.message}; not read", line=exc.line))
        return file, None
    out.notes.extend(table.notes)
    return file, (table if table.frame is not None else None)


def _first_step(run: list[tuple]) -> int:
    steps = [int(table.frame["step"].min()) for _, _, table in run if table is not None]
    return min(steps) if steps else -1


def _add_run(run: list[tuple], paths: list[Path], root: Path, out: Ingested) -> None:
    """One run's versions, in order: hparams, frames, and a restart event where a version resumes after the last."""
    previous_last: int | None = None
    previous_name = ""
    for folder, file, table in run:
        hparams = folder / HPARAMS
        if hparams in paths:
            _read_hparams(hparams, relative(hparams, root), out)
        if table is None:
            continue
        out.add_frame(file, table.frame)
        first = table.frame.iloc[0]
        last_step = int(table.frame["step"].max())
        if previous_last is not None and int(table.frame["step"].min()) > previous_last:
            # a resume that carries on where the last version stopped: the steps do not go back, so only
            # the new version folder tells that the process restarted
            out.events.append(Event(
                "restart", int(first["step"]),
                f"{folder.name} resumes at step {int(first['step'])} after {previous_name} ended at step "
                f"{previous_last}", file, int(first["line"]), {"version": folder.name}))
        previous_last = last_step if previous_last is None else max(previous_last, last_step)
        previous_name = folder.name


def _runs(paths: list[Path]) -> dict[str, list[Path]]:
    """Folders holding claimed files, grouped by run: a `version_N` folder belongs to its parent, in N order."""
    runs: dict[str, set[Path]] = {}
    for path in paths:
        folder = path.parent
        version = VERSION_DIR.fullmatch(folder.name)
        key = str(folder.parent) if version else str(folder)
        runs.setdefault(key, set()).add(folder)
    return {key: sorted(folders, key=_version_order) for key, folders in runs.items()}


def _version_order(folder: Path) -> tuple[int, str]:
    version = VERSION_DIR.fullmatch(folder.name)
    return (int(version.group(1)) if version else -1, folder.name)


def _read_hparams(path: Path, file: str, out: Ingested) -> None:
    value = configs.load(path, file, out.notes)
    if value is None:
        return
    if not isinstance(value, dict):
        if value not in ("", [], {}):
            out.notes.append(Note(file, "not a mapping of hyperparameters; not read"))
        return
    out.add_hparams(configs.bounded(value), file)
