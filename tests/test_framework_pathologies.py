"""Diagnoses of real framework runs with one induced pathology each (tests/fixtures/pathologies), and their controls."""

from __future__ import annotations

import json
import math
from functools import lru_cache

import pytest
from click.testing import CliRunner

from analyzer.cli import diagnose_command
from tests.conftest import FIXTURES

PATHOLOGIES = FIXTURES / "pathologies"
TRUTH = json.loads((PATHOLOGIES / "truth.json").read_text())
CASES = sorted(TRUTH)
HEALTHY = [name for name in CASES if name.endswith("_healthy")]
ALARMS = ("warning", "critical")
MAX_CASE_BYTES = 300 * 1024
HF_LOG_INTERVAL = 5  # logging_steps: an onset read from 5-step means is good to two intervals


@lru_cache(maxsize=None)
def diagnosis(name: str) -> dict:
    """`diagnose --json` on one fixture, as a user runs it (exit 0 or 1 by severity, never 2), once per process."""
    result = CliRunner().invoke(diagnose_command, ["--json", str(PATHOLOGIES / name)])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def finding(name: str, detector: str) -> dict:
    found = [f for f in diagnosis(name)["findings"] if f["name"] == detector]
    assert len(found) == 1, [(f["name"], f["severity"]) for f in diagnosis(name)["findings"]]
    return found[0]


def alarms(name: str) -> list[tuple[str, str]]:
    return [(f["name"], f["severity"]) for f in diagnosis(name)["findings"] if f["severity"] in ALARMS]


def lr_recommendation(f: dict) -> dict:
    (rec,) = [r for r in f["recommendations"] if r["hparam"] == "lr"]
    return rec


# --- the fixtures themselves -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_each_fixture_is_small_and_documented(name):
    folder = PATHOLOGIES / name
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < MAX_CASE_BYTES
    readme = (folder / "README.md").read_text()
    assert "Induced cause:" in readme and f"generate.py {name}" in readme and "Versions: torch 2.13.0" in readme


@pytest.mark.parametrize("name, formats", [("hf_healthy", {"hf-trainer", "tensorboard"}),
                                           ("lightning_healthy", {"lightning"}),
                                           ("keras_healthy", {"table"})])
def test_the_frameworks_own_files_are_what_is_read(name, formats):
    assert formats <= set(diagnosis(name)["run"]["formats"])
    assert diagnosis(name)["run"]["last_step"] == TRUTH[name]["last_step"]


# --- healthy controls: no alarm --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_run_raises_no_warning_or_critical(name):
    assert alarms(name) == []


# --- HF Trainer ------------------------------------------------------------------------------------------------------

def test_hf_lr_too_high_is_diagnosed_from_the_start():
    f = finding("hf_lr_too_high", "lr-too-high")
    assert (f["severity"], f["confidence"]) == ("warning", "medium")
    # the trouble starts at the first logged points: the loss is >10% above its first value from step 10 on
    assert TRUTH["hf_lr_too_high"]["first_rise_step"] == 10
    assert f["first_step"] <= TRUTH["hf_lr_too_high"]["first_rise_step"]
    assert f["metrics"]["chance_level"] == pytest.approx(math.log(128), rel=1e-4)
    assert f["metrics"]["loss_level"] > 1.2 * math.log(128)  # above chance after warmup: updates too big
    rec = lr_recommendation(f)
    # the configured learning_rate (HF's TensorBoard args text), not the logged peak 0.999459 of the cosine schedule
    assert rec["current"] == pytest.approx(1.0)
    assert TRUTH["hf_lr_too_high"]["peak_lr"] == pytest.approx(1.0, rel=1e-3)
    assert rec["suggested"] == pytest.approx(0.5)  # x0.5, down


def test_hf_lr_too_high_is_not_blamed_on_the_init():
    # the first logged loss 4.72 is 97% of ln 128: the climb to 5.7 by step 20 comes from the lr, not init_std
    assert TRUTH["hf_lr_too_high"]["first_loss"] < math.log(128)
    assert "initial-loss-mismatch" not in {name for name, _ in alarms("hf_lr_too_high")}


