"""HF Trainer reader: real trainer_state.json files, Trainer-made fixtures (NaN filtered/unfiltered, checkpoints),
merging of checkpoint copies, resumes, blind spots, and broken input."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from analyzer.errors import InputError
from analyzer.ingest import hf_trainer, read_run
from analyzer.run import build_run

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"


def read_dir(root: Path):
    files = sorted(p for p in root.rglob("*") if p.is_file() and hf_trainer.sniff(p))
    return build_run(root, [hf_trainer.read(files, root)])


def fixture(name: str) -> Path:
    path = FRAMEWORKS / name
    if not (path / "trainer_state.json").is_file():
        pytest.fail(f"framework fixture missing (regenerate: tests/fixtures/frameworks/generate.py): {path}")
    return path


def cited_line(root: Path, file: str, line: int) -> str:
    return (root / file).read_text().splitlines()[line - 1].strip()


def state(log_history: list, **top) -> str:
    return json.dumps({"global_step": max((e.get("step", 0) for e in log_history), default=0),
                       "log_history": log_history, **top}, indent=2, sort_keys=True)


# --- real trainer states -------------------------------------------------------------------------------------------

def test_lrqa_chance_plateau(real_runs):
    root = real_runs / "hf_lrqa_chance_plateau"
    run = read_dir(root)
    loss = run.series("loss")
    assert loss.index[0] == 50 and loss.index[-1] == 3100 and len(loss) == 62
    assert loss.min() == 1.3834 and loss.max() == 1.4173
    assert abs(run.series("eval_loss")[450] - math.log(4)) < 1e-6
    assert run.has("eval_accuracy")
    # the final summary entry is a run fact, not a loss at step 3140
    assert 3140 not in loss.index and run.hparam("train_loss") == 1.3949827522229237
    assert run.hparam("max_steps") == 3140 and run.hparam("epochs") == 20


def test_whisper_eval_losses_and_first_loss(real_runs):
    run = read_dir(real_runs / "hf_whisper_overfit")
    assert run.series("eval_loss").round(4).to_dict() == {1000: 0.3210, 2000: 0.3585, 3000: 0.3937,
                                                          4000: 0.4123, 5000: 0.4200}
    assert run.series("loss")[25] == 0.3048 and run.series("lr")[25] == 4.6000000000000004e-07
    assert (run.series("loss").loc[2925:] <= 0.0003).all()


def test_star_grad_spikes_cited_at_their_own_line(real_runs):
    root = real_runs / "hf_star_benign_gradspikes"
    run = read_dir(root)
    grad = run.series("grad_norm")
    assert len(grad) == 2000 and grad[22360] == 82.40977369003497
    assert list(grad[grad > 25].index) == [4700, 5560, 10600, 22360, 33900]
    file, line = run.point("grad_norm", 22360)
    assert cited_line(root, file, line) == '"grad_norm": 82.40977369003497,'
    assert not run.has("remaining_time") and not run.notes  # a text field is not a metric, nor a problem


def test_mistral_checkpoint_state(real_runs):
    root = real_runs / "hf_mistral_healthy"
    run = read_dir(root)
    assert run.sources == ("checkpoint-8500/trainer_state.json",)
    assert len(run.series("loss")) == 850 and run.last_step == 8500
    assert run.hparam("max_steps") == 8660 and run.hparam("logging_steps") == 10 and run.hparam("batch_size") == 1
    spots = {a for b in run.blind_spots for a in b.affects}
    assert {"nonfinite-onset", "loss-spike", "grad-explosion"} <= spots


def test_grpo_zero_loss(real_runs):
    run = read_dir(real_runs / "hf_grpo_zero_loss_by_design")
    loss, grad = run.series("loss"), run.series("grad_norm")
    assert len(loss) == 1000 and loss.min() == -0.0011 and loss.max() == 0.0006
    assert int((grad == 0).sum()) == 164
    assert run.has("reward") and run.hparam("max_steps") == 14973


def test_tinyllama_eval_and_logging_interval(real_runs):
    run = read_dir(real_runs / "hf_tinyllama_healthy")
    evals = run.series("eval_loss")
    assert len(evals) == 14 and evals[200] == 1.622266411781311 and (np.diff(evals.to_numpy()) < 0).all()
    grad = run.series("grad_norm")
    assert round(grad.min(), 2) == 0.93 and round(grad.max(), 2) == 2.73
    assert any("15-step logging window" in b.message for b in run.blind_spots)


# --- Trainer-made fixtures -----------------------------------------------------------------------------------------

def test_filtered_nan_run_merges_checkpoints_without_restarts():
    root = fixture("hf_trainer_nan")
    run = read_dir(root)
    loss, grad = run.series("loss"), run.series("grad_norm")
    assert list(loss.index) == list(range(5, 65, 5))
    assert not np.isnan(loss).any() and (loss.loc[40:] == 0.0).all()  # the filter's zeros
    assert np.isnan(grad.loc[35:]).all() and np.isfinite(grad.loc[:30]).all()
    assert math.isnan(run.series("eval_loss")[40]) and run.series("eval_loss")[20] == 3.5960824489593506
    assert not run.events_of("restart")
    assert any(b.affects == ("nonfinite-onset",) and "logging_nan_inf_filter" in b.message for b in run.blind_spots)
    file, line = run.point("loss", 35)
    assert cited_line(root, file, line) == '"loss": 3.1258827209472657,'


def test_unfiltered_nan_run_has_nan_losses_and_no_filter_blind_spot():
    run = read_dir(fixture("hf_trainer_nan_unfiltered"))
    loss = run.series("loss")
    assert np.isnan(loss.loc[35:]).all() and loss[30] == 3.5197826385498048
    assert not any("logging_nan_inf_filter" in b.message for b in run.blind_spots)


def test_healthy_run_hparams_from_state_and_model_config():
    root = fixture("hf_trainer_healthy")
    run = read_run(root, scan_checkpoints=False)
    assert "hf-trainer" in run.formats
    assert run.hparam("vocab_size") == 64 and run.hparam("batch_size") == 8 and run.hparam("max_steps") == 60
    assert run.hparams["max_steps"].file == "trainer_state.json"
    assert any("training_args.bin is a pickle" in b.message for b in run.blind_spots)


# --- merging and resumes ---------------------------------------------------------------------------------------------

def entries(steps, loss):
    return [{"epoch": s / 100, "loss": v, "learning_rate": 1e-4, "step": s} for s, v in zip(steps, loss)]


def test_newest_state_wins_and_a_resume_is_a_restart(tmp_path):
    first = entries([10, 20, 30, 40], [4.0, 3.5, 3.0, 2.9])
    (tmp_path / "checkpoint-40").mkdir()
    (tmp_path / "checkpoint-40" / "trainer_state.json").write_text(state(first))
    # resumed from checkpoint-20 with a new seed: steps 30-50 are written again
    resumed = first[:2] + entries([30, 40, 50], [3.1, 2.8, 2.6])
    (tmp_path / "trainer_state.json").write_text(state(resumed))
    run = read_dir(tmp_path)
    assert run.series("loss").to_dict() == {10: 4.0, 20: 3.5, 30: 3.1, 40: 2.8, 50: 2.6}
    (restart,) = {(e.step, e.file) for e in run.events_of("restart")}
    assert restart == (30, "trainer_state.json")
    assert len(run.scalars[run.scalars["metric"] == "loss"]) == 7  # both segments stay available


def test_broken_copy_in_a_checkpoint_is_a_note(tmp_path):
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"log_history": [')
    (tmp_path / "trainer_state.json").write_text(state(entries([10, 20], [2.0, 1.0])))
    run = read_dir(tmp_path)
    assert run.series("loss").to_dict() == {10: 2.0, 20: 1.0}
    assert any(n.file == "checkpoint-10/trainer_state.json" for n in run.notes)


# --- bad input -------------------------------------------------------------------------------------------------------

def test_invalid_json_names_file_and_line(tmp_path):
    (tmp_path / "trainer_state.json").write_text('{\n  "log_history": [\n    {"loss": 1.0, "step": }\n  ]\n}')
    with pytest.raises(InputError) as err:
        hf_trainer.read([tmp_path / "trainer_state.json"], tmp_path)
    assert err.value.path == "trainer_state.json" and err.value.line == 3


def test_empty_and_non_object_states_are_input_errors(tmp_path):
    path = tmp_path / "trainer_state.json"
    for text in ("", "[1, 2]", "\x00\x01binary"):
        path.write_text(text)
        with pytest.raises(InputError):
            hf_trainer.read([path], tmp_path)


def test_odd_entries_are_tolerated(tmp_path):
    log = [{"loss": 2.0, "step": 1}, "junk", {"loss": "n/a", "step": 2}, {"loss": 1.5, "step": 3},
           {"note": "no step"}, {"loss": Infinity, "step": 4, "naïve_métrique": 1.0}]
    (tmp_path / "trainer_state.json").write_text(state_text(log))
    run = read_dir(tmp_path)
    loss = run.series("loss")
    assert loss.to_dict() == {1: 2.0, 3: 1.5, 4: math.inf}
    assert run.series("naïve_métrique")[4] == 1.0
    messages = " ".join(n.message for n in run.notes)
    assert "without a step" in messages and "non-numeric" in messages


Infinity = float("inf")


def state_text(log: list) -> str:
    return json.dumps({"log_history": log}, indent=2)


def test_training_args_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "training_args.bin").write_bytes(pickle.dumps(Exploit()))
    (tmp_path / "trainer_state.json").write_text(state(entries([1, 2], [2.0, 1.0])))
    piece = hf_trainer.read([tmp_path / "trainer_state.json"], tmp_path)
    assert not marker.exists()
    assert any("training_args.json" in b.message for b in piece.blind_spots)
    (tmp_path / "training_args.json").write_text('{"learning_rate": 0.1}')  # the JSON form is read instead
    again = hf_trainer.read([tmp_path / "trainer_state.json"], tmp_path)
    assert not any("training_args.bin" in b.message for b in again.blind_spots)


def test_real_state_without_arguments_says_the_effective_batch_is_unknown(real_runs):
    run = read_dir(real_runs / "hf_grpo_zero_loss_by_design")
    (spot,) = [b for b in run.blind_spots if "per-device batch size only" in b.message]
    assert "small-effective-batch" in spot.affects and run.hparam("batch_size") == 16


def test_whisper_style_last_checkpoint_copy_and_final_state(real_runs, tmp_path):
    # the repository's `last-checkpoint/` holds the step-5000 state without the final summary entry
    final = json.loads((real_runs / "hf_whisper_overfit" / "trainer_state.json").read_text())
    copy = dict(final, log_history=final["log_history"][:-1])
    (tmp_path / "last-checkpoint").mkdir()
    (tmp_path / "last-checkpoint" / "trainer_state.json").write_text(json.dumps(copy, indent=2))
    (tmp_path / "trainer_state.json").write_text(json.dumps(final, indent=2))
    run = read_dir(tmp_path)
    assert len(run.series("loss")) == 200 and not run.events_of("restart")
    assert run.hparam("train_loss") == 0.01890342615880072 and run.hparams["train_loss"].file == "trainer_state.json"
