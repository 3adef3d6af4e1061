"""What detectors return and reports show: findings with evidence and recommendations, and the whole diagnosis.

Plain frozen dataclasses; `to_json` is the one place the findings.json schema (`postmortem.findings/1`) is written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Mapping

SCHEMA = "postmortem.findings/1"


class Severity(str, Enum):
    """How bad: critical (the run is broken or wasted), warning (it hurts results), info (worth knowing)."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"critical": 3, "warning": 2, "info": 1}[self.value]


class Confidence(str, Enum):
    """How sure: high (measured directly), medium (inferred from several signals), low (a plausible reading)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True)
class Evidence:
    """A line (or record) a finding rests on. Detectors give file and line; diagnose fills `text` from the file."""

    file: str
    line: int | None
    text: str = ""


@dataclass(frozen=True)
class Recommendation:
    """A concrete change: set `hparam` from `current` (None when unknown) to `suggested`, because `rationale`."""

    hparam: str
    current: Any
    suggested: Any
    rationale: str


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    severity: Severity
    confidence: Confidence
    message: str
    first_step: int | None
    last_step: int | None
    metrics: Mapping[str, Any] = field(default_factory=dict)  # the numbers the message rests on
    recommendations: tuple[Recommendation, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    caused_by: tuple[str, ...] = ()  # names of other findings, filled by the chain


@dataclass(frozen=True)
class Skipped:
    """A detector that could not run on this run, and why (e.g. "the run logs no gradient norm")."""

    name: str
    reason: str


@dataclass(frozen=True)
class DetectorError:
    """A detector that crashed: reported, and the others go on."""

    name: str
    error: str


@dataclass(frozen=True)
class RunSummary:
    """The run facts a report needs, in plain values."""

    path: str
    name: str
    formats: tuple[str, ...]
    first_step: int | None
    last_step: int | None
    n_points: int
    metrics: tuple[str, ...]
    hparams: Mapping[str, Any]
    checkpoints: tuple[Mapping[str, Any], ...]
    status: str | None = None


@dataclass(frozen=True)
class BlindSpotOut:
    message: str
    affects: tuple[str, ...]


@dataclass(frozen=True)
class Diagnosis:
    """Everything `diagnose` concluded about one run: the input of every renderer."""

    run: RunSummary
    findings: tuple[Finding, ...]  # root causes first, then by severity and step
    root_causes: tuple[str, ...]
    blind_spots: tuple[BlindSpotOut, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    errors: tuple[DetectorError, ...] = ()
    detectors: tuple[str, ...] = ()  # names of the detectors chosen for this run (ran or skipped), in table order

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)

    def at_or_above(self, level: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity.rank >= level.rank)

    def with_findings(self, findings: tuple[Finding, ...]) -> "Diagnosis":
        return replace(self, findings=findings)


# --- findings.json ---------------------------------------------------------------------------------------------------

EXACT_INTEGER = 2.0 ** 53  # whole floats below this are exact in JSON; rounding them to 6 digits would change them


def _clean(value: Any) -> Any:
    """JSON-safe and stable: non-finite floats become null, floats keep 6 significant digits (whole ones all their
    digits), enums their value."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < EXACT_INTEGER:
            return value  # a loss scale of 1048576 or a sample count must not become 1048580
        return float(f"{value:.6g}")
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return str(value)


def finding_to_dict(f: Finding) -> dict[str, Any]:
    return {
        "code": f.code, "name": f.name, "severity": f.severity.value, "confidence": f.confidence.value,
        "message": f.message, "first_step": f.first_step, "last_step": f.last_step,
        "metrics": _clean(dict(f.metrics)),
        "recommendations": [
            {"hparam": r.hparam, "current": _clean(r.current), "suggested": _clean(r.suggested),
             "rationale": r.rationale} for r in f.recommendations],
        "evidence": [{"file": e.file, "line": e.line, "text": e.text} for e in f.evidence],
        "caused_by": list(f.caused_by),
    }


def to_dict(d: Diagnosis, analyzer_version: str) -> dict[str, Any]:
    run = d.run
    return {
        "schema": SCHEMA,
        "analyzer_version": analyzer_version,
        "run": {
            "path": run.path, "name": run.name, "formats": list(run.formats), "first_step": run.first_step,
            "last_step": run.last_step, "n_points": run.n_points, "metrics": list(run.metrics),
            "hparams": _clean(dict(run.hparams)), "checkpoints": _clean(list(run.checkpoints)),
            **({"status": run.status} if run.status else {}),
        },
        "findings": [finding_to_dict(f) for f in d.findings],
        "root_causes": list(d.root_causes),
        "blind_spots": [{"message": b.message, "affects": list(b.affects)} for b in d.blind_spots],
        "skipped": [{"name": s.name, "reason": s.reason} for s in d.skipped],
        **({"errors": [{"name": e.name, "error": e.error} for e in d.errors]} if d.errors else {}),
    }


def to_json(d: Diagnosis, analyzer_version: str) -> str:
    return json.dumps(to_dict(d, analyzer_version), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
