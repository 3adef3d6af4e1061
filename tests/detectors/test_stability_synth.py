"""The stability detectors over synthetic incidents and their healthy twins (seed 0 of stability_synth's grid)."""

from __future__ import annotations

import pytest

from analyzer.detectors import DETECTORS
from analyzer.findings import Severity
from tests.detectors import stability_synth

MINE = {DETECTORS[c].name for c in ("N001", "N002", "N003", "G001", "G002", "D001", "M001", "C001", "C002")}
CASES = [case for case in stability_synth.synthetic_cases() if case[0].split("/")[1].startswith("s0-")]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_expected_detector_fires_and_no_other_stability_alarm(case):
    from analyzer.diagnose import diagnose_run

    name, run, expected, allowed = case
    diagnosis = diagnose_run(run, select=sorted(MINE))
    fired = {f.name for f in diagnosis.findings}
    assert set(expected) <= fired, f"{name}: missing {set(expected) - fired}"
    alarms = [f"{f.name} {f.severity.value} {f.first_step}" for f in diagnosis.findings
              if f.severity is not Severity.INFO and f.name not in expected and f.name not in allowed]
    assert not alarms, f"{name}: {alarms}"
    for f in diagnosis.findings:
        onset = expected.get(f.name)
        if onset is not None:
            assert onset <= f.first_step <= onset + 50, f"{name}: {f.name} at {f.first_step}, expected ~{onset}"
