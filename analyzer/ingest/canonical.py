"""The reference trainer's run directory: config.json, metrics.jsonl (+ metrics.rankN.jsonl) and run.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from analyzer.errors import InputError
from analyzer.ingest import configs, tabular
from analyzer.ingest.paths import relative
from analyzer.run import Ingested, Note

FORMAT = "postmortem-run"

METRICS_NAME = re.compile(r"metrics(?:\.rank(\d+))?\.jsonl")
CONFIG = "config.json"
PROVENANCE = "run.json"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a trainer's config is a few KB; anything this big is not one


def sniff(path: Path) -> bool:
    name = path.name
    if not (METRICS_NAME.fullmatch(name) or name in (CONFIG, PROVENANCE)):
        return False
    folder = path.parent
    return (folder / PROVENANCE).is_file() or ((folder / CONFIG).is_file() and (folder / "metrics.jsonl").is_file())


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT)
    # metrics.jsonl first, then rank files in rank order: the frame order is the file order
    for path in sorted((p for p in paths if METRICS_NAME.fullmatch(p.name)), key=_metrics_order):
        file = relative(path, root)
        rank = METRICS_NAME.fullmatch(path.name).group(1)
        table = tabular.read_file(path, file, rank=int(rank) if rank else None)
        out.notes.extend(table.notes)
        if table.frame is not None:
            out.add_frame(file, table.frame)
    for path in paths:
        file = relative(path, root)
        if path.name == CONFIG:
            config = _json_object(path, file, out)
            if config is not None:
                out.add_hparams(configs.bounded(config), file)
        elif path.name == PROVENANCE:
            provenance = _json_object(path, file, out)
            # run.json is provenance (status, command, versions): only the seed is a hyperparameter;
            # the status is read by read_run itself.
            if provenance is not None and _is_scalar(provenance.get("seed")):
                out.hparams.append(("seed", provenance["seed"], file, "seed"))
    return out


def _metrics_order(path: Path) -> tuple[str, int]:
    rank = METRICS_NAME.fullmatch(path.name).group(1)
    return (str(path.parent), int(rank) if rank else -1)


def _json_object(path: Path, file: str, out: Ingested) -> dict[str, Any] | None:
    """A JSON object file; a broken one is reported (the metrics may still be good) and skipped."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            out.notes.append(Note(file, "too large for a run config; not read"))
            return None
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=file) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        out.notes.append(Note(file, f"not valid JSON ({exc.msg}); not read", line=exc.lineno))
        return None
    except RecursionError:
        out.notes.append(Note(file, "JSON nested too deeply; not read"))
        return None
    if not isinstance(value, dict):
        out.notes.append(Note(file, "not a JSON object; not read"))
        return None
    return value


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)
