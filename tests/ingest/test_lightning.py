"""Lightning CSVLogger reader: real metrics.csv/hparams.yaml, versions of one run (resumes), python-tagged YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyzer.ingest import lightning, read_run
from analyzer.run import build_run

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"


def read_dir(root: Path):
    files = sorted(p for p in root.rglob("*") if p.is_file() and lightning.sniff(p))
    return build_run(root, [lightning.read(files, root)])


def version(root: Path, n: int, csv: str | None = None, hparams: str | None = None) -> Path:
    folder = root / "lightning_logs" / f"version_{n}"
    folder.mkdir(parents=True)
    if csv is not None:
        (folder / "metrics.csv").write_text(csv)
    if hparams is not None:
        (folder / "hparams.yaml").write_text(hparams)
    return folder


# --- real logs -----------------------------------------------------------------------------------------------------

def test_slm_resume_two_versions_are_one_run_with_a_restart(real_runs):
    run = read_dir(real_runs / "pl_slm_resume")
    loss = run.series("loss")  # train_loss_step
    assert loss.index[0] == 49 and loss.index[-1] == 196999
    (restart,) = run.events_of("restart")
    assert restart.step == 140749 and restart.file == "lightning_logs/version_5/metrics.csv" and restart.line == 2
    epoch_loss = run.series("loss_epoch")
    assert epoch_loss[14073] == 4.776971817016602 and epoch_loss[154813] == 3.669633150100708
    assert run.series("eval_loss")[14073] == 4.132571697235107 and run.series("eval_loss")[154813] == 3.5629003047943115
    # newest version's hparams win: num_epochs was raised from 10 to 20 for the resume
    assert run.hparam("epochs") == 20 and run.hparams["epochs"].file == "lightning_logs/version_5/hparams.yaml"
    assert run.hparam("vocab_size") == 50258


def test_slm_plateau(real_runs):
    run = read_dir(real_runs / "pl_slm_plateau")
    loss = run.series("loss")
    assert loss.index[0] == 49 and loss.index[-1] == 10999 and len(loss) == 220
    assert round(loss.min(), 2) == 7.49 and round(loss.max(), 2) == 7.81
    assert run.hparam("lr") == 0.0002363235740126483 and run.hparam("vocab_size") == 50258
    assert run.has("ppl") and not run.events_of("restart")


def test_resnet_onecycle_lr_monitor_and_test_metrics(real_runs):
    run = read_dir(real_runs / "pl_resnet_onecycle_healthy")
    lr = run.series("lr")  # the `lr-SGD` column of LearningRateMonitor
    assert lr.idxmax() == 849 and lr.max() == 0.09997232298068263
    assert run.series("test_acc").to_dict() == {2765: 0.9000999927520752}
    assert run.series("epoch").max() == 35 and run.hparam("batch_size") == 512


# --- framework fixtures ----------------------------------------------------------------------------------------------

def test_lightning_csv_fixture_resume():
    root = FRAMEWORKS / "lightning_csv"
    if not (root / "lightning_logs" / "version_1" / "metrics.csv").is_file():
        pytest.fail("framework fixture missing (regenerate: tests/fixtures/frameworks/generate.py)")
    run = read_dir(root)
    (restart,) = run.events_of("restart")
    assert restart.step == 25 and "version_1" in restart.file
    assert run.series("loss")[25] == 0.4979640245437622 and run.series("eval_loss")[39] == 0.9022067785263062
    assert run.hparam("lr") == 0.05 and run.hparam("batch_size") == 8


def test_tensorboard_logger_hparams_are_claimed_but_not_the_events():
    folder = FRAMEWORKS / "lightning_tb" / "lightning_logs" / "version_0"
    if not (folder / "hparams.yaml").is_file():
        pytest.fail("framework fixture missing (regenerate: tests/fixtures/frameworks/generate.py)")
    assert lightning.sniff(folder / "hparams.yaml")
    assert not any(lightning.sniff(p) for p in folder.glob("events.out.tfevents.*"))


# --- versions, YAML, odd input ---------------------------------------------------------------------------------------

def test_versions_in_numeric_order_and_overlap_is_one_restart(tmp_path):
    version(tmp_path, 2, "step,train_loss_step,epoch\n0,5.0,0\n5,4.0,0\n10,3.0,1\n", "lr: 0.1\n")
    version(tmp_path, 10, "step,train_loss_step,epoch\n6,3.9,0\n11,2.5,1\n", "lr: 0.01\n")
    run = read_dir(tmp_path)
    assert run.series("loss").to_dict() == {0: 5.0, 5: 4.0, 6: 3.9, 10: 3.0, 11: 2.5}
    assert {e.step for e in run.events_of("restart")} == {6}
    assert run.hparam("lr") == 0.01  # version_10 is newer than version_2


def test_a_version_that_starts_from_the_beginning_is_a_new_run(tmp_path):
    # every trainer.fit opens a version: version_1 is a second experiment that crashed at step 10. Merged with
    # version_0 it would have gone on with version_0's steps 15-20
    version(tmp_path, 0, "step,train_loss_step,epoch\n0,5.0,0\n5,4.0,0\n10,3.0,1\n15,2.0,1\n20,1.0,2\n", "lr: 0.1\n")
    version(tmp_path, 1, "step,train_loss_step,epoch\n0,5.0,0\n5,6.0,0\n10,9.0,1\n", "lr: 1.0\n")
    version(tmp_path, 2, "step,train_loss_step,epoch\n15,8.0,1\n", None)  # resumes version_1
    run = read_dir(tmp_path)
    assert run.series("loss").to_dict() == {0: 5.0, 5: 6.0, 10: 9.0, 15: 8.0}
    assert run.hparam("lr") == 1.0 and [e.step for e in run.events_of("restart")] == [15]
    assert [(n.file, n.message) for n in run.notes] == [(
        "lightning_logs/version_1", "2 Lightning runs found; only the most recent was read, not lightning_logs/version_0")]


def test_python_tags_in_hparams_yaml_build_nothing(tmp_path):
    hparams = ("args: !!python/object:argparse.Namespace\n  lr: 3.0e-4\n  batch_size: 32\n"
               "optimizer: !!python/name:torch.optim.AdamW ''\n"
               "betas: !!python/tuple [0.9, 0.95]\n"
               "loss_fn: !!python/object/apply:os.system ['echo pwned > pwned']\n"
               "warmup: 1e-2\n")
    version(tmp_path, 0, "step,train_loss_step\n1,2.0\n", hparams)
    run = read_dir(tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert run.hparam("lr") == 3.0e-4 and run.hparam("batch_size") == 32
    assert run.hparam("optimizer") == "torch.optim.AdamW" and run.hparam("betas") == [0.9, 0.95]
    assert run.hparam("warmup") == 0.01  # YAML 1.1 reads 1e-2 as text


def test_metrics_csv_outside_version_folder(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss_step,val_loss\n0,9,1.0,\n0,9,,1.2\n")
    assert lightning.sniff(tmp_path / "metrics.csv")
    (tmp_path / "plain.csv").write_text("step,loss\n1,2\n")
    (tmp_path / "hparams.yaml").write_text("lr: 0.1\n")
    assert not lightning.sniff(tmp_path / "plain.csv")
    run = read_run(tmp_path)
    assert run.series("eval_loss").to_dict() == {9: 1.2} and run.hparam("lr") == 0.1


def test_broken_hparams_and_truncated_metrics(tmp_path):
    version(tmp_path, 0, "epoch,step,train_loss_step\n0,1,2.0\n0,2,1.9\n0,3,1.", "lr: [0.1\nbad: : :\n")
    run = read_dir(tmp_path)
    assert run.series("loss").to_dict() == {1: 2.0, 2: 1.9}
    files = {n.file for n in run.notes}
    assert "lightning_logs/version_0/hparams.yaml" in files and "lightning_logs/version_0/metrics.csv" in files
