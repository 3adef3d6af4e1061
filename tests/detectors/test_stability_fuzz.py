"""No stability detector raises on odd input: empty, constant, negative, NaN/Inf, duplicate or unsorted steps."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.run import Checkpoint, CheckpointStats, Event, TensorStats
from tests.conftest import make_run
from tests.detectors.fuzz import assert_detectors_never_raise, draw_series

MINE = ("N001", "N002", "N003", "G001", "G002", "D001", "M001", "C001", "C002")
METRICS = ("loss", "lm_loss", "grad_norm", "loss_scale", "ppl", "eval_loss", "eval_ppl", "kd_raw", "kd_loss",
           "temperature", "mask_ratio", "lr", "temperature_squared", "number_of_skipped_iterations")
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, 1.0, -1.0]))


@st.composite
def runs(draw):
    series = draw_series(draw, METRICS, VALUES, max_metrics=6, max_points=40, max_step=300)
    events = [Event(draw(st.sampled_from(["overflow", "nan", "nan_clamp", "skipped_step", "warning"])),
                    draw(st.one_of(st.none(), st.integers(0, 300))), "line nan inf overflow", "metrics.jsonl",
                    draw(st.one_of(st.none(), st.integers(1, 200))),
                    {"scale_from": draw(VALUES), "scale_to": draw(VALUES)})
              for _ in range(draw(st.integers(0, 4)))]
    stats = CheckpointStats(tensors=(TensorStats("tok_emb.tables.0.weight", (4, 4), "float32", 16,
                                                 draw(st.integers(0, 16)), 1.0, draw(VALUES), 1.0),
                                     TensorStats("tok_emb.tables.1.weight", (4, 4), "float32", 16, 0, 1.0, 0.02, 1.0)))
    checkpoints = [Checkpoint("c.pt", draw(st.one_of(st.none(), st.integers(0, 300))), "torch",
                              draw(st.one_of(st.none(), st.just(stats))))]
    hparams = draw(st.dictionaries(st.sampled_from(["max_grad_norm", "lr", "temperature", "alpha", "init_std",
                                                    "n_factorized_embeddings", "vocab_size", "mlm_probability",
                                                    "loss_base", "precision"]), VALUES, max_size=5))
    return make_run(series, hparams=hparams, events=events, checkpoints=checkpoints)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_detectors_never_raise(run):
    assert_detectors_never_raise(run, MINE)
