"""throughput-drop: a lasting fall of the training speed, not single slow steps."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.detectors import throughput_drop
from analyzer.findings import Severity, Skipped
from analyzer.ingest import read_run
from analyzer.run import Event
from tests.conftest import make_run
from tests.detectors import synth

P = throughput_drop.DETECTOR.params
FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"


def check(run, **over):
    return throughput_drop.check(run, {**P, **over})


def test_seed003_drop_with_spike_and_log_line():
    rng = np.random.default_rng(3)
    steps = np.arange(0, 3000, 10)
    speed = np.where(steps < 2000, 1.0, 0.6) * np.exp(rng.normal(0, 0.02, len(steps)))
    loss = np.full(len(steps), 6.65)
    loss[steps == 2000] = 9.58
    event = Event("warning", 2000, "[Debug] step 2000: enabling anomaly detection", "train.log", 2001)
    [f] = check(make_run({"steps_per_s": (steps, speed), "loss": (steps, loss)}, events=[event]))
    assert f.severity is Severity.WARNING and f.first_step == 2000
    assert f.metrics["drop"] == pytest.approx(0.4, abs=0.03)
    assert "loss jumped at step 2000" in f.message and "anomaly" in f.message
    assert any(e.file == "train.log" for e in f.evidence)


def test_small_drop_on_a_steady_metric_is_info():
    tflops = np.r_[np.full(20, 149.0), np.full(20, 141.5)] + np.random.default_rng(0).normal(0, 0.1, 40)
    [f] = check(make_run({"tflops": tflops}))
    assert f.severity is Severity.INFO and f.metrics["metric"] == "tflops"


def test_time_per_iteration_is_inverted():
    ms = np.r_[np.full(30, 100.0), np.full(30, 180.0)]
    [f] = check(make_run({"step_time_ms": ms}))
    assert f.metrics["before"] == pytest.approx(100.0) and f.metrics["after"] == pytest.approx(180.0)


@pytest.mark.parametrize("interval", [1, 10, 50])
def test_single_slow_steps_and_noise_are_silent(interval):
    for seed in range(4):
        run = synth.log(synth.healthy(seed), interval, metrics=("loss", "steps_per_s"))
        assert check(run) == []


def test_a_temporary_slowdown_that_recovers_is_silent():
    speed = np.r_[np.full(100, 1.0), np.full(40, 0.5), np.full(100, 1.0)]
    assert check(make_run({"steps_per_s": speed})) == []


def test_a_change_across_a_restart_is_a_new_setup():
    steps = np.r_[np.arange(0, 100), np.arange(50, 150)]
    speed = np.r_[np.full(100, 1.0), np.full(100, 0.5)]
    assert check(make_run({"steps_per_s": (steps, speed)})) == []


def test_growing_batch_is_not_a_drop():
    steps = np.arange(60)
    batch = np.where(steps < 30, 512, 1024)
    speed = np.where(steps < 30, 0.04, 0.02)
    assert check(make_run({"steps_per_s": speed, "global_batch_size": batch})) == []


def test_skips_without_speed_or_points():
    assert isinstance(check(make_run({"loss": [1.0] * 10})), Skipped)
    assert isinstance(check(make_run({"steps_per_s": [1.0, 0.5]})), Skipped)


def test_bloom176b_tflops(real_runs):
    [f] = check(read_run(real_runs / "bloom176b_spike"))
    assert f.first_step == 42783 and f.severity is Severity.INFO
    assert f.metrics["before"] == pytest.approx(149, abs=1) and f.metrics["after"] == pytest.approx(141, abs=1.5)


@pytest.mark.parametrize("case", ["hf_mistral_healthy", "hf_tinyllama_healthy", "nanogpt_baseline",
                                  "bloom104b_wide_divergence", "bloom104b_overflow"])
def test_no_warning_on_real_logs(real_runs, case):
    result = check(read_run(real_runs / case))
    assert isinstance(result, Skipped) or all(f.severity is Severity.INFO for f in result)


# --- steps/s from the clock of the logged points (wall_time) -------------------------------------------------------

T0 = 1.7e9  # seconds since the epoch (November 2023)


def clock(seconds_per_step, steps, *, seed=0, jitter=0.02, pauses=None):
    """Readings of a loop's clock at `steps`: each step takes seconds_per_step(step) with multiplicative jitter;
    `pauses` {step: seconds} adds a stall (an evaluation, a checkpoint save) just before that reading."""
    rng = np.random.default_rng(seed)
    steps = np.asarray(steps)
    per_step = np.array([seconds_per_step(s) for s in range(int(steps[-1]) + 1)], dtype="float64")
    per_step *= np.exp(rng.normal(0, jitter, len(per_step)))
    elapsed = np.cumsum(per_step)[steps]
    for step, pause in (pauses or {}).items():
        elapsed[steps >= step] += pause
    return T0 + elapsed


def clock_run(steps, times, **series):
    return make_run({"wall_time": (steps, times), "loss": (steps, np.full(len(steps), 2.0)), **series})


def test_clock_slowdown_that_lasts_is_a_warning():
    steps = np.arange(10, 3010, 10)  # TB-like: the loss and its wall time every 10 steps
    times = clock(lambda s: 0.5 if s < 2000 else 0.8, steps, pauses={s: 40.0 for s in range(500, 3000, 500)})
    [f] = check(clock_run(steps, times))
    assert f.severity is Severity.WARNING and 2000 <= f.first_step <= 2010
    assert f.metrics["metric"] == "steps_per_s" and "wall_time" in f.metrics["source"]
    assert f.metrics["before"] == pytest.approx(2.0, rel=0.03) and f.metrics["after"] == pytest.approx(1.25, rel=0.03)
    assert "clock of the logged points" in f.message
    assert f.evidence and all(e.file == "metrics.jsonl" for e in f.evidence)


def test_steady_clock_with_eval_and_checkpoint_pauses_is_silent():
    steps = np.arange(10, 5010, 10)
    pauses = {**{s: 30.0 for s in range(250, 5000, 250)}, **{s: 90.0 for s in range(1000, 5000, 1000)}}
    for seed in range(5):
        times = clock(lambda s: 0.3, steps, seed=seed, jitter=0.1, pauses=pauses)
        assert check(clock_run(steps, times)) == []


def test_a_pause_at_every_other_reading_is_no_drop():
    steps = np.arange(10, 2010, 10)
    times = clock(lambda s: 0.3, steps, pauses={s: 2.0 for s in range(20, 2000, 20)})
    assert check(clock_run(steps, times)) == []


def test_logging_less_often_is_not_a_slowdown():
    steps = np.r_[np.arange(1, 200), np.arange(200, 3000, 25)]  # every step, then every 25 steps
    times = clock(lambda s: 0.2, steps)
    assert check(clock_run(steps, times)) == []


def test_a_resume_with_downtime_and_slower_hardware_is_no_drop():
    first, second = np.arange(10, 1510, 10), np.arange(1000, 3000, 10)  # resumed from the step-1000 checkpoint
    times = np.r_[clock(lambda s: 0.5, first), clock(lambda s: 0.8, second, seed=1) + 5_000.0]
    run = clock_run(np.r_[first, second], times)
    assert [e.step for e in run.events_of("restart")] == [1000]
    assert check(run) == []


def test_the_gap_across_a_resume_is_no_rate():
    first, second = np.arange(10, 1010, 10), np.arange(500, 1500, 10)
    run = clock_run(np.r_[first, second], np.r_[clock(lambda s: 0.5, first), clock(lambda s: 0.5, second) + 9e3])
    rate = throughput_drop.clock_rate(run)
    assert rate.index.is_unique and rate.max() < 2.5  # nothing from the 9000 s of downtime
    assert 500 not in rate.index and rate.index.min() == 20 and rate.index.max() == 1490


def test_repeated_or_backward_readings_give_no_value():
    steps = np.arange(10, 110, 10)
    times = T0 + np.array([0, 5, 5, 10, 9, 20, 25, 30, 35, 40], dtype="float64")  # a tie, a clock that goes back
    rate = throughput_drop.clock_rate(clock_run(steps, times))
    assert list(rate.index) == [20, 40, 60, 70, 80, 90, 100] and np.isfinite(rate).all() and (rate > 0).all()


def test_a_logged_rate_wins_over_the_clock():
    steps = np.arange(10, 3010, 10)
    times = clock(lambda s: 0.5 if s < 2000 else 0.8, steps)
    run = clock_run(steps, times, steps_per_s=(steps, np.full(len(steps), 2.0)))
    assert check(run) == []


def test_clock_of_the_lowest_rank_only():
    from analyzer.run import Ingested, build_run

    steps = np.arange(10, 3010, 10)
    steady, slowing = clock(lambda s: 0.5, steps), clock(lambda s: 0.5 if s < 2000 else 0.9, steps, seed=1)
    piece = Ingested("test")
    for rank, times in ((0, steady), (1, slowing)):
        piece.add_frame(f"rank{rank}.jsonl", pd.DataFrame({"step": steps, "name": "wall_time", "value": times,
                                                           "line": np.arange(1, len(steps) + 1), "rank": rank}))
    assert check(build_run("/nonexistent/run", [piece])) == []


def test_short_noisy_missing_or_too_fine_clocks():
    few = np.arange(10, 60, 10)
    assert "intervals" in check(clock_run(few, clock(lambda s: 0.5, few))).reason
    steps = np.arange(10, 2010, 10)
    for seed in range(5):  # 30% jitter per step: no lasting shift
        assert check(clock_run(steps, clock(lambda s: 0.5, steps, seed=seed, jitter=0.3))) == []
    assert "no training speed" in check(make_run({"loss": [1.0] * 50})).reason
    fine = clock(lambda s: 0.001 if s < 1000 else 0.002, steps)  # 10 ms between readings: the clock times Python
    skipped = check(clock_run(steps, fine))
    assert isinstance(skipped, Skipped) and "too close" in skipped.reason
    assert check(clock_run(steps, fine), min_clock_gap=0.0)[0].metrics["drop"] == pytest.approx(0.5, abs=0.05)


def test_tensorboard_wall_time_end_to_end(tmp_path):
    from tests.ingest.binary_writers import tb_event, tb_file, tb_simple

    steps = np.arange(5, 1505, 5)
    times = clock(lambda s: 0.4 if s < 1000 else 0.7, steps, pauses={s: 20.0 for s in range(250, 1500, 250)})
    events = [tb_event(int(s), tb_simple("train/loss", 2.0), tb_simple("train/lr", 1e-3), wall_time=float(t))
              for s, t in zip(steps, times)]
    events += [tb_event(int(s), tb_simple("eval/loss", 2.1), wall_time=float(t) + 10.0) for s, t in
               zip(steps[49::50], times[49::50])]  # eval points written later: not the loop's clock
    (tmp_path / "events.out.tfevents.1700000000.host.1.0").write_bytes(tb_file(*events))
    run = read_run(tmp_path)
    assert run.series("wall_time").to_numpy() == pytest.approx(times)
    [f] = check(run)
    assert f.severity is Severity.WARNING and 1000 <= f.first_step <= 1025  # within 5 readings


@pytest.mark.parametrize("case", ["tensorboard_scalars", "tensorboard_truncated", "lightning_tb", "mlflow_filestore",
                                  "mlflow_sqlite", "wandb_offline", "wandb_offline_legacy"])
def test_framework_fixture_clocks_are_quiet(case):
    """Real TB/MLflow/W&B output of tiny CPU runs: their readings are 0.3-25 ms apart, so the clock is not judged;
    judged anyway (min_clock_gap 0), the jitter of the real clocks still gives no drop, except for lightning_tb,
    whose last 3 of 12 readings (3 ms apart, after the last epoch boundary) run 1.7 ms per step instead of 1.05."""
    run = read_run(FRAMEWORKS / case)
    assert run.has("wall_time")
    result = check(run)
    assert isinstance(result, Skipped) and "too close" in result.reason
    if case != "lightning_tb":
        assert check(run, min_clock_gap=0.0) == []


def test_a_drop_that_keeps_drifting_down_is_placed_where_it_began():
    steps = np.arange(5, 1505, 5)  # slower from step 1000 on, and a little slower still every step after
    times = clock(lambda s: 0.4 if s < 1000 else 0.7 * (1 + (s - 1000) / 4000), steps, jitter=0.01,
                  pauses={1000: 20.0})
    event = Event("warning", 1000, "enabling anomaly detection", "train.log", 7)
    [f] = check(make_run({"wall_time": (steps, times), "loss": (steps, np.full(len(steps), 2.0))}, events=[event]))
    assert 1000 <= f.first_step <= 1010 and "anomaly detection" in f.message


def test_a_clock_in_whole_milliseconds_just_above_the_floor_is_quiet():
    steps = np.arange(1, 2001)  # MLflow-like: every step logged, 60 ms apart, timestamps rounded to the ms
    for seed in range(5):
        times = np.round(clock(lambda s: 0.06, steps, seed=seed, jitter=0.05) * 1000) / 1000
        assert check(clock_run(steps, times)) == []


def test_ray_tunes_time_per_iteration_is_a_step_time():
    seconds = np.r_[np.full(30, 1.5), np.full(30, 2.5)]
    [f] = check(make_run({"time_this_iter_s": seconds}))
    assert f.metrics["metric"] == "time_this_iter_s" and f.metrics["after"] == pytest.approx(2.5)


def test_a_long_log_line_is_quoted_cut_at_a_word_with_a_mark():
    # bloom104b_overflow: "... Rank 0 Skipping step. Attempted loss." read as if the line ended there.
    from analyzer.detectors.throughput_drop import MAX_QUOTE, _quoted

    line = "[INFO] [deepscale] OVERFLOW! Rank 0 Skipping step. " + "Attempted loss scale: 1048576.0, reducing " * 4
    quoted = _quoted(line)
    assert quoted.endswith(" …") and len(quoted) <= MAX_QUOTE + 2
    assert line.startswith(quoted[:-2]) and line[len(quoted) - 2] == " "
    assert _quoted("short line") == "short line"
