"""findings.json: the schema's shape, JSON-safe values, byte-identical output for the same diagnosis."""

from __future__ import annotations

import json

from analyzer.diagnose import diagnose_run
from analyzer.findings import Confidence, Evidence, Finding, Recommendation, Severity, to_json
from tests.conftest import make_run


def test_document_shape_and_determinism():
    run = make_run({"loss": [3.0, 2.5, float("nan")], "lr": [1e-4] * 3}, hparams={"learning_rate": 1e-4})
    first = to_json(diagnose_run(run), "0.1.0")
    second = to_json(diagnose_run(run), "0.1.0")
    assert first == second
    doc = json.loads(first)
    assert doc["schema"] == "postmortem.findings/1"
    assert set(doc) >= {"schema", "analyzer_version", "run", "findings", "root_causes", "blind_spots", "skipped"}
    assert doc["run"]["hparams"] == {"lr": 0.0001}
    assert doc["run"]["metrics"] == ["loss", "lr"]


def test_non_finite_numbers_become_null():
    from analyzer.findings import Diagnosis, RunSummary, finding_to_dict

    f = Finding("N001", "nonfinite-onset", Severity.CRITICAL, Confidence.HIGH, "m", 436, 436,
                metrics={"value": float("nan"), "ratio": 9.000000001},
                recommendations=(Recommendation("temperature", 3.0, 2.0, "T^2 9 -> 4"),),
                evidence=(Evidence("train.log", 12, "Step 0: KD Raw: 38.0254"),))
    d = finding_to_dict(f)
    assert d["metrics"] == {"value": None, "ratio": 9.0}
    assert d["recommendations"][0] == {"hparam": "temperature", "current": 3.0, "suggested": 2.0,
                                       "rationale": "T^2 9 -> 4"}
    summary = RunSummary("p", "n", (), 0, 1, 2, (), {}, ())
    json.loads(to_json(Diagnosis(summary, (f,), ("nonfinite-onset",)), "0.1.0"))
