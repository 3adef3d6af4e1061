"""Property tests: the structured readers (table, reference run dir, HF Trainer, Lightning, configs) raise nothing
but InputError on any bytes, and on near-valid files cut or corrupted at any point; the vectorised Run building
agrees with the plain pandas formulation it replaced."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.errors import InputError
from analyzer.ingest import canonical, configs, hf_trainer, lightning, read_run, tabular
from analyzer.run import Ingested, build_run

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# (reader, file name inside the run dir); canonical files need a run.json beside them to be claimed
TARGETS = [
    (tabular, "m.jsonl"), (tabular, "m.csv"), (tabular, "m.tsv"), (tabular, "metrics.json"),
    (canonical, "metrics.jsonl"), (canonical, "config.json"), (canonical, "run.json"),
    (hf_trainer, "trainer_state.json"), (hf_trainer, "checkpoint-5/trainer_state.json"),
    (lightning, "lightning_logs/version_0/metrics.csv"), (lightning, "lightning_logs/version_0/hparams.yaml"),
    (configs, "config.json"), (configs, "config.yaml"), (configs, "args.json"),
]

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20))
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=12))
keys = st.one_of(st.sampled_from(["step", "loss", "lr", "split", "rank", "epoch", "eval_loss", "grad_norm",
                                  "global_step", "metric", "value", "train/loss"]), st.text(max_size=8))
records = st.dictionaries(keys, st.one_of(scalars, st.lists(scalars, max_size=3),
                                          st.dictionaries(keys, scalars, max_size=3)), max_size=6)


def dump(value) -> str:
    return json.dumps(value, allow_nan=True, default=str)


@st.composite
def jsonl_text(draw) -> bytes:
    lines = draw(st.lists(st.one_of(records.map(dump), st.text(max_size=30)), max_size=12))
    data = "\n".join(lines).encode("utf-8", "surrogatepass") if lines else b""
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def csv_text(draw) -> bytes:
    header = draw(st.lists(keys, min_size=1, max_size=5))
    cells = st.one_of(numbers.map(str), st.sampled_from(["", "nan", "inf", "-inf", "x"]), st.text(max_size=5))
    rows = draw(st.lists(st.lists(cells, max_size=6), max_size=10))
    data = "\n".join([",".join(header)] + [",".join(r) for r in rows]).encode("utf-8", "surrogatepass")
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def trainer_state_text(draw) -> bytes:
    log = draw(st.lists(st.one_of(records, st.fixed_dictionaries({"step": st.integers(-5, 50), "loss": numbers}),
                                  scalars), max_size=10))
    state = {"log_history": log, "global_step": draw(st.one_of(st.integers(), st.floats(), st.text(max_size=3))),
             "logging_steps": draw(scalars), "train_batch_size": draw(scalars)}
    data = json.dumps(state, indent=draw(st.sampled_from([None, 2])), allow_nan=True, default=str).encode(
        "utf-8", "surrogatepass")
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def yaml_text(draw) -> bytes:
    lines = draw(st.lists(st.one_of(
        st.builds(lambda k, v: f"{k}: {v}", keys, st.one_of(numbers.map(str), st.text(max_size=10))),
        st.sampled_from(["opt: !!python/object:argparse.Namespace {lr: 1}", "f: !!python/name:os.system ''",
                         "t: !!python/tuple [1, 2]", "a: &x [1, 2]", "b: *x", "c: *missing", "- item",
                         "d: {e: [f, {g: h}]}", "%YAML 1.1", "---", "x: !custom 3"]),
        st.text(max_size=20)), max_size=8))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def content_for(name: str):
    if name.endswith((".jsonl", "metrics.json")):
        return st.one_of(st.binary(max_size=300), jsonl_text())
    if name.endswith((".csv", ".tsv")):
        return st.one_of(st.binary(max_size=300), csv_text())
    if name.endswith("trainer_state.json"):
        return st.one_of(st.binary(max_size=300), trainer_state_text())
    if name.endswith(".yaml"):
        return st.one_of(st.binary(max_size=300), yaml_text())
    return st.one_of(st.binary(max_size=300), records.map(lambda r: dump(r).encode("utf-8", "surrogatepass")))


def only_input_errors(reader, root: Path, path: Path) -> None:
    try:
        reader.sniff(path)
        piece = reader.read([path], root)
        build_run(root, [piece])  # what a reader hands over must also build
    except InputError:
        pass


def in_run_dir(name: str, data: bytes):
    root = Path(tempfile.mkdtemp())
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if name in ("metrics.jsonl", "config.json") and not (root / "run.json").exists():
        (root / "run.json").write_text('{"status": "completed", "seed": 1}')
    return root, path


def check_target(index: int, data: bytes) -> None:
    reader, name = TARGETS[index]
    root, path = in_run_dir(name, data)
    try:
        only_input_errors(reader, root, path)
        try:
            read_run(root, scan_checkpoints=False)
        except InputError:
            pass
    finally:
        shutil.rmtree(root)


@SETTINGS
@given(st.data())
def test_arbitrary_bytes_raise_only_input_errors(data):
    index = data.draw(st.integers(0, len(TARGETS) - 1))
    check_target(index, data.draw(st.binary(max_size=400)))


@SETTINGS
@given(st.data())
def test_near_valid_files_raise_only_input_errors(data):
    index = data.draw(st.integers(0, len(TARGETS) - 1))
    check_target(index, data.draw(content_for(TARGETS[index][1])))


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 10**6), st.one_of(st.floats(), st.just(math.nan))), min_size=1,
                max_size=30), st.booleans())
def test_jsonl_values_survive_exactly(points, arrow_reads_tokens):
    """Whatever floats are written (NaN, +-inf, huge, tiny), the reader returns the same numbers at the same steps,
    whether pyarrow reads NaN/Infinity itself or they are swapped for sentinels."""
    text = "".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in points)
    root, path = in_run_dir("m.jsonl", text.encode())
    saved = tabular._arrow_reads_nonfinite_tokens
    tabular._arrow_reads_nonfinite_tokens = saved if arrow_reads_tokens else (lambda: False)
    try:
        frame = tabular.read_file(path, "m.jsonl").frame
    finally:
        tabular._arrow_reads_nonfinite_tokens = saved
        shutil.rmtree(root)
    got = list(zip(frame["step"].tolist(), frame["value"].tolist()))
    assert len(got) == len(points)
    for (s, v), (gs, gv) in zip(points, got):
        assert s == gs and (gv == v or (math.isnan(v) and math.isnan(gv)))


# --- the vectorised Run building gives what the plain pandas formulation gives ----------------------------------------

def reference_latest(scalars):
    ordered = scalars.sort_values(["metric", "rank", "step"], kind="stable")
    return ordered[~ordered.duplicated(["metric", "rank", "step"], keep="last")]


def reference_segments(scalars):
    keys = [scalars["metric"], scalars["rank"]]
    prev = scalars.groupby(keys, sort=False)["step"].shift(1)
    restarted = (scalars["step"] < prev).to_numpy()
    return pd.Series(restarted.astype("int64")).groupby([k.to_numpy() for k in keys], sort=False).cumsum().tolist()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["loss", "lr", "eval/loss", "b", "a_step"]), st.integers(0, 2),
                          st.integers(0, 12), st.floats(allow_nan=True)), min_size=1, max_size=60),
       st.booleans())
def test_build_run_matches_the_plain_pandas_formulation(rows, with_split):
    names, ranks, steps, values = zip(*rows)
    frame = pd.DataFrame({"step": steps, "name": list(names), "value": values, "rank": ranks,
                          "line": range(1, len(rows) + 1)})
    if with_split:
        frame["split"] = [("eval" if s % 3 == 0 else None if s % 3 == 1 else "train") for s in steps]
    piece = Ingested("t")
    piece.add_frame("m.jsonl", frame)
    run = build_run(Path("/x"), [piece])
    assert run.scalars["segment"].tolist() == reference_segments(run.scalars)
    assert run._latest().equals(reference_latest(run.scalars))
    latest = reference_latest(run.scalars)
    for metric in set(run.scalars["metric"]):
        rows = latest[latest["metric"] == metric]
        rows = rows[rows["rank"] == rows["rank"].min()]
        expected = pd.Series(rows["value"].to_numpy(), index=pd.Index(rows["step"].to_numpy(), name="step"),
                             name=metric)
        assert run.has(metric) and run.series(metric).equals(expected)
        for step in rows["step"].tolist()[:3]:
            hit = latest[(latest["metric"] == metric) & (latest["step"] == step)].iloc[-1]
            assert run.point(metric, step) == (run.sources[int(hit["source"])], int(hit["line"]))
    assert not run.has("no such metric") and run.point("no such metric", 0) is None
    assert run.metrics == tuple(sorted(set(run.scalars["metric"])))
