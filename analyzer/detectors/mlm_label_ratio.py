"""PLACEHOLDER for mlm-label-ratio: being written.

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
    return Skipped("mlm-label-ratio", "not implemented yet")


DETECTOR = Detector(
    code="M001", name="mlm-label-ratio", severity=Severity.CRITICAL, summary="TODO",
    doc=__doc__, params={}, check=check,
)
