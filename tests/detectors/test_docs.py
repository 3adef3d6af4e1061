"""Every detector documents itself: the five sections, every parameter, a one-line summary (sqlfluff-style)."""

from __future__ import annotations

import re

import pytest

from analyzer.detectors import DETECTORS
from analyzer.detectors.base import DOC_SECTIONS, doc_sections

CODE = re.compile(r"^[A-Z]\d{3}$")


@pytest.mark.parametrize("code", sorted(DETECTORS))
def test_docstring_has_every_section(code):
    sections = doc_sections(DETECTORS[code].doc)
    for section in DOC_SECTIONS:
        assert sections.get(section), f"{code}: section {section!r} missing or empty"


@pytest.mark.parametrize("code", sorted(DETECTORS))
def test_every_parameter_is_documented(code):
    det = DETECTORS[code]
    documented = doc_sections(det.doc).get("Parameters", "")
    for param in det.params:
        assert re.search(rf"\b{re.escape(param)}\b", documented), f"{code}: parameter {param!r} not documented"


@pytest.mark.parametrize("code", sorted(DETECTORS))
def test_code_name_and_summary(code):
    det = DETECTORS[code]
    assert det.code == code and CODE.match(code)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", det.name)
    assert det.summary and "\n" not in det.summary


def test_names_are_unique():
    names = [d.name for d in DETECTORS.values()]
    assert len(names) == len(set(names))
