"""No loss/optimizer/throughput detector raises on odd input: empty, constant, negative, NaN/Inf, duplicate or
unsorted steps, restarts, odd hyperparameter values."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.run import Checkpoint, Event
from tests.conftest import make_run
from tests.detectors.fuzz import assert_detectors_never_raise, draw_series

MINE = ("L001", "L002", "L003", "L004", "L005", "L006", "O001", "O002", "O003", "P001")
METRICS = ("loss", "lm_loss", "eval_loss", "lr", "grad_norm", "update_ratio", "steps_per_s", "tokens_per_s",
           "tflops", "step_time_ms", "global_batch_size", "mask_ratio", "kd_loss", "eval_wer", "eval_accuracy")
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, 1.0, -1.0]),
                   st.floats(0.5, 12.0))
HPARAMS = ("lr", "batch_size", "grad_accum", "world_size", "global_batch_size", "block_size", "vocab_size",
           "num_classes", "max_steps", "warmup_steps", "warmup_ratio", "lr_schedule", "max_grad_norm", "init_std",
           "n_factorized_embeddings", "scale_factorized_init", "mlm_probability", "label_all_tokens", "loss_base",
           "weight_decay")
HPARAM_VALUES = st.one_of(VALUES, st.integers(-3, 100000), st.sampled_from(["cosine", "linear", "x", "", True]))


@st.composite
def runs(draw):
    series = draw_series(draw, METRICS, VALUES, max_metrics=7, max_points=60, max_step=400)
    events = [Event(draw(st.sampled_from(["warning", "restart", "overflow"])),
                    draw(st.one_of(st.none(), st.integers(0, 400))), "a line", "train.log",
                    draw(st.one_of(st.none(), st.integers(1, 200))))
              for _ in range(draw(st.integers(0, 3)))]
    checkpoints = [Checkpoint("c.pt", draw(st.one_of(st.none(), st.integers(0, 400))), "torch")]
    hparams = draw(st.dictionaries(st.sampled_from(HPARAMS), HPARAM_VALUES, max_size=8))
    return make_run(series, hparams=hparams, events=events, checkpoints=checkpoints)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_detectors_never_raise(run):
    assert_detectors_never_raise(run, MINE)
