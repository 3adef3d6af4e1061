"""PLACEHOLDER for loss-plateau: being written.

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
    return Skipped("loss-plateau", "not implemented yet")


DETECTOR = Detector(
    code="L002", name="loss-plateau", severity=Severity.WARNING, summary="TODO",
    doc=__doc__, params={}, check=check,
)
