"""Plots: extreme-keeping downsampling, NaN marks, declared requirements, deterministic SVG, Figure API only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from analyzer.report import plots
from tests.conftest import ROOT


def test_downsampling_keeps_a_one_step_spike_in_a_million_points():
    steps = np.arange(1_000_000)
    values = np.ones(1_000_000)
    values[654_321] = 40.0
    values[123_456] = -5.0
    xs, ys = plots.downsample(steps, values)
    assert len(xs) <= 2 * plots.MAX_BUCKETS
    assert 654_321 in xs and ys.max() == 40.0 and ys.min() == -5.0
    assert (np.diff(xs) > 0).all()


def test_downsampling_leaves_short_series_alone_and_drops_non_finite_values():
    xs, ys = plots.downsample(np.arange(5), np.array([1.0, np.nan, 3.0, np.inf, 5.0]))
    assert xs.tolist() == [0, 2, 4] and ys.tolist() == [1.0, 3.0, 5.0]


def test_non_finite_steps_are_thinned_to_one_per_bucket():
    values = np.full(100_000, np.nan)
    marks = plots.nonfinite_steps(np.arange(100_000), values, buckets=100)
    assert len(marks) <= 100 and marks[0] == 0


@pytest.mark.parametrize("values, log", [
    ([10.0, 0.01, 1.0], True),  # spans decades
    ([3.0, 2.5, 2.0], False),
    ([0.0, 100.0, 1e4], False),  # a zero has no place on a log axis
])
def test_log_scale_only_for_positive_series_spanning_decades(values, log):
    assert plots.wants_log(np.array(values)) is log


def test_a_plot_is_left_out_when_the_run_lacks_its_metrics():
    assert [p.name for p in plots.plots_for("grad-explosion", {"loss"})] == ["loss"]
    assert [p.name for p in plots.plots_for("grad-explosion", {"loss", "grad_norm"})] == ["grad_norm", "loss"]
    assert plots.plots_for("throughput-drop", {plots.SPEED})[0].name == "throughput"
    assert [p.name for p in plots.plots_for("throughput-drop", {"tokens_per_s", "loss"})] == ["loss"]
    assert plots.plots_for("loss-spike", set()) == ()


def test_every_finding_plot_names_a_known_plot():
    assert {p for names in plots.FINDING_PLOTS.values() for p in names} <= set(plots.PLOTS)


def data_with_nan():
    loss = np.linspace(5, 2, 200)
    loss[150] = np.nan
    return plots.PlotInput(series={"loss": (np.arange(200), loss)}, window=(140, 160), window_label="spike")


def test_svg_is_deterministic_and_dateless():
    first = plots.render_svg([plots.PLOTS["loss"]], data_with_nan())
    second = plots.render_svg([plots.PLOTS["loss"]], data_with_nan())
    assert first == second
    assert first.startswith("<svg") and "<dc:date>" not in first and "Matplotlib v" not in first


def test_nan_points_are_marked_and_the_incident_labelled():
    svg = plots.render_svg([plots.PLOTS["loss"]], data_with_nan())
    assert "loss NaN/Inf (1)" in svg and "spike" in svg


def test_every_plot_draws_on_a_run_that_has_its_metrics():
    n = 50
    series = {m: (np.arange(n), np.linspace(1, 2, n)) for spec in plots.PLOTS.values() for m in spec.metrics}
    data = plots.PlotInput(series=series, hparams={"max_grad_norm": 1.0, "mlm_probability": 0.15, "vocab_size": 256},
                           window=(10, 20), checkpoints=((10, True), (40, False)), overflow_steps=(5, 6))
    for spec in plots.PLOTS.values():
        assert plots.render_svg([spec], data).startswith("<svg"), spec.name


def test_report_code_never_imports_pyplot():
    code = ("import sys, numpy as np; from analyzer.report import plots; "
            "data = plots.PlotInput(series={m: (np.arange(9), np.ones(9)) for s in plots.PLOTS.values() "
            "for m in s.metrics}); [plots.render_svg([s], data) for s in plots.PLOTS.values()]; "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_report_package_does_not_import_matplotlib_or_jinja2():
    code = "import sys, analyzer.report; print([m for m in ('matplotlib', 'jinja2') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
