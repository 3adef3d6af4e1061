"""Tables with too many keys or columns: one-off keys are not read as metrics, and memory stays bounded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analyzer import prefetch
from analyzer.ingest import tabular


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def table(path: Path) -> tabular.Table:
    return tabular.read_file(path, path.name)


def names_of(result: tabular.Table) -> set[str]:
    return set() if result.frame is None else set(result.frame["name"].astype(str))


def one_off_keys(records: int, loss: bool = False) -> str:
    """Each record with a key of its own (`metric_<i>`), as a logger keyed by sample or by step writes."""
    rows = []
    for i in range(records):
        record = {"step": i, f"metric_{i}": 1.0}
        if loss:
            record["loss"] = 2.0 - i / records
        rows.append(json.dumps(record))
    return "\n".join(rows) + "\n"


def test_twenty_thousand_one_off_keys_are_not_read_as_metrics(tmp_path):
    # 700 kB that pyarrow would parse into 20001 mostly empty columns (5.6 GB)
    path = write(tmp_path, "metrics.jsonl", one_off_keys(20000))
    assert not prefetch.may_be_too_wide(b"", 0)
    result = table(path)
    assert result.frame is None
    note = next(n for n in result.notes if "at most one record" in n.message)
    assert note.count == 20000 and "'metric_0'" in note.message and "20001 keys in all" in note.message


def test_keys_that_repeat_are_read_beside_one_off_keys(tmp_path):
    path = write(tmp_path, "metrics.jsonl", one_off_keys(5000, loss=True))
    result = table(path)
    assert names_of(result) == {"loss"}
    loss = result.frame[result.frame["name"] == "loss"]
    assert loss["step"].tolist() == list(range(5000))
    assert loss["line"].tolist() == list(range(1, 5001))
    assert any(n.count == 5000 for n in result.notes)


def test_a_wide_logger_with_three_hundred_keys_is_read_whole(tmp_path):
    keys = [f"layer_{i}/grad_norm" for i in range(300)]
    rows = [json.dumps({"step": s, **{k: s + j / 1000 for j, k in enumerate(keys)}}) for s in range(50)]
    result = table(write(tmp_path, "metrics.jsonl", "\n".join(rows) + "\n"))
    assert names_of(result) == set(keys)
    assert len(result.frame) == 300 * 50 and not result.notes


def test_a_config_record_of_many_keys_at_the_top_is_no_alarm(tmp_path):
    config = json.dumps({"step": 0, **{f"hp_{i}": i for i in range(400)}})
    rows = [config] + [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 3000)]
    buf = ("\n".join(rows) + "\n").encode()
    assert not prefetch.may_be_too_wide(buf, buf.count(b"\n"))
    assert "loss" in names_of(table(write(tmp_path, "metrics.jsonl", buf)))


def test_rarely_logged_keys_beyond_the_memory_budget_keep_the_most_logged(tmp_path, monkeypatch):
    # 40 keys each logged every 40th record: a table of them all would be 40x the values it holds
    monkeypatch.setattr(prefetch, "MAX_TABLE_BYTES", 8 * 2000 * 10)
    rows = [json.dumps({"step": s, "loss": 1.0, f"hist_{s % 40}": 0.5}) for s in range(2000)]
    result = table(write(tmp_path, "metrics.jsonl", "\n".join(rows) + "\n"))
    kept = names_of(result)
    assert "loss" in kept and len(kept) == 9  # step + 9 metrics fit in 10 columns
    assert any("the 10 most logged are read and 32 are not" in n.message for n in result.notes)


def test_types_of_kept_keys_come_from_their_first_lines(tmp_path):
    """A kept key first seen late, first logged as an int, then a float; text and nested keys; NaN tokens."""
    rows = [json.dumps({"step": i, f"once_{i}": 1}) for i in range(3000)]
    rows += [json.dumps({"step": 3000 + i, "acc": i if i % 2 else i + 0.5, "split": "eval",
                         "opt": {"lr": 0.1}}) for i in range(4)]
    rows.append('{"step": 3004, "acc": NaN, "split": "eval", "opt": {"lr": 0.2}}')
    result = table(write(tmp_path, "metrics.jsonl", "\n".join(rows) + "\n"))
    frame = result.frame
    acc = frame[frame["name"] == "acc"]
    assert acc["value"].tolist()[:4] == [0.5, 1.0, 2.5, 3.0] and np.isnan(acc["value"].tolist()[4])
    assert set(acc["split"]) == {"eval"} and acc["line"].tolist() == [3001, 3002, 3003, 3004, 3005]
    assert frame[frame["name"] == "opt/lr"]["value"].tolist() == [0.1] * 4 + [0.2]


def test_garbage_lines_in_a_file_of_one_off_keys_take_the_tolerant_path(tmp_path):
    body = one_off_keys(3000, loss=True).splitlines()
    body[1] = "not json at all"
    result = table(write(tmp_path, "metrics.jsonl", "\n".join(body) + "\n"))
    assert names_of(result) == {"loss"}
    assert any("not JSON objects" in n.message and n.line == 2 for n in result.notes)


def test_a_csv_of_fifty_thousand_columns_reads_the_first_thousand(tmp_path):
    header = "step," + ",".join(f"m{i}" for i in range(50000))
    rows = [f"{s}," + ",".join(["1.5"] * 50000) for s in range(3)]
    result = table(write(tmp_path, "metrics.csv", "\n".join([header] + rows) + "\n"))
    kept = names_of(result)
    assert len(kept) == prefetch.MAX_KEYS - 1 and {"m0", "m998"} <= kept and "m999" not in kept
    assert any("49001 are not" in n.message for n in result.notes)


def test_a_sparse_csv_reads_only_the_columns_that_repeat(tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "MAX_KEYS", 20)
    header = "step,loss," + ",".join(f"m{i}" for i in range(60))
    rows = []
    for s in range(60):
        cells = [""] * 60
        cells[s] = "0.5"
        rows.append(f"{s},{1.0 / (s + 1)}," + ",".join(cells) + ("\r" if s % 2 else ""))
    rows.insert(5, "7,1.0,2.0")  # a row of the wrong width: skipped by the parser, not counted
    result = table(write(tmp_path, "metrics.csv", "\n".join([header] + rows) + "\n"))
    assert names_of(result) == {"loss"}
    assert any(n.count == 60 and "at most one record" in n.message for n in result.notes)
    loss = result.frame[result.frame["name"] == "loss"]
    assert loss["line"].tolist()[:6] == [2, 3, 4, 5, 6, 8]


@pytest.mark.parametrize("cells", ['"a,b"', '"x"'])
def test_a_wide_csv_with_quoted_cells_is_read_whole(tmp_path, monkeypatch, cells):
    monkeypatch.setattr(prefetch, "MAX_KEYS", 5)
    header = "step,note," + ",".join(f"m{i}" for i in range(8))
    rows = [f"{s},{cells}," + ",".join(["1"] * 8) for s in range(3)]
    result = table(write(tmp_path, "metrics.csv", "\n".join([header] + rows) + "\n"))
    assert names_of(result) == {f"m{i}" for i in range(8)}


def test_a_kept_key_whose_type_changes_late_takes_the_exact_path(tmp_path):
    body = one_off_keys(3000, loss=True).splitlines()
    body[2500] = json.dumps({"step": 2500, "loss": "n/a", "metric_2500": 1.0})
    result = table(write(tmp_path, "metrics.jsonl", "\n".join(body) + "\n"))
    assert names_of(result) == {"loss"} and len(result.frame) == 2999
    assert any("non-numeric value(s) in column 'loss'" in n.message and n.line == 2501 for n in result.notes)


def test_the_background_parse_leaves_a_file_of_one_off_keys_to_the_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "MIN_BYTES", 0)
    path = write(tmp_path, "metrics.jsonl", one_off_keys(3000, loss=True))
    prefetch.start(tmp_path)
    assert names_of(table(path)) == {"loss"}
