"""Property tests: arbitrary or damaged bytes in binary inputs never crash a reader (notes, errors, no exceptions)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.errors import InputError
from analyzer.ingest import checkpoints, mlflow, tensorboard, wandb

try:
    from binary_writers import WANDB_HEADER, tb_event, tb_file, tb_simple, wandb_history, wandb_log
except ImportError:  # tests/ingest collected as a package
    from .binary_writers import WANDB_HEADER, tb_event, tb_file, tb_simple, wandb_history, wandb_log

# A longer hunt: POSTMORTEM_FUZZ_EXAMPLES=2000 pytest tests/ingest/test_fuzz_binary.py
FUZZ = settings(max_examples=int(os.environ.get("POSTMORTEM_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

VALID_EVENTS = tb_file(*(tb_event(s, tb_simple("loss", 0.5), tb_simple("lr", 0.1)) for s in range(20)))
VALID_WANDB = wandb_log(*(wandb_history({"_step": str(s), "loss": "0.5"}) for s in range(20)))


def _torch_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(4, 4)}, "step": 3, "config": {"lr": 0.1}}, buffer)
    return buffer.getvalue()


VALID_TORCH = _torch_bytes()


@st.composite
def damaged(draw, valid: bytes) -> bytes:
    """A valid file with some bytes flipped, a piece cut out, or cut short."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data)))
        del data[start:start + draw(st.integers(0, 64))]
    return bytes(data[: draw(st.integers(0, len(data)))])


def read_one(reader, name: str, data: bytes, **kwargs):
    """Write `data` as `name` in a fresh folder and read it; only InputError may escape."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        try:
            return reader.read([path], root, **kwargs)
        except InputError:
            return None


@FUZZ
@given(st.binary(max_size=400) | damaged(VALID_EVENTS))
def test_event_files(data):
    read_one(tensorboard, "events.out.tfevents.1.host", data)


@FUZZ
@given(st.binary(max_size=400) | damaged(VALID_WANDB) | st.binary(max_size=400).map(lambda b: WANDB_HEADER + b))
def test_wandb_record_files(data):
    read_one(wandb, "wandb/offline-run-20260101_120000-abc/run-abc.wandb", data)


@FUZZ
@given(st.binary(max_size=400) | st.text(alphabet="0123456789 .-naife\n\r\t", max_size=200).map(str.encode))
def test_mlflow_metric_files(data):
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "mlruns" / "1" / "r"
        (run / "metrics").mkdir(parents=True)
        (run / "meta.yaml").write_bytes(data[:50])
        (run / "metrics" / "loss").write_bytes(data)
        try:
            mlflow.read([run / "metrics" / "loss", run / "meta.yaml"], Path(folder))
        except InputError:
            pass


@FUZZ
@given(st.binary(max_size=400) | damaged(VALID_TORCH))
def test_torch_checkpoints(data):
    piece = read_one(checkpoints, "step_000100.pt", data)
    assert piece is None or len(piece.checkpoints) == 1


@FUZZ
@given(st.binary(max_size=300))
def test_safetensors_files(data):
    piece = read_one(checkpoints, "model.safetensors", data)
    assert piece is None or len(piece.checkpoints) == 1


def test_undamaged_inputs_read_cleanly():
    assert len(read_one(tensorboard, "events.out.tfevents.1.host", VALID_EVENTS).frames[0][1]) == 40
    assert len(read_one(wandb, "wandb/offline-run-20260101_120000-abc/run-abc.wandb", VALID_WANDB).frames[0][1]) == 20
    (ckpt,) = read_one(checkpoints, "step_000100.pt", VALID_TORCH).checkpoints
    assert ckpt.error is None and ckpt.step == 3