def test_hf_lr_too_high_raises_no_other_alarm():
    assert alarms("hf_lr_too_high") == [("lr-too-high", "warning")]


def test_hf_lr_too_high_leads_with_the_lr_not_the_batch():
    assert diagnosis("hf_lr_too_high")["root_causes"] == ["lr-too-high"]


def test_hf_lr_too_low_is_diagnosed_as_the_root_cause():
    f = finding("hf_lr_too_low", "lr-too-low")
    assert (f["severity"], f["confidence"]) == ("warning", "medium")
    # the stall is judged from where warmup ends (the logged lr peaks at step 35) and the loss never moves
    # (4.721 -> 4.712 over 300 steps)
    assert abs(f["first_step"] - TRUTH["hf_lr_too_low"]["peak_lr_step"]) <= 2 * HF_LOG_INTERVAL
    assert TRUTH["hf_lr_too_low"]["first_loss"] - TRUTH["hf_lr_too_low"]["last_loss"] < 0.02
    rec = lr_recommendation(f)
    assert rec["current"] == pytest.approx(1e-6)  # the configured learning_rate
    assert TRUTH["hf_lr_too_low"]["peak_lr"] == pytest.approx(1e-6, rel=1e-3)
    assert rec["suggested"] == pytest.approx(1e-5)  # up, x10: the most taken at once
    assert diagnosis("hf_lr_too_low")["root_causes"] == ["lr-too-low"]


def test_hf_lr_too_low_plateau_is_explained_by_the_lr():
    plateau = finding("hf_lr_too_low", "loss-plateau")
    assert plateau["severity"] == "warning"
    assert plateau["caused_by"] == ["lr-too-low"]
    assert abs(plateau["first_step"] - TRUTH["hf_lr_too_low"]["peak_lr_step"]) <= 2 * HF_LOG_INTERVAL
    assert plateau["last_step"] == TRUTH["hf_lr_too_low"]["last_step"]


def test_hf_lr_too_low_is_not_called_too_high():
    assert {name for name, _ in alarms("hf_lr_too_low")} == {"lr-too-low", "loss-plateau"}


def test_hf_tensorboard_folder_alone_still_shows_the_lr_too_high():
    # a user who kept only runs/: no config.json (no chance level), the rise from the start still tells
    f = finding("hf_lr_too_high/runs", "lr-too-high")
    assert f["severity"] == "warning" and f["first_step"] <= TRUTH["hf_lr_too_high"]["first_rise_step"]
    assert lr_recommendation(f)["suggested"] == pytest.approx(0.5)
    assert alarms("hf_healthy/runs") == []


# --- Lightning -------------------------------------------------------------------------------------------------------

def test_lightning_nan_onset_is_the_first_nonfinite_step():
    f = finding("lightning_nan", "nonfinite-onset")
    assert (f["severity"], f["confidence"]) == ("critical", "high")
    assert f["first_step"] == TRUTH["lightning_nan"]["first_nonfinite_step"] == 50  # logged every step: exact
    recs = {r["hparam"]: r for r in f["recommendations"]}
    assert recs["lr"]["current"] == pytest.approx(TRUTH["lightning_nan"]["peak_lr"]) == pytest.approx(0.3)
    assert recs["lr"]["suggested"] < recs["lr"]["current"]
    assert recs["max_grad_norm"]["current"] is None and recs["max_grad_norm"]["suggested"] == pytest.approx(1.0)


def test_lightning_nan_checkpoint_is_flagged():
    f = finding("lightning_nan", "checkpoint-nonfinite")
    assert f["severity"] == "critical"
    assert f["first_step"] > TRUTH["lightning_nan"]["first_nonfinite_step"]


