"""PLACEHOLDER for small-effective-batch: being written.

What it detects:
    TODO
Why it matters:
    TODO
How it decides:
    TODO
What it recommends:
    TODO
Parameters:
    none
"""

from __future__ import annotations

from analyzer.detectors.base import Detector
from analyzer.findings import Severity, Skipped


def check(run, params):
    return Skipped("small-effective-batch", "not implemented yet")


DETECTOR = Detector(
    code="O003", name="small-effective-batch", severity=Severity.INFO, summary="TODO",
    doc=__doc__, params={}, check=check,
)
