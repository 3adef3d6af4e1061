"""CSV and JSON-lines tables written in UTF-16 with a byte order mark (PowerShell's `>`), little- and big-endian."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pytest

from analyzer.diagnose import diagnose_run
from analyzer.ingest import read_run, tabular

ENCODINGS = {"le": ("utf-16-le", codecs.BOM_UTF16_LE), "be": ("utf-16-be", codecs.BOM_UTF16_BE)}


@pytest.fixture(params=sorted(ENCODINGS))
def utf16(request):
    """Encode text as UTF-16 with its byte order mark, in each byte order."""
    codec, bom = ENCODINGS[request.param]
    return lambda text: bom + text.encode(codec)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def table(path: Path) -> tabular.Table:
    return tabular.read_file(path, path.name)


def points(result: tabular.Table, name: str) -> list[tuple[int, float, int]]:
    rows = result.frame[result.frame["name"] == name]
    return list(zip(rows["step"].tolist(), rows["value"].tolist(), rows["line"].tolist()))


JSONL = '{"step": 1, "loss": 2.5, "note": "éß✓"}\n\n{"step": 2, "loss": 2.25}\nnot json\n{"step": 3, "loss": NaN}\n'


def test_python_encode_utf16_writes_a_bom_and_is_read(tmp_path):
    path = write(tmp_path, "metrics.jsonl", JSONL.encode("utf-16"))
    assert tabular.sniff(path)
    result = table(path)
    assert points(result, "loss")[:2] == [(1, 2.5, 1), (2, 2.25, 3)] and points(result, "loss")[2][2] == 5
    assert any("UTF-16" in n.message for n in result.notes)
    assert any("not JSON objects" in n.message and n.line == 4 for n in result.notes)


def test_utf16_jsonl_in_both_byte_orders(tmp_path, utf16):
    path = write(tmp_path, "metrics.jsonl", utf16(JSONL))
    assert tabular.sniff(path)
    loss = points(table(path), "loss")
    assert [(s, line) for s, _, line in loss] == [(1, 1), (2, 3), (3, 5)] and np.isnan(loss[2][1])


def test_utf16_jsonl_with_a_truncated_last_line(tmp_path, utf16):
    path = write(tmp_path, "metrics.jsonl", utf16(JSONL + '{"step": 4, "lo'))
    result = table(path)
    assert [s for s, _, _ in points(result, "loss")] == [1, 2, 3]
    assert any("cut short" in n.message and n.line == 6 for n in result.notes)


@pytest.mark.parametrize("cut_in", ["a record", "its line end"])
def test_utf16_jsonl_ending_in_an_odd_byte(tmp_path, utf16, cut_in):
    text = JSONL + ('{"step": 4, "loss": 2.0}' if cut_in == "a record" else '{"step": 4, "loss": 2.0}\n')
    path = write(tmp_path, "metrics.jsonl", utf16(text)[:-1])
    result = table(path)
    # half of `}` leaves `{"step": 4, "loss": 2.0`, cut short; half of the line end leaves the whole record
    expected = [1, 2, 3] if cut_in == "a record" else [1, 2, 3, 4]
    assert [s for s, _, _ in points(result, "loss")] == expected
    assert any("half a UTF-16 character" in n.message for n in result.notes)


CSV = "step,loss,lr\r\n1,2.5,0.1\r\n2,2.25,0.1\r\n3,,0.1\r\n4,2.0,0.1\r\n"


def test_utf16_csv_in_both_byte_orders(tmp_path, utf16):
    path = write(tmp_path, "metrics.csv", utf16(CSV))
    assert tabular.sniff(path)
    result = table(path)
    assert points(result, "loss") == [(1, 2.5, 2), (2, 2.25, 3), (4, 2.0, 5)]
    assert any("UTF-16" in n.message for n in result.notes)


def test_utf16_csv_cut_mid_row_and_mid_character(tmp_path, utf16):
    path = write(tmp_path, "metrics.csv", utf16(CSV + "5,1.9")[:-1])
    result = table(path)
    assert [s for s, _, _ in points(result, "loss")] == [1, 2, 4]
    assert any("no line end" in n.message and n.line == 6 for n in result.notes)


def test_a_utf16_keras_log_is_a_table(tmp_path, utf16):
    path = write(tmp_path, "training.log", utf16("epoch,loss,val_loss\n0,1.5,1.6\n1,1.2,1.4\n"))
    assert tabular.sniff(path)
    assert [s for s, _, _ in points(table(path), "loss")] == [0, 1]


def test_findings_on_a_utf16_run_cite_the_file_lines(tmp_path, utf16):
    """A run that goes NaN, written by PowerShell: the finding cites the line the NaN is on."""
    rows = [json.dumps({"step": s, "loss": 3.0 - s / 100, "lr": 1e-3}) for s in range(1, 201)]
    rows.insert(100, "")  # a blank line: lines and records part ways
    rows[150] = rows[150].replace('"loss": 1.5', '"loss": NaN')
    write(tmp_path, "metrics.jsonl", utf16("\n".join(rows) + "\n"))
    run = read_run(tmp_path)
    assert run.series("loss").index[0] == 1
    diagnosis = diagnose_run(run)
    cited = [(e.file, e.line) for f in diagnosis.findings for e in f.evidence if e.line]
    nan_line = next(i + 1 for i, row in enumerate(rows) if "NaN" in row)
    assert nan_line == 151 and ("metrics.jsonl", nan_line) in cited