def test_lightning_nan_divergence_starts_before_the_nan():
    # the loss falls to its best at step 4 under the still small warmup lr, then climbs until it overflows at 50
    f = finding("lightning_nan", "loss-divergence")
    assert f["severity"] == "critical"
    assert f["first_step"] < TRUTH["lightning_nan"]["first_nonfinite_step"]
    assert f["last_step"] == TRUTH["lightning_nan"]["last_finite_step"]
    rec = lr_recommendation(f)
    assert rec["suggested"] == pytest.approx(rec["current"] / 2)


def test_lightning_nan_spike_says_the_loss_went_non_finite_and_keeps_its_factor_short():
    # the loss runs away 535 -> 3.2e4 -> 1.5e10 -> 4.03e27, then Inf at step 50; the log goes on (NaN) to step 299
    f = finding("lightning_nan", "loss-spike")
    texts = [f["message"]] + [r["rationale"] for r in f["recommendations"]]
    assert f"went non-finite at step {TRUTH['lightning_nan']['first_nonfinite_step']}" in f["message"]
    assert "last logged step" not in f["message"]
    assert all("6.09e25x" in t for t in texts[:2]) and not any("0000000" in t for t in texts)


def test_lightning_nan_chain_leads_from_the_divergence_to_the_nan_checkpoint():
    d = diagnosis("lightning_nan")
    assert d["root_causes"] == ["loss-divergence"]  # not the batch, whose loss looked noisy because it diverged
    assert finding("lightning_nan", "loss-spike")["caused_by"] == ["loss-divergence"]
    assert finding("lightning_nan", "nonfinite-onset")["caused_by"] == ["loss-divergence"]
    assert finding("lightning_nan", "checkpoint-nonfinite")["caused_by"] == ["nonfinite-onset"]


# --- Keras -----------------------------------------------------------------------------------------------------------

def test_keras_lr_too_high_is_diagnosed_in_a_per_epoch_log():
    f = finding("keras_lr_too_high", "lr-too-high")
    assert (f["severity"], f["confidence"]) == ("warning", "medium")
    # epoch 0 loss 0.85, epoch 1 already 2.16 (chance ln 8 = 2.08) as the warmup raises the lr
    assert f["first_step"] <= TRUTH["keras_lr_too_high"]["first_rise_step"] == 1
    assert f["metrics"]["level_after_warmup"] > 2.0 > 1.5 > f["metrics"]["first_losses"]
    rec = lr_recommendation(f)
    assert rec["current"] == pytest.approx(TRUTH["keras_lr_too_high"]["peak_lr"]) == pytest.approx(0.3)
    assert rec["suggested"] == pytest.approx(0.15)


def test_keras_lr_too_high_raises_no_other_alarm():
    assert alarms("keras_lr_too_high") == [("lr-too-high", "warning")]


# --- HF Trainer writes TensorBoard too: its end-of-run summary is not a step's metrics ---------------------------

def test_hf_tensorboard_end_of_run_summary_is_not_the_last_loss():
    from analyzer.ingest import read_run

    loss = read_run(PATHOLOGIES / "hf_healthy").series("loss")
    assert loss.index[-1] == TRUTH["hf_healthy"]["last_step"]
    assert loss.iloc[-1] == pytest.approx(TRUTH["hf_healthy"]["last_loss"], rel=1e-4)


def test_hf_tensorboard_end_of_run_summary_is_kept_as_run_facts():
    from analyzer.ingest import read_run

    run = read_run(PATHOLOGIES / "hf_healthy" / "runs")
    assert "train_runtime" in run.hparams and run.hparam("train_loss") > TRUTH["hf_healthy"]["last_loss"]


def test_hf_tensorboard_training_arguments_are_hparams():
    # a user who kept only runs/: the TrainingArguments HF logs as JSON text give the settings the advice needs
    from analyzer.ingest import read_run

    run = read_run(PATHOLOGIES / "hf_lr_too_high" / "runs")
    assert (run.hparam("lr"), run.hparam("max_grad_norm"), run.hparam("grad_accum")) == (1.0, 1.0, 1)
    assert "tfevents" in run.hparams["lr"].file
    assert run.hparams["lr"].key == "args/text_summary[record 2].learning_rate"  # the tag and its record


