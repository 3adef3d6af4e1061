"""What the detector fuzz tests share: odd metric series drawn by hypothesis, and the never-raises check."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from analyzer.detectors import DETECTORS
from analyzer.findings import Finding, Skipped


def draw_series(draw, metrics, values, *, max_metrics: int, max_points: int, max_step: int) -> dict:
    """{metric: (steps, values)} for a few of `metrics`: empty, duplicate, unsorted or negative steps included."""
    series = {}
    for name in draw(st.lists(st.sampled_from(metrics), max_size=max_metrics, unique=True)):
        n = draw(st.integers(0, max_points))
        steps = draw(st.lists(st.integers(-5, max_step), min_size=n, max_size=n))
        series[name] = (steps, draw(st.lists(values, min_size=n, max_size=n)))
    return series


def assert_detectors_never_raise(run, codes) -> None:
    for code in codes:
        det = DETECTORS[code]
        with np.errstate(all="ignore"):
            out = det.check(run, det.params)
        assert isinstance(out, Skipped) or all(isinstance(f, Finding) for f in out)
