"""Functional cases: each run directory the project ships or keeps (sample runs, real public logs, seed excerpts)
and the findings it must produce, one line per finding (name, severity, first_step), as pylint's functional tests.

The expected files live in tests/functional/expected/; `python tests/functional/update.py` rewrites them (or
`POSTMORTEM_UPDATE_EXPECTED=1 python -m pytest tests/test_functional.py`). Review the diff before committing it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import FIXTURES, REAL_RUNS, SAMPLE_RUNS

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected"
# Seed write-ups' log lines as text logs (the text reader's fixtures): seed002_excerpt.log quotes seed 002 byte for
# byte; seed002_step436.log places its NaN-clamp warning where a training script prints it, before step 436's line.
SEED_EXCERPTS = FIXTURES / "text"
UPDATE_ENV = "POSTMORTEM_UPDATE_EXPECTED"
HEADER = "# name severity first_step (root causes first); regenerate: python tests/functional/update.py\n"


@dataclass(frozen=True)
class Case:
    id: str  # "sample_runs/kd-temperature-blowup", "real_runs/bloom13b_spike", "seeds/seed002_excerpt"
    path: Path
    expected: Path

    @property
    def is_control(self) -> bool:
        return self.id.startswith("sample_runs/") and self.path.name.endswith("-fixed")


def sample_cases() -> list[Case]:
    return [Case(f"sample_runs/{p.name}", p, EXPECTED / f"{p.name}.txt")
            for p in sorted(SAMPLE_RUNS.iterdir()) if p.is_dir()]


def real_cases() -> list[Case]:
    if not REAL_RUNS.is_dir():
        return []
    return [Case(f"real_runs/{p.name}", p, EXPECTED / "real_runs" / f"{p.name}.txt")
            for p in sorted(REAL_RUNS.iterdir()) if p.is_dir()]


def seed_cases() -> list[Case]:
    return [Case(f"seeds/{p.stem}", p, EXPECTED / "seeds" / f"{p.stem}.txt")
            for p in sorted(SEED_EXCERPTS.glob("seed*.log"))]


def all_cases() -> list[Case]:
    return sample_cases() + real_cases() + seed_cases()


def diagnose(case: Case):
    """The Diagnosis of a case, or the one-line InputError it raises (an expected outcome too)."""
    from analyzer.diagnose import diagnose_path
    from analyzer.errors import InputError

    try:
        return diagnose_path(case.path)
    except InputError as exc:
        return exc


def render(outcome) -> str:
    """The expected-file text of a Diagnosis (or an InputError)."""
    from analyzer.errors import InputError

    if isinstance(outcome, InputError):
        return HEADER + f"error: {str(outcome).replace(str(REAL_RUNS), '<real_runs>')}\n"
    lines = [f"{f.name} {f.severity.value} {f.first_step}" for f in outcome.findings]
    return HEADER + "".join(line + "\n" for line in lines)


def update_requested() -> bool:
    return os.environ.get(UPDATE_ENV, "") not in ("", "0")


def write(case: Case, text: str) -> None:
    case.expected.parent.mkdir(parents=True, exist_ok=True)
    case.expected.write_text(text, encoding="utf-8")
