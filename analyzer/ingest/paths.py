"""How ingest names a file: relative to the run dir, with forward slashes, as reports and evidence cite it."""

from __future__ import annotations

from pathlib import Path


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root` ("checkpoint-40/trainer_state.json"); the bare name when it lies elsewhere."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
