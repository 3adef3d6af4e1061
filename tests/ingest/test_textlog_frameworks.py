"""Console output of Keras, fastai and detectron2 read as text logs: the real fixtures (tests/fixtures/frameworks/),
the shapes from each framework's own format strings, and cut or broken variants."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from analyzer.diagnose import diagnose_path
from analyzer.findings import Severity
from analyzer.ingest import textlog

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"


def points(result, name: str) -> dict[int, float]:
    frame = result.frame
    rows = frame[frame["name"] == name]
    return dict(zip(rows["step"].tolist(), rows["value"].tolist()))


def text(body: str | bytes, **kw):
    return textlog.read_text(body, **kw)


def fixture(case: str, name: str = "train.log") -> Path:
    path = FRAMEWORKS / case / name
    if not path.is_file():
        pytest.fail(f"framework fixture missing (see {path.parent / 'README.md'})")
    return path


def notes(result) -> list[str]:
    return [n.message for n in result.notes]


def assert_healthy(case: str) -> None:
    diagnosis = diagnose_path(FRAMEWORKS / case)
    bad = [(f.detector, f.severity) for f in diagnosis.findings if f.severity in (Severity.WARNING, Severity.CRITICAL)]
    assert bad == []


# --- Keras model.fit ----------------------------------------------------------------------------------------------

KERAS_LOSS = [0.7768, 0.5936, 0.5036, 0.4392, 0.3884, 0.3459, 0.3093, 0.2784]
KERAS_VAL_LOSS = [0.6513, 0.5651, 0.4973, 0.4418, 0.3936, 0.3513, 0.3168, 0.2872]


@pytest.mark.parametrize("case", ["keras_fit_verbose1", "keras_fit_verbose2"])
def test_keras_fit_epochs_are_the_steps(case):
    result = textlog.read_file(fixture(case))
    assert points(result, "loss") == dict(zip(range(1, 9), KERAS_LOSS))
    assert points(result, "val_loss") == dict(zip(range(1, 9), KERAS_VAL_LOSS))
    assert points(result, "accuracy")[8] == 0.9401 and points(result, "val_accuracy")[8] == 0.9062
    assert set(points(result, "step_time_ms")) == set(range(1, 9))


@pytest.mark.parametrize("case", ["keras_fit_verbose1", "keras_fit_verbose2"])
def test_keras_evaluate_bar_after_fit_is_not_the_last_epoch(case):
    result = textlog.read_file(fixture(case))
    assert 0.2977 not in points(result, "loss").values()  # model.evaluate's loss
    assert "progress bars after an epoch's own (model.evaluate after fit) not read" in notes(result)


def test_keras_verbose1_backspaces_are_not_garbage():
    result = textlog.read_file(fixture("keras_fit_verbose1"))
    assert not any("control bytes" in n for n in notes(result))


@pytest.mark.parametrize("case", ["keras_fit_verbose1", "keras_fit_verbose2"])
def test_keras_fit_fixture_is_healthy(case):
    assert_healthy(case)


def test_keras_run_killed_mid_epoch_keeps_the_finished_epochs():
    raw = fixture("keras_fit_verbose1").read_bytes()
    cut = raw.index(b"Epoch 5/8\n") + len(b"Epoch 5/8\n")
    cut = raw.index(b"\r", raw.index(b"\r", cut) + 1) + 40  # inside the 2nd redraw of epoch 5's bar
    result = text(raw[:cut])
    assert points(result, "loss") == dict(zip(range(1, 5), KERAS_LOSS[:4]))  # epoch 5's unfinished bar: no point


def test_keras_verbose2_cut_in_its_last_number():
    raw = fixture("keras_fit_verbose2").read_text()
    body = raw[:raw.index("val_loss: 0.5651") + len("val_loss: 0.5")]
    result = text(body)
    assert points(result, "val_loss") == {1: 0.6513}
    assert points(result, "loss") == {1: 0.7768, 2: 0.5936}


def test_keras_progress_line_over_the_line_limit_is_read_from_its_last_redraw(monkeypatch):
    monkeypatch.setattr(textlog, "MAX_LINE_CHARS", 2000)
    redraw = ("\x08" * 60 + "\r\x1b[1m{i}/100\x1b[0m \x1b[32m\u2501\u2501\x1b[0m \x1b[1m3s\x1b[0m 30ms/step - "
              "loss: {l:.4f}")
    bar = "".join(redraw.format(i=i, l=2.0 - i / 100) for i in range(1, 101))
    assert len(bar) > 2000
    body = f"Epoch 1/2\n{bar} - val_loss: 1.5000\nEpoch 2/2\n{bar.replace('loss: 1.0000', 'loss: 0.9000')}\n"
    result = text(body)
    assert points(result, "loss") == {1: 1.0, 2: 0.9} and points(result, "val_loss") == {1: 1.5}
    assert not any("longer than" in n for n in notes(result))


# Keras 2 / tf.keras (keras-team/keras, keras/utils/generic_utils.py, Progbar.update): verbose=1 draws
# '%{n}d/%d [' + '=' * ... + ']' then ' - %.0fs' + ' %.0fms/step' + ' - %s: %.4f' per metric; tf.keras 2.x verbose=2
# ends its line with ' - %.0fms/epoch - %.0fms/step'.
def test_keras2_bar_and_tf_keras_verbose2_lines():
    v1 = ("Epoch 1/2\n\r 1/32 [..............................] - ETA: 3s - loss: 0.7000\r32/32 "
          "[==============================] - 1s 10ms/step - loss: 0.6931 - acc: 0.5000 - val_loss: 0.6900 - "
          "val_acc: 0.5100\nEpoch 2/2\n\r32/32 [==============================] - 0s 9ms/step - loss: 0.6000 - acc: "
          "0.6000 - val_loss: 0.6100 - val_acc: 0.6200\n")
    result = text(v1)
    assert points(result, "loss") == {1: 0.6931, 2: 0.6} and points(result, "val_acc") == {1: 0.51, 2: 0.62}
    assert points(result, "step_time_ms") == {1: 10.0, 2: 9.0}
    v2 = ("Epoch 1/2\n32/32 - 1s - loss: 0.6931 - accuracy: 0.5000 - val_loss: 0.6900 - 651ms/epoch - 20ms/step\n"
          "Epoch 2/2\n32/32 - 0s - loss: 0.6000 - accuracy: 0.6000 - val_loss: 0.6100 - 60ms/epoch - 2ms/step\n")
    result = text(v2)
    assert points(result, "loss") == {1: 0.6931, 2: 0.6} and points(result, "step_time_ms") == {1: 20.0, 2: 2.0}


def test_keras_nan_loss_is_read_as_nan():
    result = text("Epoch 1/2\n4/4 - 0s - 3ms/step - loss: 0.6931\nEpoch 2/2\n4/4 - 0s - 3ms/step - loss: nan\n")
    loss = points(result, "loss")
    assert loss[1] == 0.6931 and math.isnan(loss[2])


def test_keras_epochs_beside_step_lines_are_not_steps():
    body = ("Epoch 1/2\n4/4 - 0s - 3ms/step - loss: 0.6931\n"
            "step 10 | loss 3.2 | lr 1e-4\nstep 20 | loss 3.1 | lr 1e-4\n")
    result = text(body)
    assert points(result, "loss") == {10: 3.2, 20: 3.1}
    assert "per-epoch summary lines not read: the file logs steps" in notes(result)


def test_keras_bar_without_a_header_is_not_read():
    result = text("4/4 - 0s - 3ms/step - loss: 0.6931\n")  # epochs=1 prints no header: no step to give it
    assert result.frame is None or not len(result.frame)


# --- detectron2 CommonMetricPrinter ---------------------------------------------------------------------------------

D2_LINE = ("{prefix} eta: 0:10:33  iter: {it}  total_loss: {loss}  loss_cls: 0.6932  loss_box_reg: 0.5108    "
           "time: 0.3512  last_time: 0.3398  data_time: 0.0271  last_data_time: 0.0042   lr: 0.00025  max_mem: 2596M\n")


def test_detectron2_log_txt_fixture():
    result = textlog.read_file(fixture("detectron2_log", "log.txt"))
    loss = points(result, "total_loss")
    assert sorted(loss) == list(range(19, 600, 20))
    assert loss[19] == 1.422 and loss[599] == 0.4026
    assert points(result, "loss_rpn_loc")[19] == 0.09434
    assert points(result, "lr")[19] == 4.7703e-05 and points(result, "max_memory_mb")[599] == 1834.0
    assert points(result, "step_time_s")[39] == 0.3555 and points(result, "avg_time_s")[39] == 0.3604
    assert points(result, "steps_per_s")[39] == pytest.approx(1 / 0.3555)
    assert not result.events


def test_detectron2_fixture_is_healthy():
    assert_healthy("detectron2_log")


def test_detectron2_console_prefix_with_colours_and_a_day_long_eta():
    prefix = "\x1b[32m[11/22 07:50:07 d2.utils.events]: \x1b[0m"
    body = D2_LINE.format(prefix=prefix, it=19, loss="1.534") + D2_LINE.format(
        prefix=prefix, it=39, loss="1.434").replace("eta: 0:10:33", "eta: 1 day, 2:03:04")
    result = text(body)
    assert points(result, "total_loss") == {19: 1.534, 39: 1.434}
    assert points(result, "loss_box_reg") == {19: 0.5108, 39: 0.5108}


# the format before last_time existed: " {eta}iter: {iter}  {losses}  {time}{data_time}lr: {lr}  {memory}", "{:.3f}"
def test_detectron2_older_line_and_lr_not_available():
    body = (" eta: 0:00:10  iter: 19  total_loss: 1.534  loss_cls: 0.693  time: 0.3512  data_time: 0.0271  lr: N/A  \n"
            " eta: 0:00:05  iter: 39  total_loss: 1.434  loss_cls: 0.650  time: 0.3500  data_time: 0.0270  "
            "lr: 0.000250  \n")
    result = text(body)
    assert points(result, "total_loss") == {19: 1.534, 39: 1.434}
    assert points(result, "lr") == {39: 0.00025}
    assert "steps_per_s" not in set(result.frame["name"])  # `time` is a mean since the start: no speed per step


def test_detectron2_nan_loss_and_cut_last_line():
    body = D2_LINE.format(prefix="", it=19, loss="nan") + D2_LINE.format(prefix="", it=39, loss="1.434")[:60]
    result = text(body)
    assert math.isnan(points(result, "total_loss")[19])
    assert points(result, "total_loss")[39] == 1.434 and 39 not in points(result, "loss_box_reg")


# --- torchrun under srun --label: `1: [default3]:` -----------------------------------------------------------------

def ranked_points(result, name: str) -> dict[int, dict[int, float]]:
    frame = result.frame[result.frame["name"] == name]
    return {int(r): dict(zip(g["step"].tolist(), g["value"].tolist())) for r, g in frame.groupby("rank")}


def test_srun_torchrun_fixture_gives_each_process_its_rank():
    path = fixture("torchrun_srun_label", "slurm-1234.out")
    result = textlog.read_file(path)
    loss = ranked_points(result, "loss")
    assert sorted(loss) == [0, 1, 2, 3] and all(sorted(series) == list(range(40)) for series in loss.values())
    raw = path.read_text().splitlines()
    for task, local, rank in ((0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)):  # train.py prints its global rank
        assert f"{task}: [default{local}]:rank {rank} (local {local}) done" in raw
        first = next(line for line in raw if line.startswith(f"{task}: [default{local}]:iter 0: "))
        assert loss[rank][0] == float(first.split("loss ")[1].split(",")[0])


def test_srun_torchrun_fixture_is_healthy():
    assert_healthy("torchrun_srun_label")


def _srun_line(task: int, local: int, step: int, loss: float) -> str:
    return f"{task}: [default{local}]:iter {step}: loss {loss:.4f}, time 100.00ms\n"


def test_srun_torchrun_interleaved_local_ranks_do_not_collide():
    body = "".join(_srun_line(t, l, s, 4 - s / 100 + t + l / 10) for s in range(6) for l in range(4) for t in (1, 0))
    loss = ranked_points(text(body), "loss")
    assert sorted(loss) == list(range(8))
    assert loss[5] == {s: pytest.approx(4 - s / 100 + 1 + 0.1) for s in range(6)}  # task 1, local rank 1


def test_srun_torchrun_global_rank_tag_names_the_process():
    # PyTorch's `[rankN]:` (c10/util/Logging.cpp) on a line of task 0 says its workers are global ranks 4 and 5
    body = ("".join(_srun_line(t, l, s, 3.0 + t + l / 10) for s in range(4) for t in (0, 1) for l in (0, 1))
            + "0: [default1]:[rank5]:[W1122 08:00:00.000000000 ProcessGroupGloo.cpp:1] Warning: slow\n"
            + "0: [default1]:[rank5]: Traceback (most recent call last):\n")
    result = text(body)
    loss = ranked_points(result, "loss")
    assert sorted(loss) == [2, 3, 4, 5]  # task 1 keeps task * 2 + local
    assert loss[4][0] == 3.0 and loss[5][0] == 3.1 and loss[2][0] == 4.0
    assert [e.data.get("rank") for e in result.events if e.kind == "error"] == [5]


def test_srun_label_alone_beside_torchrun_tags_is_no_trainer_rank():
    body = (_srun_line(0, 0, 0, 3.0) + _srun_line(0, 1, 0, 3.1)
            + "1: Traceback (most recent call last):\n1: torch.distributed.elastic.multiprocessing.errors."
              "ChildFailedError: train.py FAILED\n" + _srun_line(0, 0, 1, 2.9))
    result = text(body)
    assert sorted(ranked_points(result, "loss")) == [0, 1]
    errors = [e for e in result.events if e.kind == "error"]
    assert errors and all("rank" not in e.data for e in errors)


def test_srun_label_alone_still_names_the_rank():
    result = text("".join(f"{t}: iter {s}: loss {3 - s / 10 + t:.4f}\n" for s in range(3) for t in (0, 1)))
    assert sorted(ranked_points(result, "loss")) == [0, 1]


# --- fastai's console table -----------------------------------------------------------------------------------------

FASTAI_HEAD = "epoch     train_loss  valid_loss  accuracy  time    \n"


def _fastai_row(epoch: int, *values: str, time: str = "00:01") -> str:
    return f"{epoch:<10}" + "".join(f"{v:<12}" for v in values) + f"{time}     \n"


def test_fastai_fine_tune_fixture_two_tables_continue_the_epochs():
    result = textlog.read_file(fixture("fastai_console"))
    loss = points(result, "train_loss")
    assert loss == {0: 0.794381, 1: 0.515192, 2: 0.443563, 3: 0.370172, 4: 0.318367, 5: 0.283933}
    assert points(result, "valid_loss")[5] == 0.223228
    assert points(result, "valid_accuracy")[2] == 0.915179 and points(result, "valid_error_rate")[2] == 0.084821
    assert not result.notes


def test_fastai_fixture_is_healthy():
    assert_healthy("fastai_console")


def test_fastai_run_cut_in_its_last_row_keeps_the_rows_before():
    raw = fixture("fastai_console").read_text()
    result = text(raw[:raw.rindex("0.283933") + 5])
    assert sorted(points(result, "train_loss")) == [0, 1, 2, 3, 4]


def test_fastai_row_values_nan_and_missing():
    body = (FASTAI_HEAD + _fastai_row(0, "0.693147", "0.690000", "0.500000")
            + _fastai_row(1, "nan", "#na#", "None") + _fastai_row(2, "0.5", "0.6", "0.7", time="1:02:03"))
    result = text(body)
    loss = points(result, "train_loss")
    assert loss[0] == 0.693147 and math.isnan(loss[1]) and loss[2] == 0.5
    assert points(result, "valid_loss") == {0: 0.69, 2: 0.6} and points(result, "valid_accuracy") == {0: 0.5, 2: 0.7}


def test_fastai_train_metrics_header_names_its_columns():
    head = "epoch     train_loss  train_accuracy  valid_loss  valid_accuracy  time    \n"
    body = head + "0         0.700000    0.510000        0.690000    0.520000        00:00     \n"
    result = text(body)
    assert points(result, "train_accuracy") == {0: 0.51} and points(result, "valid_accuracy") == {0: 0.52}


def test_fastai_rows_without_a_matching_header_are_not_read():
    rows = _fastai_row(0, "0.7", "0.6", "0.5") + _fastai_row(1, "0.6", "0.5", "0.6")
    result = text(rows)  # no header: a bare row of numbers says nothing
    assert result.frame is None or not len(result.frame)
    result = text("epoch     train_loss  time    \n" + rows)  # two columns named, four given
    assert result.frame is None or not len(result.frame)
    assert any("without a header" in n for n in notes(result))


def test_fastai_rows_beside_step_lines_are_not_steps():
    body = FASTAI_HEAD + _fastai_row(0, "0.7", "0.6", "0.5") + "step 10 | loss 3.2\nstep 20 | loss 3.1\n"
    result = text(body)
    assert points(result, "loss") == {10: 3.2, 20: 3.1} and not points(result, "train_loss")
    assert any("fastai" in n for n in notes(result))


def test_keras_log_whose_first_epoch_outgrows_the_sniff_probe_is_claimed(tmp_path, monkeypatch):
    monkeypatch.setattr(textlog, "SNIFF_BYTES", 2048)
    raw = fixture("keras_fit_verbose1").read_bytes()
    assert raw.index(b"\n", raw.index(b"\n") + 1) > 2048  # the first bar's line runs past the probe
    path = tmp_path / "train.log"
    path.write_bytes(raw)
    assert textlog.sniff(path)


def test_srun_torchrun_log_cut_mid_line_keeps_every_whole_line():
    raw = fixture("torchrun_srun_label", "slurm-1234.out").read_text()
    whole = textlog.read_file(fixture("torchrun_srun_label", "slurm-1234.out"))
    for cut in (raw.rindex("iter 30:") + 12, raw.rindex("iter 30:") - 6):  # inside the loss / inside the tags
        result = text(raw[:cut])
        loss, full = ranked_points(result, "loss"), ranked_points(whole, "loss")
        assert all(loss[rank].items() <= full[rank].items() for rank in loss)
        assert sum(map(len, loss.values())) >= sum(map(len, full.values())) - 40