def test_hf_tensorboard_model_config_gives_the_vocabulary():
    # HF logs the model config as JSON text too: the runs/ folder alone knows the vocabulary, so the chance level
    from analyzer.ingest import read_run

    run = read_run(PATHOLOGIES / "hf_lr_too_high" / "runs")
    assert run.hparam("vocab_size") == 128
    assert run.hparams["vocab_size"].key == "model_config/text_summary[record 3].vocab_size"


def test_hf_tensorboard_end_of_run_summary_is_noted():
    from analyzer.ingest import read_run

    notes = [n for n in read_run(PATHOLOGIES / "hf_healthy" / "runs").notes if "end-of-run summary" in n.message]
    assert len(notes) == 1 and notes[0].line == 274 and notes[0].count == 5  # records 274-278 at step 300


# --- the same point in trainer_state.json and the TensorBoard file: cited from the text ----------------------------

def hf_run_killed_after_checkpoint(tmp_path, checkpoint: int):
    """hf_healthy as a run killed after `checkpoint`: trainer_state.json only in checkpoint-N/ (log_history up to
    N, as Trainer saves it), while the TensorBoard file holds every logged step."""
    import shutil

    run_dir = tmp_path / "hf_killed"
    shutil.copytree(PATHOLOGIES / "hf_healthy", run_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    state = json.loads((run_dir / "trainer_state.json").read_text())
    state["log_history"] = [e for e in state["log_history"] if e["step"] <= checkpoint and "train_runtime" not in e]
    state["global_step"] = checkpoint
    (run_dir / "trainer_state.json").unlink()
    (run_dir / f"checkpoint-{checkpoint}").mkdir()
    (run_dir / f"checkpoint-{checkpoint}" / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return run_dir


def test_hf_points_in_both_files_are_cited_from_trainer_state(tmp_path):
    from analyzer.ingest import read_run

    run = read_run(hf_run_killed_after_checkpoint(tmp_path, 200))
    file, line = run.point("loss", 100)
    assert file == "checkpoint-200/trainer_state.json"
    text_line = (tmp_path / "hf_killed" / file).read_text().splitlines()[line - 1]
    assert text_line.strip().startswith('"loss"')


def test_hf_tensorboard_points_past_the_checkpoint_are_read_from_it(tmp_path):
    from analyzer.ingest import read_run

    run = read_run(hf_run_killed_after_checkpoint(tmp_path, 200))
    loss = run.series("loss")
    assert len(loss) == TRUTH["hf_healthy"]["points"] and loss.iloc[-1] == pytest.approx(
        TRUTH["hf_healthy"]["last_loss"], rel=1e-4)
    assert "tfevents" in run.point("loss", 300)[0]


def test_hf_tensorboard_file_running_past_the_checkpoint_is_no_restart(tmp_path):
    from analyzer.ingest import read_run

    assert read_run(hf_run_killed_after_checkpoint(tmp_path, 200)).events_of("restart") == ()


def test_a_text_log_repeating_the_tensorboard_points_is_cited_whatever_the_readers_order(tmp_path):
    # a CSV (read after TensorBoard files) holding the same losses: the point is cited at its CSV line
    import shutil

    from analyzer.ingest import read_run

    run_dir = tmp_path / "tb_and_csv"
    shutil.copytree(PATHOLOGIES / "hf_healthy" / "runs", run_dir)
    history = json.loads((PATHOLOGIES / "hf_healthy" / "trainer_state.json").read_text())["log_history"]
    rows = [(e["step"], e["loss"]) for e in history if "loss" in e]
    (run_dir / "metrics.csv").write_text("step,loss\n" + "".join(f"{s},{v}\n" for s, v in rows))
    run = read_run(run_dir)
    assert run.point("loss", 100) == ("metrics.csv", 1 + [s for s, _ in rows].index(100) + 1)
    assert not run.events_of("restart")
