"""PLACEHOLDER: the checkpoint reader is being written; it claims nothing yet."""

from __future__ import annotations

from pathlib import Path

from analyzer.run import Ingested

FORMAT = "checkpoint"


def sniff(path: Path) -> bool:
    return False


def read(paths: list[Path], root: Path, scan: bool = True) -> Ingested:
    return Ingested(FORMAT)
