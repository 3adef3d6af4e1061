"""Shared test helpers: tiny Runs built inline, and the paths of shared real logs and sample runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pytest

from analyzer.run import BlindSpot, Checkpoint, Event, Ingested, Run, build_run

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RUNS = ROOT / "sample_runs"
FIXTURES = ROOT / "tests" / "fixtures"
# ../shared sits beside the project root, in development and in CI.
REAL_RUNS = ROOT.parent / "shared" / "real_runs"
SEEDS = ROOT.parent / "shared" / "seeds"


def make_run(series: Mapping[str, Sequence[float] | tuple[Sequence[int], Sequence[float]]], *,
             hparams: Mapping[str, Any] | None = None, events: Sequence[Event] = (),
             checkpoints: Sequence[Checkpoint] = (), blind_spots: Sequence[BlindSpot] = (),
             file: str = "metrics.jsonl", fmt: str = "test") -> Run:
    """A Run from inline data: {"loss": [values at steps 0..n-1]} or {"loss": (steps, values)}.

    Metric names go through the same canonicalisation as real readers ("eval_loss" is the eval split).
    Line numbers are the row positions, so evidence is checkable.
    """
    piece = Ingested(fmt)
    frames = []
    for name, data in series.items():
        if isinstance(data, tuple):
            steps, values = np.asarray(data[0], dtype="int64"), np.asarray(data[1], dtype="float64")
        else:
            values = np.asarray(data, dtype="float64")
            steps = np.arange(len(values), dtype="int64")
        frames.append(pd.DataFrame({"step": steps, "name": name, "value": values}))
    if frames:
        frame = pd.concat(frames, ignore_index=True)
        frame["line"] = np.arange(1, len(frame) + 1)
        piece.add_frame(file, frame)
    if hparams:
        piece.add_hparams(dict(hparams), "config.json")
    piece.events.extend(events)
    piece.checkpoints.extend(checkpoints)
    piece.blind_spots.extend(blind_spots)
    return build_run(Path("/nonexistent/run"), [piece], name="test-run")


@pytest.fixture
def real_runs() -> Path:
    if not REAL_RUNS.is_dir():
        pytest.skip(f"shared real logs not found at {REAL_RUNS}")
    return REAL_RUNS
