"""Shared detector statistics: robust baselines, interval, schedule, chance level, effective batch."""

import math

import numpy as np
import pandas as pd

from analyzer.detectors import stats
from analyzer.run import Checkpoint
from tests.conftest import make_run


def test_finite_drops_nan_and_duplicate_steps():
    s = pd.Series([1.0, np.nan, 3.0, np.inf, 5.0], index=[0, 1, 2, 2, 4])
    out = stats.finite(s)
    assert list(out.index) == [0, 2, 4]
    assert list(out) == [1.0, 3.0, 5.0]


def test_log_interval_is_median_gap():
    s = pd.Series(np.ones(5), index=[0, 10, 20, 30, 100])
    assert stats.log_interval(s) == 10.0
    assert stats.log_interval(pd.Series([1.0], index=[5])) == 1.0


def test_points_for_steps_clips():
    s = pd.Series(np.ones(5), index=[0, 10, 20, 30, 40])
    assert stats.points_for_steps(s, 200, 5, 50) == 20
    assert stats.points_for_steps(s, 20, 5, 50) == 5


def test_log_values_none_for_nonpositive():
    assert stats.log_values(pd.Series([0.1, 0.0])) is None
    assert stats.log_values(pd.Series([1.0, math.e]))[1] == 1.0


def test_noise_std_ignores_trend_and_recovers_sigma():
    rng = np.random.default_rng(0)
    x = np.linspace(5, 0, 4000) + rng.normal(0, 0.1, 4000)
    assert abs(stats.noise_std(x) - 0.1) < 0.01
    assert abs(stats.robust_std(rng.normal(0, 2.0, 10000)) - 2.0) < 0.1


def test_trailing_baseline_excludes_current_point():
    x = pd.Series([1.0] * 10 + [10.0])
    base = stats.trailing_baseline(x, window=5, min_periods=3)
    assert base.level.iloc[-1] == 1.0
    assert np.isnan(base.level.iloc[0])


def test_level_shift_finds_drop_and_ignores_single_outlier():
    values = np.r_[np.full(50, 1.0), np.full(50, 0.6)]
    values[20] = 0.1  # one slow step
    shift = stats.level_shift(pd.Series(values, index=np.arange(100) * 10), window=10, direction="down")
    assert shift.step == 500 and shift.before == 1.0 and shift.after == 0.6
    assert stats.level_shift(pd.Series(values[:10]), window=10) is None


def test_runs_of_true():
    assert stats.runs_of_true(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]
    assert stats.runs_of_true(np.zeros(3, bool)) == []


def test_schedule_from_logged_lr_finds_warmup_end():
    lr = np.r_[np.linspace(0, 1e-3, 11)[1:], np.full(90, 1e-3)]
    run = make_run({"lr": lr})
    sched = stats.schedule(run)
    assert sched.source == "logged lr" and sched.peak_lr == 1e-3
    assert sched.warmup_end == 9
    assert sched.in_warmup(5) and not sched.in_warmup(50)
    assert sched.fraction_at(50) == 1.0


def test_schedule_from_hparams_cosine():
    run = make_run({"loss": [1.0, 1.0]}, hparams={"learning_rate": 1e-4, "warmup_ratio": 0.1, "max_steps": 1000,
                                                  "lr_scheduler_type": "cosine"})
    sched = stats.schedule(run)
    assert sched.source == "hparams" and sched.warmup_end == 100
    assert abs(sched.fraction_at(550) - 0.5) < 1e-9
    assert sched.fraction_at(1000) < 1e-9


def test_chance_level_prefers_num_classes_and_honours_base():
    run = make_run({"loss": [1.0]}, hparams={"num_labels": 4, "vocab_size": 50000})
    chance = stats.chance_level(run)
    assert chance.classes == 4 and abs(chance.value - math.log(4)) < 1e-12
    base2 = make_run({"loss": [1.0]}, hparams={"vocab_size": 65536, "loss_base": 2})
    assert stats.chance_level(base2).value == 16.0
    assert stats.chance_level(make_run({"loss": [1.0]})) is None


def test_effective_batch():
    run = make_run({"loss": [1.0]}, hparams={"batch_size": 24, "gradient_accumulation_steps": 3, "world_size": 1,
                                             "block_size": 128})
    eb = stats.effective_batch(run)
    assert eb.sequences == 72 and eb.tokens == 72 * 128
    assert "24 x 3 = 72" in eb.describe()


def test_last_checkpoint_before_skips_later_and_broken():
    run = make_run({"loss": [1.0]}, checkpoints=[
        Checkpoint("a", 100, "torch"), Checkpoint("b", 200, "torch", error="refused"), Checkpoint("c", 300, "torch")])
    assert stats.last_checkpoint_before(run, 250).path == "a"
    assert stats.last_checkpoint_before(run, 50) is None


def test_fmt_num_and_round_sig():
    assert stats.fmt_num(8.44e-5) == "8.44e-5"
    assert stats.fmt_num(5e-4) == "5e-4" and stats.fmt_num(1.5e-6) == "1.5e-6" and stats.fmt_num(3e6) == "3e6"
    assert stats.fmt_num(6.65) == "6.65"
    assert stats.round_sig(1.234e-4) == 1.2e-4


def test_fmt_ratio_keeps_huge_factors_short():
    assert stats.fmt_ratio(2.756) == "2.76x"
    assert stats.fmt_ratio(6.0934415088935499e25) == "6.09e25x"


def test_fmt_times_writes_whole_factors_and_huge_ones_short():
    assert stats.fmt_times(254.44) == "254x"
    assert stats.fmt_times(3.27e12) == "3.27e12x"


def test_median_before_takes_the_window_strictly_before_the_step():
    series = pd.Series([1.0, 2.0, 3.0, 100.0, 5.0], index=[10, 20, 30, 40, 50])
    assert stats.median_before(series, 40, window=2) == (2.5, 2)
    assert stats.median_before(series, 40) == (2.0, 3)
    assert stats.median_before(series, 10) is None
