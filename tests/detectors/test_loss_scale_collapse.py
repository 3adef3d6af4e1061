"""loss-scale-collapse (N002): mid-run fp16 overflow cascades, told apart from the start-up calibration."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.detectors import loss_scale_collapse
from analyzer.findings import Severity, Skipped
from analyzer.run import Event, Ingested, build_run
from tests.conftest import make_run

DET = loss_scale_collapse.DETECTOR


def run_check(run, **params):
    return DET.check(run, {**DET.params, **params})


def text_run(points, overflows):
    """A text log: one line per point {step: {metric: value}}; overflow lines (without a step) after given steps."""
    rows, events, line = [], [], 0
    for step, values in points.items():
        line += 1
        rows += [{"step": step, "name": k, "value": v, "line": line} for k, v in values.items()]
        for scale_from, scale_to in overflows.get(step, ()):
            line += 1
            events.append(Event("overflow", None, f"OVERFLOW! Rank 0 Skipping step. Attempted loss scale: "
                                f"{scale_from}, reducing to {scale_to}", "train.log", line,
                                {"scale_from": scale_from, "scale_to": scale_to}))
    piece = Ingested("text")
    piece.add_frame("train.log", pd.DataFrame(rows))
    piece.events.extend(events)
    return build_run(Path("/nonexistent"), [piece])


def bloom_like():
    """BLOOM-104B: six overflows at 17061-17067, scale 1048576 -> 32768, loss 2.67 -> 4.4."""
    points, overflows, scale = {}, {}, 1048576.0
    for step in range(16900, 17069):
        points[step] = {"loss": 2.67 if step <= 17061 else 4.37, "loss_scale": scale}
        if 17061 <= step <= 17067 and step != 17065:
            overflows[step] = [(scale, scale / 2)]
            scale /= 2
    return text_run(points, overflows)


def test_mid_run_cascade_with_loss_jump_is_a_warning():
    [f] = run_check(bloom_like())
    assert f.severity is Severity.WARNING
    assert f.first_step == 17061
    assert f.metrics["overflows"] == 6 and f.metrics["scale_from"] == 1048576 and f.metrics["scale_to"] == 16384
    assert f.metrics["loss_jump"] > 1.6
    assert {r.hparam for r in f.recommendations} >= {"precision", "max_grad_norm"}
    assert f.evidence[0].line is not None


def test_deepspeed_startup_calibration_is_info():
    points = {s: {"loss": 10.9 - 0.01 * s} for s in range(10, 100, 10)}
    points[0] = {"lr": 1e-4}
    points = dict(sorted(points.items()))
    scale, overflows = 2.0**32, {0: [], 10: []}
    for i in range(17):
        overflows[0 if i < 10 else 10].append((scale, scale / 2))
        scale /= 2
    [f] = run_check(text_run(points, overflows))
    assert f.severity is Severity.INFO
    assert f.metrics["calibration_overflows"] == 17 and f.metrics["scale_to"] == 32768


def test_logged_scale_halvings_without_overflow_lines():
    steps = np.arange(29020, 29100, 10)
    loss = [2.776, 2.773, 2.768, 7.34, 8.72, 7.65, 7.19, 6.85]
    scale = [32768, 32768, 65536, 8192, 4096, 4096, 4096, 4096]
    [f] = run_check(make_run({"loss": (steps, loss), "loss_scale": (steps, scale)}))
    assert f.severity is Severity.WARNING and f.first_step == 29050
    assert f.metrics["halvings"] == 4


def test_two_early_overflows_with_a_loss_jump_are_not_calibration():
    points = {u: {"loss": v, "loss_scale": s} for u, v, s in
              zip(range(1, 11), [16.47, 16.45, 25.22, 18.08, 23.73, 20.43, 18.97, 18.35, 18.26, 17.56],
                  [4, 4, 1, 1, 1, 1, 1, 1, 1, 1])}
    [f] = run_check(text_run(points, {2: [(4.0, 2.0), (2.0, 1.0)]}))
    assert f.severity is Severity.WARNING and f.first_step == 2


def test_scale_below_one_is_critical():
    points = {s: {"loss": 3.0} for s in range(200, 260)}
    [f] = run_check(text_run(points, {230: [(2.0, 1.0), (1.0, 0.5), (0.5, 0.25)]}))
    assert f.severity is Severity.CRITICAL


def test_normal_dynamic_scaling_is_silent():
    """torch GradScaler: 2x growth every 2000 steps, one halving after some of them."""
    steps = np.arange(0, 20000, 100)
    scale = np.full(len(steps), 65536.0)
    for k, s in enumerate(steps):
        scale[k] = 65536.0 * (2.0 if (s // 2000) % 2 else 1.0)
    loss = 3 + np.exp(-steps / 5000) + np.random.default_rng(0).normal(0, 0.02, len(steps))
    assert run_check(make_run({"loss": (steps, loss), "loss_scale": (steps, scale)})) == []


@pytest.mark.parametrize("noise", [0.01, 0.1])
def test_isolated_overflows_mid_run_are_silent(noise):
    rng = np.random.default_rng(2)
    points = {s: {"loss": 3.0 * np.exp(rng.normal(0, noise))} for s in range(0, 5000, 10)}
    overflows = {1000: [(65536.0, 32768.0)], 3000: [(65536.0, 32768.0)]}
    assert run_check(text_run(points, overflows)) == []


def test_fp32_run_is_skipped_and_short_runs_do_not_crash():
    assert isinstance(run_check(make_run({"loss": [3.0, 2.9]})), Skipped)
    assert run_check(make_run({"loss_scale": [65536.0]})) == []
    run = make_run({"loss": [np.nan, 3.0, np.inf], "loss_scale": [8.0, 4.0, 2.0]})
    run_check(run)  # NaN inside: no exception


def test_skipped_counter_counts_overflows():
    steps = np.arange(0, 2000, 10)
    skipped = np.where(steps < 1000, 0, np.where(steps < 1030, (steps - 990) // 10, 4))
    loss = np.where((steps >= 1000) & (steps < 1100), 4.0, 3.0)
    [f] = run_check(make_run({"loss": (steps, loss), "skipped": (steps, skipped)}))
    assert f.first_step == 1000 and f.metrics["overflows"] == 4
