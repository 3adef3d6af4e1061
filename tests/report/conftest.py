"""Report-test options: `--update-golden` (or POSTMORTEM_UPDATE_GOLDEN=1) rewrites tests/golden/ from the output."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden reports in tests/golden/ instead of comparing against them")


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden", default=False)) or \
        os.environ.get("POSTMORTEM_UPDATE_GOLDEN") == "1"
