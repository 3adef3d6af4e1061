"""PLACEHOLDER for initial-loss-mismatch: being written.

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
    return Skipped("initial-loss-mismatch", "not implemented yet")


DETECTOR = Detector(
    code="L005", name="initial-loss-mismatch", severity=Severity.WARNING, summary="TODO",
    doc=__doc__, params={}, check=check,
)
