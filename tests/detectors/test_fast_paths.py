"""Fast paths (detectors/stats.py, loss-divergence, evidence lines, build_run codes, the background JSONL parse)
give exactly what the plain formulation gave."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from analyzer import diagnose
from analyzer.detectors import loss_divergence, stats
from tests.conftest import make_run

VALUES = st.lists(st.one_of(st.floats(-5, 5), st.sampled_from([np.nan, np.inf, -np.inf, 1.0, 2.0])),
                  min_size=0, max_size=60)


@settings(max_examples=200, deadline=None)
@given(VALUES, st.integers(1, 12), st.integers(1, 12))
def test_rolling_median_values_equals_pandas(values, window, min_periods):
    min_periods = min(min_periods, window)
    x = np.array(values, dtype="float64")
    expected = pd.Series(x).rolling(window, min_periods=min_periods).median().to_numpy()
    np.testing.assert_array_equal(stats.rolling_median_values(x, window, min_periods), expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0, 2.0, -1.5, 3.25]) | st.floats(-5, 5), max_size=60), st.integers(1, 8),
       st.integers(1, 8))
def test_rolling_median_of_finite_values_equals_pandas(values, window, min_periods):
    min_periods = min(min_periods, window)
    x = np.array(values, dtype="float64")
    expected = pd.Series(x).rolling(window, min_periods=min_periods).median().to_numpy()
    np.testing.assert_array_equal(stats.rolling_median_values(x, window, min_periods), expected)


@settings(max_examples=300, deadline=None)
@given(VALUES, st.integers(1, 70), st.integers(0, 70), st.booleans())
def test_moving_median_equals_pandas(values, window, min_periods, center):
    min_periods = min(min_periods, window)
    x = np.array(values, dtype="float64")
    expected = pd.Series(x).rolling(window, min_periods=min_periods, center=center).median().to_numpy()
    np.testing.assert_array_equal(stats.moving_median(x, window, min_periods, center=center), expected)


@settings(max_examples=200, deadline=None)
@given(VALUES, st.integers(1, 30), st.integers(1, 30), st.data())
def test_window_medians_equal_shifted_rolling_median(values, window, min_periods, data):
    min_periods = min(min_periods, window)
    x = np.array(values, dtype="float64")
    positions = np.array(data.draw(st.lists(st.integers(0, max(len(x) - 1, 0)), max_size=10)) if len(x) else [],
                         dtype="int64")
    expected = pd.Series(x).rolling(window, min_periods=min_periods).median().shift(1).to_numpy()[positions]
    np.testing.assert_array_equal(stats.window_medians(x, positions, window, min_periods), expected)


def test_trailing_baseline_matches_plain_pandas():
    rng = np.random.default_rng(3)
    x = pd.Series(np.log(2 + rng.random(3000)), index=np.arange(3000) * 10)
    for window, min_periods in ((5, 3), (7, 7), (100, 3), (50, 10)):
        base = stats.trailing_baseline(x, window, min_periods)
        mp = max(1, min(min_periods, window))
        level = x.rolling(window, min_periods=mp).median().shift(1)
        noise = x.diff().abs().rolling(window, min_periods=max(1, mp - 1)).median().shift(1) * stats.DIFF_MAD_TO_STD
        pd.testing.assert_series_equal(base.level, level)
        pd.testing.assert_series_equal(base.noise, noise)
        where = np.array([0, 1, 2, 5, 99, 100, 101, 2999])
        np.testing.assert_array_equal(stats.trailing_noise_at(x, where, window, min_periods), noise.to_numpy()[where])


def _plain_excursions(series, window, factor, min_periods):
    """The formulation before the candidate shortcut."""
    x = np.log(series.astype("float64"))
    periods = int(np.clip(len(series) // 4, 3, min_periods))
    base = stats.trailing_baseline(x, window, periods).level
    excess = np.nan_to_num((x - base).to_numpy(), nan=0.0)
    high = excess >= np.log(factor)
    low = excess >= np.log(factor / 2)
    return excess, high, low, [(a, b) for a, b in stats.runs_of_true(low) if high[a:b].any()]


def test_excursions_match_the_full_computation():
    rng = np.random.default_rng(7)
    for n, noise, factor in ((40, 0.2, 10.0), (5000, 0.2, 10.0), (5000, 1.5, 10.0), (3000, 0.3, 3.0),
                             (3000, 0.3, 1.5)):
        g = np.exp(rng.normal(0, noise, n))
        g[n // 2: n // 2 + 5] *= 40  # an excursion
        g[n // 3] *= 15  # a lone spike
        series = pd.Series(g, index=np.arange(n))
        for window in (5, 50):
            found = stats.excursions(series, window, factor, 10)
            excess, high, low, runs = _plain_excursions(series, window, factor, 10)
            np.testing.assert_array_equal(found.high, high)
            np.testing.assert_array_equal(found.low, low)
            assert found.runs == runs
            np.testing.assert_array_equal(found.excess, excess)


def test_sorted_unique_equals_np_unique_on_finite_values():
    values = np.array([3, 1, 2, 3, 1, 7], dtype="int64")
    np.testing.assert_array_equal(stats.sorted_unique(values), np.unique(values))
    assert len(stats.sorted_unique(np.array([]))) == 0


def test_shared_answers_are_kept_per_run_and_per_series():
    run = make_run({"loss": (np.arange(100), np.linspace(3, 2, 100))})
    assert run.series("loss") is run.series("loss")
    assert stats.train_loss(run) is stats.train_loss(run)
    assert stats.schedule(run) is stats.schedule(run)
    loss = stats.train_loss(run)[1]
    assert stats.log_values(loss) is stats.log_values(loss)
    assert stats.segment_series(run, "loss")[0] is loss  # no restart: the one segment is the series itself


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=120), st.integers(1, 60))
def test_divergence_bounds_hold_the_running_median(values, window):
    x = np.array(values)
    median = pd.Series(x).rolling(window, min_periods=1, center=True).median().to_numpy()
    lower, upper = loss_divergence._median_bounds(x, window)
    assert (lower <= median).all() and (median <= upper).all()


def _plain_read_lines(path, lines):
    out = {}
    with open(path, "rb") as fh:
        if b"\0" in fh.read(1024):
            return out
        fh.seek(0)
        for number, raw in enumerate(fh, start=1):
            if number in lines:
                out[number] = raw.decode("utf-8", "replace").strip()[:diagnose.MAX_EVIDENCE_LINE]
            if number >= max(lines):
                break
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text("ab\n ", max_size=40), max_size=30), st.sets(st.integers(0, 40), min_size=1, max_size=6),
       st.sampled_from([8, 64, 1 << 20]))
def test_read_lines_finds_the_lines_a_line_by_line_read_finds(tmp_path_factory, parts, lines, block):
    path = tmp_path_factory.mktemp("lines") / "log.txt"
    path.write_bytes("\n".join(parts).encode())
    saved = diagnose.EVIDENCE_BLOCK
    try:
        diagnose.EVIDENCE_BLOCK = block
        assert diagnose._read_lines(path, set(lines)) == _plain_read_lines(path, set(lines))
    finally:
        diagnose.EVIDENCE_BLOCK = saved


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["loss", "lr", "eval/loss", "b", "é"]), st.integers(0, 12)),
                         min_size=1, max_size=20), min_size=1, max_size=3),
       st.lists(st.one_of(st.none(), st.integers(0, 2)), min_size=3, max_size=3), st.booleans())
def test_build_run_index_from_codes_equals_the_index_from_strings(frames, ranks, two_files):
    from pathlib import Path

    from analyzer.run import Ingested, _segments, build_run, latest_index

    piece = Ingested("t")
    for i, rows in enumerate(frames):
        names, steps = zip(*rows)
        frame = pd.DataFrame({"step": steps, "name": list(names), "value": np.arange(len(rows), dtype=float),
                              "line": range(1, len(rows) + 1)})
        if ranks[i] is not None:
            frame["rank"] = ranks[i] if i % 2 else [ranks[i] + (j % 2) for j in range(len(rows))]
        if i % 2 == 0:  # as the tabular reader hands them over: categorical names, a split with gaps
            frame["name"] = frame["name"].astype("category")
            frame["split"] = pd.Categorical([("eval", None, "train")[s % 3] for s in steps])
        piece.add_frame(f"m{i if two_files else 0}.jsonl", frame)
    run = build_run(Path("/x"), [piece])
    positions, slices = run._latest_index()
    expected_positions, expected_slices = latest_index(run.scalars)
    np.testing.assert_array_equal(positions, expected_positions)
    assert slices == expected_slices
    again, restarts = _segments(run.scalars.assign(segment=0), list(run.sources))
    assert again["segment"].tolist() == run.scalars["segment"].tolist()
    order = (lambda e: (e.step, e.file, e.line))
    assert sorted((e for e in run.events if e.kind == "restart"), key=order) == sorted(restarts, key=order)


def _frame(path):
    from analyzer.ingest import tabular

    return tabular.read_file(path, path.name).frame


def test_prefetched_parse_gives_the_same_frame(tmp_path, monkeypatch):
    from analyzer import prefetch

    monkeypatch.setattr(prefetch, "MIN_BYTES", 0)
    lines = [f'{{"step": {i}, "split": "train", "loss": {3 - i / 100}, "lr": NaN}}' for i in range(200)]
    cases = {"plain.jsonl": "\n".join(lines) + "\n", "cut.jsonl": "\n".join(lines) + '\n{"step": 20',
             "bom.jsonl": "\ufeff" + "\n".join(lines) + "\n", "bad.jsonl": "\n".join(lines) + "\nnot json\n"}
    for name, text in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        path = folder / name
        path.write_text(text, encoding="utf-8")
        expected = _frame(path)
        prefetch.start(folder)
        assert prefetch._jobs  # a job was started
        got = _frame(path)
        assert not prefetch._jobs  # and taken
        pd.testing.assert_frame_equal(got, expected)


def test_prefetch_is_not_used_for_a_changed_file_and_never_raises(tmp_path, monkeypatch):
    from analyzer import prefetch

    monkeypatch.setattr(prefetch, "MIN_BYTES", 0)
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n')
    prefetch.start(tmp_path)
    prefetch._jobs[str(path.resolve())].thread.join()
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
    assert prefetch.take(path) is None
    assert _frame(path)["value"].tolist() == [3.0, 2.5]
    prefetch.start(tmp_path / "missing")  # nothing to read: no error, no job
    assert prefetch.take(tmp_path / "missing" / "metrics.jsonl") is None


def test_prefetched_table_is_the_one_used(tmp_path, monkeypatch):
    import pyarrow.json

    from analyzer import prefetch

    monkeypatch.setattr(prefetch, "MIN_BYTES", 0)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}, "loss": {2 + i}}}\n' for i in range(50)))
    expected = _frame(path)
    prefetch.start(tmp_path)
    prefetch._jobs[str(path.resolve())].thread.join()
    monkeypatch.setattr(pyarrow.json, "read_json", lambda *a, **k: pytest.fail("parsed again"))
    pd.testing.assert_frame_equal(_frame(path), expected)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text("ab\n \x00é", max_size=30), max_size=40), st.sets(st.integers(0, 45), min_size=1, max_size=6),
       st.sampled_from([4, 16, 1 << 20]))
def test_remembered_line_index_reads_what_a_full_read_reads(tmp_path_factory, parts, lines, block):
    from analyzer import lineindex

    path = tmp_path_factory.mktemp("index") / "log.jsonl"
    data = "\n".join(parts).encode()
    path.write_bytes(data)
    saved = lineindex.BLOCK, lineindex.MIN_BYTES
    try:
        lineindex.BLOCK, lineindex.MIN_BYTES = block, 0
        assert lineindex.remember(path, data) == data.count(b"\n")
        got = lineindex.read_lines(path, set(lines), diagnose.MAX_EVIDENCE_LINE)
    finally:
        lineindex.BLOCK, lineindex.MIN_BYTES = saved
    assert got == _plain_read_lines(path, set(lines))


def test_line_index_is_not_used_for_a_changed_file(tmp_path, monkeypatch):
    from analyzer import lineindex

    monkeypatch.setattr(lineindex, "MIN_BYTES", 0)
    path = tmp_path / "log.txt"
    path.write_bytes(b"a\nb\n")
    lineindex.remember(path, b"a\nb\n")
    path.write_bytes(b"c\nd\ne\n")
    assert lineindex.read_lines(path, {1}, 300) is None
    assert diagnose._read_lines(path, {3}) == {3: "e"}


def test_detectors_in_threads_give_the_serial_diagnosis(monkeypatch):
    import copy

    from analyzer import __version__
    from analyzer.findings import to_json
    from analyzer.ingest import read_run
    from tests.conftest import SAMPLE_RUNS
    from tests.detectors import stability_synth

    runs = [lambda p=p: read_run(p) for p in sorted(SAMPLE_RUNS.iterdir()) if p.is_dir()]
    cases = list(stability_synth.synthetic_cases())[::7]
    runs += [lambda c=c: copy.copy(c[1]) for c in cases]  # a copy holds no cached answers
    for make in runs:
        monkeypatch.setattr(diagnose, "PARALLEL_MIN_POINTS", 10 ** 12)
        serial = to_json(diagnose.diagnose_run(make()), __version__)
        monkeypatch.setattr(diagnose, "PARALLEL_MIN_POINTS", 0)
        monkeypatch.setattr(diagnose, "_cpus", lambda: 2)
        threaded = to_json(diagnose.diagnose_run(make()), __version__)
        assert threaded == serial
