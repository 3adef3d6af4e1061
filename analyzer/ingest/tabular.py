"""PLACEHOLDER: the table reader is being written; it claims nothing yet."""

from __future__ import annotations

from pathlib import Path

from analyzer.run import Ingested

FORMAT = "table"


def sniff(path: Path) -> bool:
    return False


def read(paths: list[Path], root: Path) -> Ingested:
    return Ingested(FORMAT)
