#!/usr/bin/env python3
"""Rewrite every expected findings file in tests/functional/expected/ from the current detectors.

    python tests/functional/update.py            # all cases
    python tests/functional/update.py kd bloom   # cases whose id contains any of these words

Prints each file that changed; review `git diff tests/functional/expected` before committing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, so `tests` and `analyzer` import

from tests.functional import harness  # noqa: E402


def main(words: list[str]) -> int:
    changed = 0
    for case in harness.all_cases():
        if words and not any(w in case.id for w in words):
            continue
        text = harness.render(harness.diagnose(case))
        old = case.expected.read_text(encoding="utf-8") if case.expected.exists() else None
        if text != old:
            harness.write(case, text)
            changed += 1
            where = case.expected.relative_to(harness.HERE.parent.parent)
            print(f"{'updated' if old is not None else 'created'} {where}")
    print(f"{changed} expected file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
