"""Plain-text logs: every real text log in ../shared/real_runs, the seed excerpts, crafted shapes and broken input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.errors import InputError
from analyzer.ingest import textlog
from analyzer.run import build_run
from tests.conftest import FIXTURES, SAMPLE_RUNS, SEEDS

TEXT = FIXTURES / "text"


def points(result, name: str) -> dict[int, float]:
    frame = result.frame
    rows = frame[frame["name"] == name]
    return dict(zip(rows["step"].tolist(), rows["value"].tolist()))


def lines_of(result, name: str) -> dict[int, int]:
    frame = result.frame
    rows = frame[frame["name"] == name]
    return dict(zip(rows["step"].tolist(), rows["line"].tolist()))


def events(result, kind: str):
    return [e for e in result.events if e.kind == kind]


def real(real_runs: Path, case: str, name: str):
    path = real_runs / case / name
    return textlog.read_file(path, f"{case}/{name}")


def text(body: str | bytes, **kw):
    return textlog.read_text(body, **kw)


# --- real logs: BigScience chronicles (Megatron-DeepSpeed lines inside markdown) --------------------------------------

def test_bloom176b_spike_loss_and_grad_norm(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    loss, grad = points(result, "loss"), points(result, "grad_norm")
    assert loss[31214] == 2.198845 and loss[31219] == 5.098124 and loss[31250] == 2.215699
    assert grad[31214] == 0.242 and grad[31219] == 960.351 and grad[31250] == 0.267
    assert lines_of(result, "loss")[31219] == 207  # 1-based physical line of the iteration line


def test_bloom176b_every_iteration_line_once(real_runs):
    steps = sorted(points(real(real_runs, "bloom176b_spike", "chronicles.md"), "loss"))
    assert steps == [12695, *range(31214, 31223), 31250, 31251, *range(42780, 42785), 45000]


def test_bloom176b_wrapped_lines_read_whole(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    tflops = points(result, "tflops")
    assert [tflops[s] for s in range(42780, 42785)] == [149.10, 149.09, 147.58, 142.32, 141.09]
    assert points(result, "lr" if "lr" in set(result.frame["name"]) else "learning_rate")[42780] == 4.475e-05
    assert points(result, "nan_iterations")[42784] == 0  # `number of nan` + `iterations:` joined across the wrap
    assert lines_of(result, "loss")[42780] == 257


def test_bloom176b_validation_line(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    assert points(result, "eval_loss") == {45000: 2.327091}
    assert points(result, "eval_ppl") == {45000: 10.24808}


def test_bloom176b_steps_per_second_from_elapsed_time(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    assert points(result, "step_time_s")[31219] == 106.36
    assert points(result, "steps_per_s")[31219] == pytest.approx(1 / 106.36)


def test_bloom104b_wide_divergence_overlapping_restarts(real_runs):
    result = real(real_runs, "bloom104b_wide_divergence", "chronicles.md")
    loss = result.frame[result.frame["name"] == "loss"]
    assert loss["step"].diff().lt(0).any()  # experiments restart and overlap: steps go backwards in file order
    run = build_run(real_runs / "bloom104b_wide_divergence", [_piece(result)])
    assert run.events_of("restart")
    assert max(points(result, "grad_norm").values()) == pytest.approx(3.27e6, rel=0.01)


def test_bloom104b_wide_divergence_loss_jumps(real_runs):
    result = real(real_runs, "bloom104b_wide_divergence", "chronicles.md")
    frame = result.frame[result.frame["name"] == "loss"]
    pairs = list(zip(frame["step"], frame["value"].round(2)))
    for before, after in (((7000, 6.44), (7010, 11.42)), ((11447, 3.11), (11448, 7.71)), ((8740, 3.68), (8741, 7.27))):
        assert before in pairs and after in pairs


def test_bloom104b_line_without_lm_loss_is_no_nan(real_runs):
    result = real(real_runs, "bloom104b_wide_divergence", "chronicles.md")
    assert 9027 not in points(result, "loss")  # no lm loss, but no nan iterations either: nothing to infer
    assert points(result, "loss_scale")[9027] == 8192.0
    assert not events(result, "nan")


def test_bloom104b_overflow_six_events(real_runs):
    result = real(real_runs, "bloom104b_overflow", "chronicles.md")
    overflows = events(result, "overflow")
    assert len(overflows) == 6
    assert all(17061 < e.step <= 17068 for e in overflows)
    assert overflows[0].data == {"scale_from": 1048576.0, "scale_to": 1048576.0}
    assert overflows[-1].data == {"scale_from": 65536.0, "scale_to": 32768.0}
    assert overflows[0].line == 448 and "OVERFLOW! Rank 0 Skipping step" in overflows[0].text


def test_bloom104b_overflow_loss(real_runs):
    loss = points(real(real_runs, "bloom104b_overflow", "chronicles.md"), "loss")
    assert loss[17061] == 2.667121 and loss[17062] == 4.374269 and loss[17068] == 4.137348
    assert loss[13251] == 2.924229  # wrapped over three lines, cut mid-word


def test_bloom13b_loss_scale_falls(real_runs):
    result = real(real_runs, "bloom13b_spike", "chronicles.md")
    scale, loss = points(result, "loss_scale"), points(result, "loss")
    assert [scale[s] for s in (29040, 29050, 29060)] == [65536.0, 8192.0, 4096.0]
    assert [loss[s] for s in (29040, 29050, 29060, 29090)] == [2.768131, 7.343709, 8.715872, 6.849044]


def test_bloom13b_grad_norm_zero_lines_are_not_measurements(real_runs):
    # `grad norm: 0.000` on all 9 lines of the spike excerpt (loss 2.77 -> 8.72, loss scale halving): the engine
    # computed no norm; only the later line with a real norm is read
    result = real(real_runs, "bloom13b_spike", "chronicles.md")
    assert points(result, "grad_norm") == {43680: 17224.723}
    [note] = [n for n in result.notes if "grad norm: 0.000" in n.message]
    assert (note.line, note.count) == (162, 9)


MEGATRON_LINE = (" iteration {step:8d}/  1000 | consumed samples:  64000 | elapsed time per iteration (ms): 900.0 | "
                 "learning rate: 1.000E-04 | global batch size:   128 | lm loss: {loss:E} | loss scale: 1024.0 | "
                 "grad norm: {norm:.3f} | number of skipped iterations:   0 | number of nan iterations:   0 |\n")


def test_megatron_zero_grad_norms_while_the_loss_moves_are_dropped():
    body = "".join(MEGATRON_LINE.format(step=s, loss=3.0 - s / 1000, norm=0.0) for s in (10, 20, 30))
    result = text(body)
    assert points(result, "grad_norm") == {} and len(points(result, "loss")) == 3


@pytest.mark.parametrize("norms, losses, zeros_read", [
    ((0.0, 1.5, 0.0), (3.0, 2.9, 2.8), 0),  # zeros on lines whose losses differ: placeholders beside real norms
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 3),  # a loss that does not move either (RL-style zero loss): real zeros
    ((0.0, 1.5, 1.4), (3.0, 2.9, 2.8), 1),  # a single zero: a norm under the 3-decimal print resolution, kept
])
def test_megatron_zero_grad_norms_kept_only_where_they_can_be_real(norms, losses, zeros_read):
    body = "".join(MEGATRON_LINE.format(step=10 * (i + 1), loss=loss, norm=norm)
                   for i, (norm, loss) in enumerate(zip(norms, losses)))
    grad = points(text(body), "grad_norm")
    assert sum(v == 0.0 for v in grad.values()) == zeros_read and len(grad) == zeros_read + norms.count(1.5) + \
        norms.count(1.4)


def test_bloom13b_tracebacks_are_error_events(real_runs):
    errors = events(real(real_runs, "bloom13b_spike", "chronicles.md"), "error")
    assert any(e.data.get("oom") for e in errors)
    assert any(e.text.startswith("Traceback") for e in errors)


# --- real logs: fairseq, DeepSpeed, build-nanogpt, OPT ----------------------------------------------------------------

def test_fairseq_two_runs_loss_and_gnorm(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    frame = result.frame
    loss = frame[frame["name"] == "loss"]
    first, second = loss.iloc[:10], loss.iloc[10:]
    assert first["step"].tolist() == list(range(1, 11)) == second["step"].tolist()
    assert first["value"].tolist()[1:3] == [16.446, 25.22]
    assert second["value"].tolist()[1:3] == [16.352, 23.682]
    gnorm = frame[frame["name"] == "gnorm"]["value"].tolist()
    assert gnorm[2] == 131.281 and gnorm[12] == 119.682


def test_fairseq_second_run_is_a_restart(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    run = build_run(real_runs / "fairseq_fsdp_overflow", [_piece(result)])
    restart = run.events_of("restart")
    assert restart and restart[0].line == 157
    assert run.series("loss")[3] == 23.682  # the newer segment wins
    assert run.series("eval_loss")[10] == 16.624


def test_fairseq_overflow_notes(real_runs):
    overflows = events(real(real_runs, "fairseq_fsdp_overflow", "README.md"), "overflow")
    assert [e.step for e in overflows] == [3, 3, 3, 3]
    assert [(e.data["scale_from"], e.data["scale_to"]) for e in overflows] == [(4.0, 2.0), (2.0, 1.0)] * 2


def test_fairseq_loss_base_two(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    assert [(name, value) for name, value, *_ in result.hparams] == [("loss_base", 2)]


def test_fairseq_epoch_summary_not_read_as_a_step(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    assert 19.351 not in points(result, "loss").values()  # `| train |` epoch average, not the loss at update 10


def test_deepspeed_seventeen_overflows_before_step_20(real_runs):
    overflows = events(real(real_runs, "deepspeed_bert_overflow", "train.log"), "overflow")
    assert len(overflows) == 17 and all(e.step <= 20 for e in overflows)
    assert overflows[0].data["scale_from"] == 2.0**32 and overflows[-1].data["scale_to"] == 32768.0


def test_deepspeed_loss_lines(real_runs):
    result = real(real_runs, "deepspeed_bert_overflow", "train.log")
    loss = points(result, "loss")
    assert loss[10] == 10.8719 and loss[90] == 9.9670
    assert sorted(loss) == list(range(10, 100, 10))
    assert points(result, "skipped")[20] == 17 and points(result, "skipped")[90] == 17


def test_deepspeed_user_warning(real_runs):
    warnings = events(real(real_runs, "deepspeed_bert_overflow", "train.log"), "warning")
    assert any("UserWarning" in e.text for e in warnings)


def test_nanogpt_log_txt(real_runs):
    result = real(real_runs, "nanogpt_no_warmup", "log.txt")
    loss, val = points(result, "loss"), points(result, "eval_loss")
    assert min(loss) == 0 and max(loss) == 19072 and len(loss) == 19073
    assert loss[0] == 10.955010 and loss[19072] == 3.181935
    assert val[0] == 10.9522 and val[19072] == 3.1681
    assert points(result, "eval_hellaswag_acc")[0] == 0.2487


def test_nanogpt_stdout_matches_its_log_txt(real_runs):
    out = real(real_runs, "nanogpt_no_warmup", "nanogpt-nowarmup-1816358.out")
    log = real(real_runs, "nanogpt_no_warmup", "log.txt")
    assert points(out, "eval_loss") == points(log, "eval_loss")  # `validation loss:` takes the next step line's step
    assert points(out, "loss") == points(log, "loss")
    assert points(out, "lr")[0] == 6.0e-4 and points(out, "norm")[0] == 15.3420
    assert points(out, "steps_per_s")[1] == pytest.approx(1000 / 394.95)


def test_nanogpt_generated_samples_give_nothing(real_runs):
    out = real(real_runs, "nanogpt_no_warmup", "nanogpt-nowarmup-1816358.out")
    assert set(out.frame["step"]) <= set(range(19073)) and not out.events


def test_nanogpt_run_dir_reads_each_point_once(real_runs):
    folder = real_runs / "nanogpt_no_warmup"
    paths = sorted(p for p in folder.iterdir() if textlog.sniff(p))
    assert [p.name for p in paths] == ["log.txt", "nanogpt-nowarmup-1816358.out"]  # the .err holds no log line
    run = build_run(folder, [textlog.read(paths, folder)])
    assert not run.events_of("restart")
    assert run.series("loss").index.tolist() == list(range(19073))


def test_nanogpt_baseline(real_runs):
    result = real(real_runs, "nanogpt_baseline", "nanogpt-train-1806877.out")
    loss, val = points(result, "loss"), points(result, "eval_loss")
    assert (min(loss), max(loss)) == (0, 19072) and loss[0] == 10.955010 and loss[19072] == 3.083290
    assert val[19072] == 3.0663 and points(result, "eval_hellaswag_acc")[19072] == 0.3058
    lr = points(result, "lr")
    assert lr[0] < lr[713] < lr[714] == 6.0e-4  # linear warm-up: (step + 1) / 715 of the peak


def test_opt175b_prose_gives_nothing(real_runs):
    for page in sorted((real_runs / "opt175b_chronicles").glob("*.md")):
        result = textlog.read_file(page)
        assert result.frame is None and not result.events


# --- seed 002 ---------------------------------------------------------------------------------------------------------

def test_seed002_write_up_log_lines():
    if not SEEDS.is_dir():
        pytest.skip("seeds not found")
    result = textlog.read_file(SEEDS / "002_99846a03ea38b68e.txt")
    assert points(result, "kd_raw") == {0: 38.0254, 100: 28.6117, 600: 38.3527}
    assert set(points(result, "temperature_squared").values()) == {9.0}
    assert "temperature" not in set(result.frame["name"])
    pairs = set(zip(result.frame["name"], result.frame["value"]))
    assert ("eval_loss", 28.4074) in pairs and ("eval_ppl", 485165195.41) in pairs


def test_seed002_excerpt_mojibake():
    result = textlog.read_file(TEXT / "seed002_excerpt.log")
    assert points(result, "kd_raw") == {0: 38.0254, 100: 28.6117, 600: 38.3527}
    assert points(result, "temperature_squared") == {0: 9.0, 100: 9.0, 600: 9.0}


def test_seed002_eval_and_capped_perplexity_warning():
    result = textlog.read_file(TEXT / "seed002_excerpt.log")
    assert points(result, "eval_loss") == {600: 28.4074} and points(result, "eval_ppl") == {600: 485165195.41}
    (warning,) = events(result, "warning")
    assert warning.data == {"cap": 20.0, "loss": 28.41} and warning.line == 5


def test_seed002_nan_clamp_at_step_436():
    result = textlog.read_file(TEXT / "seed002_step436.log")
    (clamp,) = events(result, "nan_clamp")
    assert clamp.step == 436 and clamp.line == 3
    assert clamp.data == {"metric": "lm_loss", "value": "nan"}
    assert clamp.text == "[Warning] lm_loss produced non-finite value (nan); clamping to zero."


@pytest.mark.parametrize("spelling", ["Temperature²", "Temperature¬≤", "TemperatureÂ²", "temperature ²"])
def test_squared_temperature_spellings(spelling):
    result = text(f"Step 5: KD Raw: 4.2, {spelling}: 9.0\n")
    names = set(result.frame["name"])
    assert "temperature_squared" in names and "temperature" not in names


def test_squared_temperature_in_latin1_bytes():
    result = text(b"Step 5: KD Raw: 4.2, Temperature\xb2: 9.0\n")
    assert points(result, "temperature_squared") == {5: 9.0}
    assert any("Latin-1" in n.message for n in result.notes)


# --- the reference trainer's train.log --------------------------------------------------------------------------------

TRAINER_LOG = """\
scenario kd: kd model, 42,880 parameters, vocab 256 (ln V = 5.5452)
[Eval] step 0 loss: 5.6434, ppl: 148.41
[Warning] Loss 5.64 too high for meaningful perplexity (capped at 5)
step 0 | loss 5.6488 | lm_loss 5.5662 | kd_raw 0.6316 | temperature 3.0000 | lr 3.00e-01 | loss_scale 65536
[fp16] overflow: skipping step, loss scale 65536 -> 32768
step 1 | loss 5.6531 | lm_loss 5.5259 | kd_raw 0.6344 | temperature 2.9996 | lr 3.00e-01 | loss_scale 32768
[Warning] lm_loss produced non-finite value (nan); clamping to zero.
step 2 | loss 2.8 | lm_loss 0.0000 | kd_raw 0.6283 | temperature 2.9992 | lr 3.00e-01 | loss_scale 32768
[Error] step 3: non-finite loss (nan); stopping (nan_policy=stop)
"""


def test_trainer_log_points_and_events():
    result = text(TRAINER_LOG)
    assert points(result, "eval_loss") == {0: 5.6434} and points(result, "kd_raw")[2] == 0.6283
    assert [(e.kind, e.step) for e in result.events] == [
        ("warning", 0), ("overflow", 1), ("nan_clamp", 2), ("nan", 3)]
    assert events(result, "overflow")[0].data == {"scale_from": 65536.0, "scale_to": 32768.0}


def test_trainer_log_beside_metrics_jsonl_gives_events_only(tmp_path):
    (tmp_path / "train.log").write_text(TRAINER_LOG)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 5.6488}) + "\n")
    (tmp_path / "run.json").write_text("{}")
    piece = textlog.read([tmp_path / "train.log"], tmp_path)
    assert not piece.frames
    assert [e.kind for e in piece.events] == ["warning", "overflow", "nan_clamp", "nan"]


def test_sample_run_clamps_match_its_metrics():
    folder = SAMPLE_RUNS / "kd-temperature-blowup"
    if not (folder / "train.log").is_file():
        pytest.fail("sample run missing (bash sample_runs/regenerate.sh)")
    piece = textlog.read([folder / "train.log"], folder)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    clamped = [r["step"] for r in records if r.get("lm_loss") == 0.0]
    assert [e.step for e in piece.events if e.kind == "nan_clamp"] == clamped


# --- crafted shapes ---------------------------------------------------------------------------------------------------

def test_nanogpt_iter_and_eval_lines():
    result = text("step 0: train loss 10.9843, val loss 10.9810\niter 0: loss 10.9712, time 1204.15ms, mfu -100.00%\n"
                  "iter 1: loss 10.2, time 12.5ms, mfu 35.12%\n")
    assert points(result, "loss") == {0: 10.9712, 1: 10.2}  # the iter line is later in the file than the estimate
    assert points(result, "train_loss") == {0: 10.9843} and points(result, "val_loss") == {0: 10.9810}
    assert points(result, "time_ms")[1] == 12.5 and points(result, "steps_per_s")[1] == pytest.approx(80.0)
    assert points(result, "mfu") == {0: -100.0, 1: 35.12}


def test_generic_pipe_and_equals_lines():
    result = text("step 10 | loss 3.2 | lr 1e-4\nEpoch 3 Step 120: loss=2.31, lr=1.0e-04, grad_norm=0.93\n")
    assert points(result, "loss") == {10: 3.2, 120: 2.31}
    assert points(result, "epoch") == {120: 3.0} and points(result, "grad_norm") == {120: 0.93}


def test_nan_and_inf_values_are_points():
    result = text("step 1 | loss nan | grad_norm inf\nstep 2 | loss -inf | grad_norm 1.0\n")
    loss, grad = points(result, "loss"), points(result, "grad_norm")
    assert math.isnan(loss[1]) and loss[2] == -math.inf and grad[1] == math.inf


def test_hf_trainer_dicts_need_a_step():
    result = text("{'loss': 2.31, 'learning_rate': 1e-4, 'epoch': 0.5}\n{'loss': 2.1, 'step': 20}\n")
    assert points(result, "loss") == {20: 2.1}
    assert any("without a step" in n.message and n.count == 1 for n in result.notes)


def test_megatron_nan_iteration_without_loss_is_a_nan_loss():
    line = (" iteration      500/  1000 | consumed samples:  64000 | elapsed time per iteration (ms): 900.0 | "
            "learning rate: 1.000E-04 | global batch size:   128 | loss scale: 1024.0 | "
            "number of skipped iterations:   1 | number of nan iterations:   1 |\n")
    result = text(line)
    assert math.isnan(points(result, "loss")[500])
    assert [(e.kind, e.step, e.data.get("count")) for e in result.events] == [("skipped_step", 500, 1), ("nan", 500, 1)]


def test_megatron_validation_line():
    result = text(" validation loss at iteration 45000 | lm loss value: 2.13E+00 | lm loss PPL: 8.44E+00 |\n")
    assert points(result, "eval_loss") == {45000: 2.13} and points(result, "eval_ppl") == {45000: 8.44}


def test_megatron_wrapped_fixture():
    result = textlog.read_file(TEXT / "megatron_wrapped.log")
    assert points(result, "loss") == {42780: 2.117073, 42781: 2.116946, 42782: 2.110646, 42783: 2.12482,
                                      42784: 2.127643}
    assert lines_of(result, "loss") == {42780: 1, 42781: 4, 42782: 7, 42783: 10, 42784: 13}


@pytest.mark.parametrize("line, scale_from, scale_to", [
    ("[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768", 65536, 32768),
    ("[deepspeed] fp16 dynamic loss scale overflow! Skipping step. Attempted loss scale: 4096, reducing to 2048",
     4096, 2048),
    ("Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 16384.0", None, 16384),
    ("2021 | WARNING | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: "
     "2.0", None, 2),
    ("[fp16] overflow: skipping step, loss scale 65536 -> 32768", 65536, 32768),
])
def test_overflow_variants(line, scale_from, scale_to):
    result = text(f"step 4 | loss 2.0\n{line}\nstep 5 | loss 2.1\n")
    (overflow,) = events(result, "overflow")
    assert overflow.step == 5
    assert overflow.data.get("scale_from") == scale_from and overflow.data["scale_to"] == scale_to
    assert points(result, "loss_scale") == {5: scale_to}


def test_event_after_the_last_step_line_takes_that_step():
    result = text("step 7 | loss 2.0\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory.\n")
    assert [(e.kind, e.step, e.line) for e in result.events] == [("error", 7, 2), ("error", 7, 3)]
    assert result.events[1].data == {"oom": True}


def test_warning_shapes():
    log = ("step 1 | loss 2.0\n"
           "2024-01-01 10:00:00 | WARNING | trainer | something odd\n"
           "/x/module.py:12: UserWarning: deprecated\n"
           "[WARNING] [comm.py:152] NCCL backend\n"
           "print(f'[Warning] not a log line, a line of code')\n"
           "step 2 | loss 1.9\n")
    assert [e.line for e in events(text(log), "warning")] == [2, 3, 4]


def test_prose_numbers_are_not_read():
    prose = ("We lost 7.3h of work at iteration 12 because the loss went to 5.\n"
             "At iteration 21680 switched from https://github.com/bigscience-workshop/Megatron-DeepSpeed/pull/272\n"
             "The loss: 3.2 was fine, lr 1e-4 too.\n")
    result = text(prose)
    assert result.frame is None


def test_markdown_reads_only_code_blocks():
    page = "step 1 | loss 9.0\n\n```\nstep 2 | loss 2.0\n```\nstep 3 | loss 3.0\n"
    assert points(text(page, markdown=True), "loss") == {2: 2.0}
    assert points(text(page), "loss") == {2: 2.0}  # two fences make any file a markdown page


def test_a_misfit_line_in_a_repeated_shape_is_read_on_its_own():
    lines = [f"step {i} | loss 1.{i}5\n" for i in range(10)] + ["step 10 | loss 12.5\n", "step 11 | loss .125\n"]
    loss = points(text("".join(lines)), "loss")
    assert loss[3] == 1.35 and loss[10] == 12.5 and loss[11] == 0.125 and len(loss) == 12


def test_progress_bar_redrawn_before_a_log_line():
    bar = "".join(f"\r{i:3d}%|{'#' * (i // 10):10s}| {i}/100 [00:0{i % 10}<00:10, 5.{i}it/s]" for i in range(100))
    result = text(f"step 1 | loss 3.0\n{bar}\rstep 2 | loss 2.5\n{bar}\r[Warning] slow data loader\nstep 3 | loss 2\n")
    assert points(result, "loss") == {1: 3.0, 2: 2.5, 3: 2.0}
    assert [(e.step, e.text) for e in result.events] == [(3, "[Warning] slow data loader")]


def test_chunked_read_equals_whole_read(monkeypatch, tmp_path):
    body = "".join(f"step {i} | loss {5 - i / 1000:.4f} | lr 1e-4\n" for i in range(3000))
    body += open(TEXT / "megatron_wrapped.log").read() + "[fp16] overflow: skipping step, loss scale 8 -> 4\n"
    whole = text(body)
    monkeypatch.setattr(textlog, "CHUNK_BYTES", 4096)
    (tmp_path / "train.log").write_text(body)
    for chunked in (text(body), textlog.read_file(tmp_path / "train.log")):  # the file is memory-mapped
        assert whole.frame.astype({"name": str}).equals(chunked.frame.astype({"name": str}))
        assert whole.events == chunked.events


# --- bad input --------------------------------------------------------------------------------------------------------

def test_truncated_last_line_keeps_its_complete_values():
    result = text("step 1 | loss 3.0 | lr 1e-4\nstep 2 | loss 2.9 | lr 2.5E-0")
    assert points(result, "loss") == {1: 3.0, 2: 2.9} and points(result, "lr") == {1: 1e-4}
    assert any("no line end" in n.message for n in result.notes)


def test_crlf_line_endings():
    result = text("step 1 | loss 3.0\r\nstep 2 | loss 2.0\r\n[Warning] odd\r\n")
    assert points(result, "loss") == {1: 3.0, 2: 2.0}
    assert result.events[0].text == "[Warning] odd"


def test_garbage_and_binary_lines_are_counted():
    result = text(b"step 1 | loss 3.0\n\x00\x01\x02\xff\xfe junk\nstep 2 | loss 2.0\n\x07bell 5\n")
    assert points(result, "loss") == {1: 3.0, 2: 2.0}
    (garbage,) = [n for n in result.notes if "binary" in n.message]
    assert garbage.count == 2 and garbage.line == 2


def test_a_point_two_files_log_is_read_once(tmp_path):
    for name in ("a.log", "b.log"):
        (tmp_path / name).write_text("step 1 | loss nan | lr 0.5\nstep 2 | loss 2.0\n")
    (tmp_path / "c.log").write_text("step 1 | loss 9.0\n")  # a different value at the same step: a restart
    piece = textlog.read([tmp_path / n for n in ("a.log", "b.log", "c.log")], tmp_path)
    assert [(file, len(frame)) for file, frame in piece.frames] == [("a.log", 3), ("c.log", 1)]
    assert build_run(tmp_path, [piece]).events_of("restart")


def test_empty_file(tmp_path):
    path = tmp_path / "train.log"
    path.write_bytes(b"")
    result = textlog.read_file(path)
    assert result.frame is None and [n.message for n in result.notes] == ["empty file"]


def test_huge_single_line_is_skipped(tmp_path):
    path = tmp_path / "train.log"
    path.write_bytes(b"step 1 | loss 2.0\n" + b"x" * (2 * textlog.MAX_LINE_CHARS) + b"\nstep 2 | loss 1.0\n")
    result = textlog.read_file(path)
    assert points(result, "loss") == {1: 2.0, 2: 1.0}
    assert any("longer than" in n.message and n.line == 2 for n in result.notes)


def test_unreadable_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as error:
        textlog.read_file(tmp_path)  # a directory cannot be read as a log
    assert str(tmp_path) in str(error.value)


def test_a_byte_order_mark_alone_is_an_empty_file():
    result = text(b"\xfe\xff")  # found by test_arbitrary_bytes_never_raise
    assert result.frame is None and "empty file" in [n.message for n in result.notes]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600) | st.text(max_size=600).map(str.encode))
def test_arbitrary_bytes_never_raise(data):
    result = textlog.read_text(data)
    if result.frame is not None:
        assert result.frame["step"].min() >= 0 and result.frame["line"].min() >= 1


LINE_PIECES = st.sampled_from(["step 3 | loss 2.5", "iteration 5/ 10 | lm loss: 1.0E+00 |", "[Eval] loss: 1.5",
                               "[fp16] overflow: skipping step, loss scale 4 -> 2", "```", "nan", "12", "{'loss': 1}",
                               "\r", " ", "|", "loss:", "Step 1: KD Raw: 2", "\xb2", "¬≤", "\x00"])


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE_PIECES, max_size=40).map(lambda parts: "\n".join(parts)))
def test_arbitrary_mixes_of_log_shapes_never_raise(body):
    result = textlog.read_text(body)
    assert all(e.line >= 1 for e in result.events)


# --- sniffing ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, body, expected", [
    ("train.log", "step 1 | loss 2.0\n", True),
    ("slurm-123.out", "iter 1: loss 2.0, time 3.0ms, mfu 1.0%\n", True),
    ("stdout", "[fp16] overflow: skipping step, loss scale 4 -> 2\n", True),
    ("notes.txt", "We trained for a while and the loss went down.\n", False),
    ("metrics.json", "step 1 | loss 2.0\n", False),
    ("train.log", "\x00\x01step 1 | loss 2.0\n", False),
    ("README.md", "step 1 | loss 2.0\n", False),  # markdown: only code blocks count
    ("README.md", "text\n```\nstep 1 | loss 2.0\n```\n", True),
])
def test_sniff(tmp_path, name, body, expected):
    path = tmp_path / name
    path.write_text(body)
    assert textlog.sniff(path) is expected


def test_sniff_real_logs(real_runs):
    assert textlog.sniff(real_runs / "deepspeed_bert_overflow" / "train.log")
    assert textlog.sniff(real_runs / "bloom176b_spike" / "chronicles.md")
    assert not textlog.sniff(real_runs / "nanogpt_baseline" / "nanogpt-train-1806877.err")
    assert not textlog.sniff(real_runs / "opt175b_chronicles" / "10_percent_update.md")


def test_frame_shape_for_build_run():
    result = text("step 1 | loss 2.0\n")
    assert list(result.frame.columns) == ["step", "name", "value", "line"]
    assert result.frame["step"].dtype == np.int64 and result.frame["line"].dtype == np.int64


def _piece(result):
    from analyzer.run import Ingested

    piece = Ingested(textlog.FORMAT, events=list(result.events))
    piece.add_frame("log", result.frame)
    return piece


REPEATED_SHAPES = st.sampled_from([
    "step {i} | loss {v} | lr 1e-4", "iter {i}: loss {v}, time {v}ms, mfu {v}%",
    "Step {i}: KD Raw: {v}, Temperature²: 9.0",
    " iteration {i}/ 100 | lm loss: {v} | loss scale: 4.0 | number of nan iterations: 0 |", "{i} train {v}",
    "[Eval] loss: {v}, ppl: {v}", "validation loss: {v}", "[fp16] overflow: skipping step, loss scale {v} -> {v}",
    "[Warning] lm_loss produced non-finite value (nan); clamping to zero.", "x{v}y {i}", "step {i} | loss {v}-{v}",
    "\r {v}%|##| {i}/100 [00:01<00:02, {v}it/s]\rstep {i} | loss {v}"])
NUMBERS = st.sampled_from(["1", "2.5", "-0.5", "1e-4", "3.", ".25", "12E+3", "007", "nan", "1.2.3", "4-5"])


def assert_fast_path_reads_as_line_by_line(monkeypatch, body: str) -> None:
    fast = textlog.read_text(body)
    with monkeypatch.context() as patch:
        patch.setattr(textlog, "SMALL_GROUP", 10**9)
        slow = textlog.read_text(body)
    if fast.frame is None:
        assert slow.frame is None
    else:
        assert fast.frame.astype({"name": str}).equals(slow.frame.astype({"name": str}))
    assert fast.events == slow.events


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(REPEATED_SHAPES, st.integers(0, 50), NUMBERS), min_size=1, max_size=60))
def test_fast_path_equals_line_by_line(monkeypatch, rows):
    """The vectorised path (lines grouped by shape) reads exactly what parsing each line alone reads."""
    body = "".join(shape.format(i=i, v=v) + "\n" for shape, i, v in rows)
    assert_fast_path_reads_as_line_by_line(monkeypatch, body)


def test_hf_end_of_training_summary_is_no_step_value():
    result = text("step 100 | loss 2.0\n***** train metrics *****\n  epoch                    =      1.875\n"
                  "  train_loss               =     3.5303\n")
    assert points(result, "loss") == {100: 2.0} and set(result.frame["name"]) == {"loss"}


# --- other trainers: torchtune, llm.c, torchtitan, MMEngine/mmcv ------------------------------------------------------
# Lines are the trainers' own format strings filled in, or copied from their docs and issues (cited at each).

ANSI = {"red": "\033[31m", "green": "\033[32m", "yellow": "\033[33m", "blue": "\033[34m", "magenta": "\033[35m",
        "cyan": "\033[36m", "reset": "\033[39m", "orange": "\033[38;2;180;60;0m",
        "turquoise": "\033[38;2;54;234;195m"}  # pytorch/torchtitan torchtitan/tools/utils.py, class Color


def _torchtune_line(step: int, payload: dict) -> str:
    # pytorch/torchtune torchtune/training/metric_logging.py (9d571d91), DiskLogger.log_dict:
    # self._file.write(f"Step {step} | "); for name, data in payload.items(): self._file.write(f"{name}:{data} ")
    return f"Step {step} | " + "".join(f"{name}:{data} " for name, data in payload.items()) + "\n"


def _titan_line(step: int, loss: float, grad_norm: float, tps: float, tflops: float = 0.52, color=ANSI) -> str:
    # pytorch/torchtitan torchtitan/components/metrics.py (00fbaafa), MetricsProcessor.log, logger.info(...);
    # the prefix is torchtitan/tools/logging.py's "[titan] %(asctime)s - %(name)s - %(levelname)s - %(message)s"
    # under torchrun's "[rank0]:"
    c = color
    return ("[rank0]:[titan] 2025-10-30 14:32:58,897 - root - INFO - "
            f"{c['red']}step: {step:2}  {c['green']}loss: {loss:7.4f}  {c['orange']}grad_norm: {grad_norm:7.4f}  "
            f"{c['turquoise']}memory: {9.46:5.2f}GiB({64.99:.2f}%)  {c['blue']}tps: {round(tps):,}  "
            f"{c['cyan']}tflops: {tflops:,.2f}  {c['magenta']}mfu: {0.17:.2f}%{c['reset']}\n")


def _curve(step: float, broken_from: float | None = None, rise: bool = False) -> float:
    """A healthy loss curve; from `broken_from` on NaN, or rising (`rise`)."""
    loss = 1.2 + 2.0 * math.exp(-step / 60) + 0.02 * math.sin(step * 1.7)
    if broken_from is not None and step >= broken_from:
        loss = loss * (1 + 0.15 * (step - broken_from)) if rise else math.nan
    return loss


def _findings(tmp_path: Path, name: str, body: str) -> list[tuple[str, int]]:
    from analyzer.diagnose import diagnose_path

    (tmp_path / name).write_text(body)
    diagnosis = diagnose_path(tmp_path)
    assert diagnosis.run.formats == ("text",)
    return [(f.name, f.first_step) for f in diagnosis.findings]


def test_torchtune_disk_logger_lines():
    # copied from meta-pytorch/torchtune PR #1358 (a DiskLogger log_<unix time>.txt)
    result = text("Writing logs to /tmp/CodeLlama-7b-hf/logs/log_1723844072.txt\n"
                  "Step 1 | loss:2.085338592529297 lr:2e-05 tokens_per_second_per_gpu:57.828881833956174\n"
                  "Step 2 | loss:1.8718312978744507 lr:2e-05 tokens_per_second_per_gpu:405.044978758513\n")
    assert points(result, "loss") == {1: 2.085338592529297, 2: 1.8718312978744507}
    assert points(result, "lr") == {1: 2e-05, 2: 2e-05}
    assert points(result, "tokens_per_s") == {1: 57.828881833956174, 2: 405.044978758513}  # per GPU
    assert lines_of(result, "loss") == {1: 2, 2: 3}


def test_torchtune_trailing_space_tensor_values_and_nan():
    # meta-pytorch/torchtune PR #640 wrote "Step 0 | loss:1.7535516023635864 lr:2e-05 gpu_resources:13708965376 "
    body = ("Step 0 | loss:1.7535516023635864 lr:2e-05 gpu_resources:13708965376 \n"
            + _torchtune_line(1, {"loss": 1.5, "lr": 2e-05, "grad_norm": "tensor(0.8125, device='cuda:0', "
                                                                          "dtype=torch.bfloat16)"})
            + _torchtune_line(2, {"loss": math.nan, "grad_norm": "tensor(nan, device='cuda:0')"}))
    result = text(body)
    loss = points(result, "loss")
    assert loss[0] == 1.7535516023635864 and loss[1] == 1.5 and math.isnan(loss[2])
    assert points(result, "grad_norm")[1] == 0.8125 and math.isnan(points(result, "grad_norm")[2])
    assert points(result, "gpu_resources") == {0: 13708965376.0}


def test_torchtune_many_lines_fast_path_and_generic_step_lines_unchanged():
    body = "".join(_torchtune_line(s, {"loss": 2.0 - s / 1000, "lr": 2e-05}) for s in range(1, 101))
    assert points(text(body), "loss")[100] == 1.9
    generic = text("Step 5 | loss: 2.3 | lr: 1e-4\nStep 6 | loss:2.2\n")  # not torchtune's shape: read as before
    assert points(generic, "loss") == {5: 2.3, 6: 2.2} and points(generic, "lr") == {5: 1e-4}


def test_torchtune_stdout_line_after_its_progress_bar():
    # the recipes' pbar.set_description(f"{curr_epoch + 1}|{self.global_step}|Loss: {loss_to_log}") on stderr, then
    # StdoutLogger's line on stdout: in one terminal log the line follows the bar
    bar = "\r1|3|Loss: 1.17:  60%|######    | 3/5 [00:05<00:03,  1.60s/it]"
    result = text(bar + _torchtune_line(3, {"loss": 1.17, "lr": 2e-05}) + _torchtune_line(4, {"loss": 1.1}))
    assert points(result, "loss") == {3: 1.17, 4: 1.1}


def test_torchtune_healthy_run_end_to_end(tmp_path):
    body = "".join(_torchtune_line(s, {"loss": _curve(s), "lr": 2e-05, "tokens_per_second_per_gpu": 1500.0})
                   for s in range(1, 201))
    assert _findings(tmp_path, "log_1723844072.txt", body) == []


def test_torchtune_nan_loss_end_to_end(tmp_path):
    body = "".join(_torchtune_line(s, {"loss": _curve(s, 120), "lr": 2e-05, "tokens_per_second_per_gpu": 1500.0})
                   for s in range(1, 201))
    assert ("nonfinite-onset", 120) in _findings(tmp_path, "log_1723844072.txt", body)


# LitGPT (Lightning-AI/litgpt, litgpt/finetune/lora.py, fit()): fabric.print(f"Epoch {epoch+1} | iter {iter_num} step
# {step_count} | loss train: {loss:.3f}, val: {val_loss} | iter time: {ms:.2f} ms{' (step)' ...}") and, after an
# eval, fabric.print(f"iter {iter_num}: val loss {val_loss.item():.4f}, val time: {t1 * 1000:.2f} ms").
def test_litgpt_lines():
    result = text("Epoch 1 | iter 4 step 1 | loss train: 2.345, val: n/a | iter time: 120.52 ms (step)\n"
                  "iter 4: val loss 2.4000, val time: 1000.00 ms\n"
                  "Epoch 1 | iter 8 step 2 | loss train: 2.245, val: 2.400 | iter time: 119.98 ms (step)\n")
    assert points(result, "loss_train") == {4: 2.345, 8: 2.245}  # canonical name: loss (run.canonical_metric)
    assert points(result, "val_loss") == {4: 2.4}
    assert "step" not in set(result.frame["name"])  # the optimizer step beside the iteration is no metric


# timm (huggingface/pytorch-image-models, train.py, train_one_epoch): 'Train: {} [{:>4d}/{} ({:>3.0f}%)]  Loss: {:#.4g}
# ({:#.3g})  Time: {:.3f}s, {:>7.2f}/s  ({:.3f}s, {:>7.2f}/s)  LR: {:.3e}  Data: {:.3f} ({:.3f})'; recent versions add
# `Updates: N` after the progress and `CE:` / `KD:` after the loss; validate() logs 'Test: [{:>4d}/{}]  ...'.
def _timm_line(epoch: int, idx: int, loss: float, per_epoch: int = 1251, extra: str = "") -> str:
    return (f"Train: {epoch} [{idx:>4d}/{per_epoch} ({100 * idx / (per_epoch - 1):>3.0f}%)]  {extra}Loss: {loss:#.4g} "
            f"({loss:#.3g})  Time: 0.412s,  621.11/s  (0.480s,  533.33/s)  LR: 1.000e-05  Data: 0.012 (0.052)\n")


def test_timm_train_lines_step_is_epoch_times_updates_plus_index():
    result = text(_timm_line(0, 0, 6.934) + _timm_line(0, 50, 6.883)
                  + "Test: [   0/48]  Time: 1.234 (1.234)  Loss:  6.8000 (6.8000)  Acc@1:  0.1000 ( 0.1000)  "
                    "Acc@5:  0.5000 ( 0.5000)\n"
                  + _timm_line(1, 0, 6.5, extra="Updates: 1251  ").replace("Time:", "CE: 6.1 (6.1)  KD: 0.4 (0.4)  Time:"))
    assert points(result, "loss") == {0: 6.934, 50: 6.883, 1251: 6.5}  # the update's value, not the epoch's mean
    assert points(result, "lr") == {0: 1e-05, 50: 1e-05, 1251: 1e-05}
    assert points(result, "lm_loss") == {1251: 6.1} and points(result, "kd_loss") == {1251: 0.4}
    assert points(result, "step_time_s")[50] == 0.412 and points(result, "epoch") == {0: 0.0, 50: 0.0, 1251: 1.0}


def test_timm_healthy_run_end_to_end(tmp_path):
    body = "".join(_timm_line(s // 100, s % 100, _curve(s), per_epoch=100) for s in range(0, 200))
    assert _findings(tmp_path, "train.log", body) == []


def test_timm_diverging_run_end_to_end(tmp_path):
    body = "".join(_timm_line(s // 100, s % 100, _curve(s, 150), per_epoch=100) for s in range(0, 300, 2))
    assert ("nonfinite-onset", 150) in _findings(tmp_path, "train.log", body)


# Hand-written loops. yunjey/pytorch-tutorial (tutorials/01-basics/feedforward_neural_network/main.py):
# print('Epoch [{}/{}], Step [{}/{}], Loss: {:.4f}'.format(epoch+1, num_epochs, i+1, total_step, loss.item()))
def test_tutorial_epoch_and_step_in_brackets_give_the_global_step():
    body = "".join(f"Epoch [{e + 1}/3], Step [{i}/600], Loss: {2.0 - e / 10 - i / 6000:.4f}\n"
                   for e in range(3) for i in (100, 600))
    loss = points(text(body), "loss")
    assert loss == {100: 1.9833, 600: 1.9, 700: 1.8833, 1200: 1.8, 1300: 1.7833, 1800: 1.7}


@pytest.mark.parametrize("line, names", [
    ("Epoch {e}: train loss {a:.4f}, val loss {b:.4f}", ("train_loss", "val_loss")),
    ("Epoch {e}/30 - loss: {a:.4f} - val_loss: {b:.4f}", ("loss", "val_loss")),
    ("Epoch {e} | Loss train: {a:.4f}, Loss val: {b:.4f}", ("loss_train", "loss_val")),
    ("epoch {e}, loss={a:.4f}, val_loss={b:.4f}", ("loss", "val_loss")),
])
def test_a_line_per_epoch_gives_a_point_per_epoch(line, names):
    result = text("".join(line.format(e=e, a=2.0 - e / 100, b=2.1 - e / 100) + "\n" for e in range(1, 4)))
    assert points(result, names[0]) == {1: 1.99, 2: 1.98, 3: 1.97}
    assert points(result, names[1]) == {1: 2.09, 2: 2.08, 3: 2.07}


def test_epoch_lines_beside_step_lines_are_summaries_not_steps():
    result = text("".join(_nanogpt_line(s, 2.0 - s / 100) for s in range(10)) + "Epoch 1: train loss 1.5, val loss 1.6\n")
    assert points(result, "loss") == {s: round(2.0 - s / 100, 4) for s in range(10)}
    assert "train_loss" not in set(result.frame["name"])
    assert [(n.message, n.line, n.count) for n in result.notes] == [
        ("per-epoch summary lines not read: the file logs steps", 11, 1)]


def test_lightning_progress_bar_log_gives_the_loss_of_each_epoch():
    bar = "Epoch {e}: 100%|##########| 50/50 [00:01<00:00, 35.2it/s, loss={l}, v_num=0]\n"
    result = text(bar.format(e=0, l=0.512) + bar.format(e=1, l=0.412))
    assert points(result, "loss") == {0: 0.512, 1: 0.412} and set(result.frame["name"]) == {"loss"}


def test_per_epoch_log_end_to_end(tmp_path):
    healthy = "".join(f"Epoch {e}: train loss {_curve(e * 4):.4f}, val loss {_curve(e * 4) + 0.1:.4f}\n"
                      for e in range(1, 51))
    broken = "".join(f"Epoch {e}: train loss {_curve(e, 30):.4f}, val loss {_curve(e, 30) + 0.1:.4f}\n"
                     for e in range(1, 51))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _findings(tmp_path / "a", "train.log", healthy) == []
    assert ("nonfinite-onset", 30) in _findings(tmp_path / "b", "train.log", broken)


# OpenNMT-py (onmt/utils/statistics.py, Statistics.output): logger.info(("Step %s; acc: %6.2f; ppl: %5.2f; xent:
# %4.2f; " + "lr: %7.5f; %3.0f/%3.0f tok/s; %6.0f sec") % (step_fmt, ...)), step_fmt "%s/%5d" % (step, num_steps).
def test_opennmt_step_lines():
    result = text("[2024-01-01 10:00:00,000 INFO] Step 50/100000; acc: 30.50; ppl: 120.34; xent: 4.79; "
                  "lr: 0.00070; 29850/30120 tok/s;     12 sec\n")
    assert points(result, "xent") == {50: 4.79}  # canonical name: loss
    assert points(result, "ppl") == {50: 120.34} and points(result, "lr") == {50: 0.0007}


# llm.c (karpathy/llm.c). main.log: llmc/logger.h (046d0015) lines 37, 45, 53: "s:%d eval:%.4f\n",
# "s:%d tel:%.4f\n", "s:%d trl:%.4f lr:%.6f norm:%.2f\n"; train_gpt2.py writes "s:%d trl:%f\n".
LLMC_TRAIN, LLMC_VAL, LLMC_EVAL = "s:%d trl:%.4f lr:%.6f norm:%.2f\n", "s:%d tel:%.4f\n", "s:%d eval:%.4f\n"
# stdout: train_gpt2.cu (00247dca) main(), printf0(...) after the update
LLMC_CU = ("step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms | %.1f%% bf16 MFU | "
           "%.0f tok/s\n")


def _llmc_log(n: int, broken_from: int | None = None) -> str:
    out = []
    for step in range(n + 1):  # as train_gpt2.cu's loop: val at the top of a step, and once more after the last
        if step % 20 == 0 or step == n:
            out.append(LLMC_VAL % (step, _curve(step, broken_from) + 0.05))
        if step == n:
            break
        out.append(LLMC_TRAIN % (step, _curve(step, broken_from), 6e-4 * min(1, (step + 1) / 20), 1.0))
    return "".join(out).replace("nan", "-nan")  # glibc prints a negative NaN so


def test_llmc_main_log_lines():
    result = text(LLMC_VAL % (0, 10.9720) + LLMC_TRAIN % (0, 10.983, 0.0, 15.33) + LLMC_TRAIN % (1, 10.648, 6e-4,
                                                                                                  12.14)
                  + LLMC_EVAL % (1, 0.2495) + "s:2 trl:10.100000\n" + "s:3 trl:-nan lr:0.000600 norm:nan\n")
    loss = points(result, "loss")
    assert [loss[s] for s in (0, 1, 2)] == [10.983, 10.648, 10.1] and sorted(loss) == [0, 1, 2, 3]
    assert math.isnan(loss[3]) and math.isnan(points(result, "grad_norm")[3])
    assert points(result, "eval_loss") == {0: 10.972} and points(result, "eval_hellaswag_acc") == {1: 0.2495}
    assert points(result, "lr") == {0: 0.0, 1: 6e-4, 3: 6e-4} and points(result, "grad_norm")[1] == 12.14


def test_llmc_stdout_lines_take_main_logs_steps():
    # llm.c prints step + 1 where main.log writes step; `val loss` comes at the top of the step it evaluates
    nan = math.nan
    body = ("val loss %f\n" % 10.972 + LLMC_CU % (1, 74, 4.367857, nan, 15.342, nan, 6e-4, 394.95, 42.3, 1327493)
            + LLMC_CU % (2, 74, 4.2, 0.51, 11.0, -1.25, 6e-4, 390.1, 42.5, 1330000)
            + "HellaSwag: %d/%d = %f\n" % (2505, 10042, 0.249452) + "val loss %f\n" % 4.1)
    result = text(body)
    assert points(result, "loss") == {0: 4.367857, 1: 4.2} and points(result, "grad_norm") == {0: 15.342, 1: 11.0}
    assert points(result, "lr") == {0: 6e-4, 1: 6e-4} and points(result, "mfu") == {0: 42.3, 1: 42.5}
    assert points(result, "tokens_per_s") == {0: 1327493, 1: 1330000}
    assert points(result, "steps_per_s")[0] == pytest.approx(1000 / 394.95)
    assert points(result, "eval_loss") == {0: 10.972, 2: 4.1}  # the last one: after the last step, its step + 1
    assert points(result, "eval_hellaswag_acc") == {2: 0.249452}


def test_llmc_other_stdout_shapes():
    # train_gpt2.py: f"step {step+1:4d}/{args.num_iterations} | train loss {lossf:.6f} | norm {norm:.4f} |
    # lr {lr:.2e} | ({(t1-t0)*1000:.2f} ms | {tokens_per_second:.0f} tok/s)"
    py = (f"step {1:4d}/{74} | train loss {4.367857:.6f} | norm {15.342:.4f} | lr {6e-4:.2e} | "
          f"({394.95:.2f} ms | {1327493:.0f} tok/s)\n")
    old_cu = "step %4d/%d: train loss %f (%f ms, %d tok/s)\n" % (1, 74, 4.3, 394.9, 1327493)  # earlier train_gpt2.cu
    for line in (py, old_cu):
        result = text(line)
        assert list(points(result, "loss")) == [0] and points(result, "tokens_per_s") == {0: 1327493}
    # train_gpt2.c prints its loop's step; copied from karpathy/llm.c README.md ("The output looks like this")
    result = text("num_activations: 73323776\nval loss 5.252026\nstep 0: train loss 5.356189 (took 1452.121000 ms)\n"
                  "step 1: train loss 4.301069 (took 1288.673000 ms)\n")
    assert points(result, "loss") == {0: 5.356189, 1: 4.301069} and points(result, "eval_loss") == {0: 5.252026}
    assert points(result, "step_time_ms") == {0: 1452.121, 1: 1288.673}


def test_llmc_main_log_beside_its_stdout_is_one_run(tmp_path):
    (tmp_path / "main.log").write_text(_llmc_log(60))
    stdout = []
    for step in range(61):
        if step % 20 == 0 or step == 60:
            stdout.append("val loss %f\n" % (_curve(step) + 0.05))
        if step < 60:
            stdout.append(LLMC_CU % (step + 1, 60, _curve(step), math.nan, 1.0, math.nan,
                                     6e-4 * min(1, (step + 1) / 20), 390.0, 42.0, 1330000))
    (tmp_path / "train.out").write_text("".join(stdout))
    run = build_run(tmp_path, [textlog.read([tmp_path / "main.log", tmp_path / "train.out"], tmp_path)])
    assert not run.events_of("restart")  # %.4f in main.log and %7.6f on stdout are the same values
    assert run.series("eval_loss").index.tolist() == [0, 20, 40, 60]


def test_llmc_healthy_run_end_to_end(tmp_path):
    assert _findings(tmp_path, "main.log", _llmc_log(200)) == []


def test_llmc_nan_loss_end_to_end(tmp_path):
    assert ("nonfinite-onset", 150) in _findings(tmp_path, "main.log", _llmc_log(200, broken_from=150))


def test_torchtitan_lines_copied_from_a_run():
    # copied from pytorch/torchtitan PR #3393 (colour printing off)
    result = text("[rank0]:[titan] 2026-05-18 16:04:46,338 - root - INFO - step: 14  loss:  3.24405  grad_norm:  "
                  "0.8319  memory:  9.46GiB(64.99%)  tps: 7,282  tflops: 0.52  mfu: 0.17%\n"
                  "[rank0]:[titan] 2026-05-18 16:04:47,456 - root - INFO - step: 15  loss:  3.10680  grad_norm:  "
                  "0.8587  memory:  9.46GiB(64.99%)  tps: 7,334  tflops: 0.53  mfu: 0.17%\n")
    assert points(result, "loss") == {14: 3.24405, 15: 3.1068} and points(result, "grad_norm")[15] == 0.8587
    assert points(result, "tokens_per_s") == {14: 7282, 15: 7334} and points(result, "tflops")[14] == 0.52
    assert points(result, "memory_gib")[14] == 9.46 and points(result, "mfu")[15] == 0.17


def test_torchtitan_colours_thousands_and_validation():
    body = (_titan_line(1, 8.1661, 3.6855, 3502.4) + _titan_line(2, 6.1098, 4.6416, 1177138.2, tflops=1096.17)
            # MetricsProcessor.log_validation: f"{color.yellow}validate step: {step:2}  {color.green}loss:
            # {loss:7.4f}  {color.turquoise}memory: ...GiB(...%)  {color.blue}tps: {round(tps):,}{color.reset}"
            + f"{ANSI['yellow']}validate step: {2:2}  {ANSI['green']}loss: {5.5:7.4f}  {ANSI['turquoise']}memory: "
              f"{2.49:5.2f}GiB({3.14:.2f}%)  {ANSI['blue']}tps: {round(12345.6):,}{ANSI['reset']}\n")
    result = text(body)
    assert points(result, "loss") == {1: 8.1661, 2: 6.1098} and points(result, "grad_norm")[2] == 4.6416
    assert points(result, "tokens_per_s") == {1: 3502, 2: 1177138} and points(result, "tflops")[2] == 1096.17
    assert points(result, "eval_loss") == {2: 5.5} and points(result, "eval_tokens_per_s") == {2: 12346}


def test_torchtitan_shape_needs_its_fields():
    result = text("step: 5  we saw loss: 2.0  lr: 1e-4\n")  # prose after a step: not torchtitan's line
    assert result.frame is None or "loss" not in set(result.frame["name"])


def test_torchtitan_healthy_run_end_to_end(tmp_path):
    body = "".join(_titan_line(s, _curve(s), 0.9 + 0.05 * math.sin(s), 7300 + 20 * math.sin(s)) for s in range(1, 201))
    assert _findings(tmp_path, "torchtitan.out", body) == []


def test_torchtitan_gradient_explosion_end_to_end(tmp_path):
    body = "".join(_titan_line(s, _curve(s, 150, rise=True), 0.9 if s < 150 else 0.9 * 3 ** (s - 150), 7300)
                   for s in range(1, 201))
    names = {name for name, _ in _findings(tmp_path, "torchtitan.out", body)}
    assert {"grad-explosion", "loss-divergence"} <= names


# MMEngine: open-mmlab/mmengine mmengine/runner/log_processor.py (10322790), LogProcessor.get_log_after_iter:
# f"Epoch({mode}){cur_epoch_str}[{cur_iter_str}/{dataloader_len}]  " (cur_iter counts within the epoch) or
# f"Iter({mode}) [{cur_iter_str}/{runner.max_iters}]  ", then f"{key}: {value:.4e}" for lr, f"eta: {eta_str}  ",
# f"time: {:.4f}  data_time: {:.4f}  ", f"memory: {max_memory}  " and f"{name}: {val:.4f}" joined by two spaces;
# the prefix is MMLogger's "%(asctime)s - %(name)s - %(levelname)s - %(message)s".
def _mm_train_line(epoch: int, it: int, per_epoch: int, loss: float, eta: str = "0:01:00") -> str:
    return (f"2023/08/21 02:58:41 - mmengine - INFO - Epoch(train)  [{epoch}][{it:3d}/{per_epoch}]  "
            f"lr: {1e-2:.4e}  eta: {eta}  time: {0.1:.4f}  data_time: {0.01:.4f}  memory: 1234  loss: {loss:.4f}\n")


def test_mmengine_epoch_line_from_the_docs():
    # copied from open-mmlab/mmaction2 docs/en/advanced_guides/customize_logging.md
    result = text("08/21 02:58:41 - mmengine - INFO - Epoch(train) [1][10/25]  lr: 1.0000e-02  eta: 0:00:00  time: "
                  "0.0019  data_time: 0.0004  loss1: 0.8381  loss2: 0.9007  loss: 1.7388\n"
                  "08/21 02:58:41 - mmengine - INFO - Epoch(train) [2][20/25]  lr: 1.0000e-02  eta: 0:00:00  time: "
                  "0.0029  data_time: 0.0010  loss1: 0.1978  loss2: 0.4312  loss: 0.6290\n")
    assert points(result, "loss") == {10: 1.7388, 45: 0.629}  # (epoch - 1) * 25 + iteration in the epoch
    assert points(result, "epoch") == {10: 1.0, 45: 2.0} and points(result, "loss1")[45] == 0.1978
    assert points(result, "lr") == {10: 0.01, 45: 0.01} and points(result, "time_s")[10] == 0.0019
    assert points(result, "steps_per_s")[45] == pytest.approx(1 / 0.0029)


def test_mmengine_iteration_lines_validation_and_test():
    body = ("2023/08/21 02:58:41 - mmengine - INFO - Iter(train) [ 50/1000]  base_lr: 1.0000e-02 lr: 1.0000e-02  "
            "eta: 1 day, 2:03:04  time: 0.0019  data_time: 0.0004  memory: 1234  loss: nan  grad_norm: 1.5000\n"
            # get_log_after_iter for the validation pass (its own counter) and get_log_after_epoch's summary
            "2023/08/21 02:58:41 - mmengine - INFO - Iter(val) [100/313]    eta: 0:00:01  time: 0.0100  "
            "data_time: 0.0010  memory: 1234\n"
            "2023/08/21 02:58:41 - mmengine - INFO - Iter(val) [313/313]    accuracy/top1: 45.9300  accuracy/top5: "
            "91.6600  data_time: 0.0031  time: 0.0080\n"
            "2023/08/21 02:58:41 - mmengine - INFO - Epoch(test) [313/313]    accuracy/top1: 44.0000\n")
    result = text(body)
    assert math.isnan(points(result, "loss")[50]) and points(result, "grad_norm") == {50: 1.5}
    assert points(result, "memory_mb") == {50: 1234} and points(result, "base_lr") == {50: 0.01}
    assert points(result, "eval_accuracy/top1") == {50: 45.93} and points(result, "eval_accuracy/top5") == {50: 91.66}
    assert set(result.frame["step"]) == {50}  # neither validation counter nor the test pass is a training step


def test_mmcv_text_logger_lines():
    # open-mmlab/mmcv mmcv/runner/hooks/logger/text.py (797fc9a8), TextLoggerHook._log_info:
    # f'Epoch [{log_dict["epoch"]}][{log_dict["iter"]}/{len(runner.data_loader)}]\t' + f'{lr_str}, '
    # + f'eta: {eta_str}, ' + f'time: {:.3f}, data_time: {:.3f}, ' + f'memory: {memory}, '
    # + ', '.join(f'{name}: {val:.4f}')
    result = text("2021-03-01 10:00:00,000 - mmdet - INFO - Epoch [2][50/7330]\tlr: 1.000e-02, eta: 1 day, 2:03:04, "
                  "time: 0.512, data_time: 0.010, memory: 3456, loss_rpn_cls: 0.1234, loss: 0.5678\n"
                  "2021-03-01 11:00:00,000 - mmdet - INFO - Epoch(val) [2][500]\tbbox_mAP: 0.3760, bbox_mAP_50: "
                  "0.5810, bbox_mAP_copypaste: 0.376 0.581 0.404 0.215 0.410 0.495\n")
    assert points(result, "loss") == {7380: 0.5678} and points(result, "loss_rpn_cls") == {7380: 0.1234}
    assert points(result, "eval_bbox_map") == {7380: 0.376} and points(result, "eval_bbox_map_50") == {7380: 0.581}
    assert "eval_bbox_map_copypaste" not in set(result.frame["name"])  # a list of numbers, not one value


def test_mmengine_keys_with_numbers_in_a_repeated_shape():
    lines = [f"2023/08/21 02:58:41 - mmengine - INFO - Epoch(val) [{e}][100/100]    accuracy/top1: {40 + e:.4f}  "
             f"accuracy/top5: {80 + e:.4f}\n" for e in range(1, 9)]
    lines.insert(4, "2023/08/21 02:58:41 - mmengine - INFO - Epoch(val) [4][100/100]    accuracy/top2: 1.0000  "
                    "accuracy/top5: 2.0000\n")  # same skeleton, another key: read under its own name
    body = "".join(_mm_train_line(e, 100, 100, 1.0) + line for e, line in zip([1, 2, 3, 4, 4, 5, 6, 7, 8], lines))
    result = text(body)
    assert points(result, "eval_accuracy/top1")[800] == 48.0 and len(points(result, "eval_accuracy/top1")) == 8
    assert points(result, "eval_accuracy/top2") == {400: 1.0}


def test_mmengine_healthy_run_end_to_end(tmp_path):
    body = "".join(_mm_train_line(e, i, 250, _curve(((e - 1) * 250 + i) / 5))
                   for e in range(1, 5) for i in range(10, 251, 10))
    assert _findings(tmp_path, "20230821_025841.log", body) == []


def test_mmengine_nan_loss_end_to_end(tmp_path):
    body = "".join(_mm_train_line(e, i, 250, _curve(((e - 1) * 250 + i) / 5, 120))
                   for e in range(1, 5) for i in range(10, 251, 10))
    assert ("nonfinite-onset", 600) in _findings(tmp_path, "20230821_025841.log", body)


@pytest.mark.parametrize("name, body", [
    ("log_1723844072.txt", "Step 1 | loss:2.08 lr:2e-05 \n"),
    ("main.log", "s:0 trl:10.9830 lr:0.000000 norm:15.33\n"),
    ("train.out", "step: 1  loss:  8.1661  grad_norm:  3.6855  memory:  2.47GiB(3.12%)  tps: 3,502\n"),
    ("20230821_025841.log", "Iter(train) [ 50/1000]  lr: 1.0000e-02  loss: 2.3026\n"),
])
def test_sniff_other_trainers(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body)
    assert textlog.sniff(path)


def test_truncated_last_line_of_other_trainers():
    result = text("Step 1 | loss:2.0 lr:2e-05 \nStep 2 | loss:1.9 lr:2.5e-0")
    assert points(result, "loss") == {1: 2.0, 2: 1.9} and points(result, "lr") == {1: 2e-05}
    result = text(_titan_line(1, 8.0, 3.0, 1234.0, color=dict.fromkeys(ANSI, "")) + "step:  2  loss:  7.9000  tps: 1,2")
    assert points(result, "loss") == {1: 8.0, 2: 7.9} and points(result, "tokens_per_s") == {1: 1234}


OTHER_TRAINER_SHAPES = st.sampled_from([
    "Step {i} | loss:{v} lr:{v} grad_norm:tensor({v}, device='cuda:0') ", "s:{i} trl:{v} lr:{v} norm:{v}",
    "s:{i} tel:{v}", "step {i}/{i} | loss {v} (+{v}z)| norm {v} (-{v}z)| lr {v} | {v} ms | {v}% bf16 MFU | {v} tok/s",
    "val loss {v}", "HellaSwag: {i}/{i} = {v}", "\x1b[31mstep: {i}  \x1b[32mloss: {v}  \x1b[34mtps: {i},{i}\x1b[39m",
    "x - INFO - Epoch(train)  [{i}][{i}/{i}]  lr: {v}  eta: {i}:{i}:{i}  loss: {v}",
    "Epoch(val) [{i}][{i}/{i}]  acc/top{i}: {v}  d{i}.loss: {v}", "Iter(train) [{i}/{i}]  loss: {v}",
    "Epoch {i}/{i}", "{i}/{i} - {i}s - {i}ms/step - loss: {v} - val_loss: {v}",
    " eta: {i}:{i}:{i}  iter: {i}  total_loss: {v}  loss_cls: {v}    time: {v}  last_time: {v}   lr: {v}  max_mem: {i}M",
    "epoch     train_loss  valid_loss  accuracy  time    ", "{i}         {v}    {v}    {v}  {i}:{i}     ",
    "{i}: [default{i}]:iter {i}: loss {v}, time {v}ms"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(OTHER_TRAINER_SHAPES, st.integers(0, 50), NUMBERS), min_size=1, max_size=60))
def test_fast_path_equals_line_by_line_for_other_trainers(monkeypatch, rows):
    body = "".join(shape.format(i=i, v=v) + "\n" for shape, i, v in rows)
    assert_fast_path_reads_as_line_by_line(monkeypatch, body)


# --- multi-process logs: the rank that wrote a line -------------------------------------------------------------------
# Each prefix is the launcher's own format string filled in:
# - torch.distributed.elastic TailLog (pytorch/pytorch torch/distributed/elastic/multiprocessing/tail_log.py):
#   header = f"[{self._name}{local_rank}]:", name = the role ("default" under torchrun and accelerate launch, whose
#   --role defaults to "default"; the TailLog docstring's example is "[trainer0]:log_line1"); or the
#   TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE, "[${rank}]:" in local_elastic_agent.py's docstring;
# - PyTorch c10 logging (c10/util/Logging.cpp, MessageLogger): "[rank" << GLOBAL_RANK << "]:" before
#   "[W1030 14:32:58.123456789 file.cpp:12] "; torch/distributed/distributed_c10d.py _distributed_excepthook:
#   f"{excepthook_prefix}: {s}" with excepthook_prefix = f"[rank{get_rank()}]";
# - DeepSpeed log_dist (deepspeed/utils/logging.py): "[Rank {}] {}".format(my_rank, message) (my_rank -1 before
#   torch.distributed is up), under the logger format "[%(asctime)s] [%(levelname)s] [%(filename)s:%(lineno)d:
#   %(funcName)s] %(message)s"; the engine's _report_progress logs f"step={step}, skipped={self.skipped_steps},
#   lr={lr}, mom={mom}" (deepspeed/runtime/engine.py);
# - pdsh (chaos/pdsh src/pdsh/dsh.c): out("%S: %s", a->host, buf);
# - Slurm srun --label (SchedMD/slurm src/api/step_io.c, _build_label): xstrfmtcat(buf, "%*d: ", task_id_width,
#   task_id), the task id padded to the width of the largest;
# - Open MPI mpirun --tag-output: "[jobid,rank]<stdout>:" / "<stderr>:"; horovodrun (gloo): "[rank]<stdout>:".

def _nanogpt_line(step: int, loss: float) -> str:
    # karpathy/nanoGPT train.py: print(f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms, mfu {mfu*100:.2f}%")
    return f"iter {step}: loss {loss:.4f}, time 12.30ms, mfu 35.12%\n"


def ranks_of(result, name: str = "loss") -> dict[tuple[int, int], float]:
    frame = result.frame
    rows = frame[frame["name"] == name]
    return dict(zip(zip(rows["rank"].tolist(), rows["step"].tolist()), rows["value"].tolist()))


@pytest.mark.parametrize("prefix, rank", [
    ("[default1]:", 1), ("[default12]:", 12), ("[trainer3]:", 3), ("[5]:", 5), ("[rank2]:", 2),
    ("[rank2]:[default0]:", 2), ("[default0]:[rank2]:", 0),  # the outermost tag wins
    ("worker-1: [default3]:", 3), ("  [default7]:", 7),  # quoted with an indent (BigScience chronicles)
    ("1: ", 1), (" 3: ", 3), ("12: ", 12),  # srun --label, padded to the widest task id
    ("[1,2]<stdout>:", 2), ("[1,0]<stderr>:", 0), ("[3]<stdout>:", 3), ("[1,5]<stdout>: ", 5),  # mpirun, horovodrun
])
def test_rank_prefix_forms(prefix, rank):
    result = text(prefix + _nanogpt_line(100, 4.2345))
    assert ranks_of(result) == {(rank, 100): 4.2345}
    assert points(result, "mfu") == {100: 35.12}


def test_deepspeed_log_dist_rank():
    head = "[2023-07-24 13:21:21,248] [INFO] [logging.py:96:log_dist] "
    body = (head + "[Rank 0] step=10, skipped=0, lr=[0.0001], mom=[(0.9, 0.999)]\n"
            + head + "[Rank 1] step=10, skipped=0, lr=[0.0002], mom=[(0.9, 0.999)]\n")
    assert ranks_of(text(body), "lr") == {(0, 10): 0.0001, (1, 10): 0.0002}
    # before torch.distributed is up DeepSpeed writes [Rank -1]: no rank
    assert ranks_of(text(head + "[Rank -1] step=3, skipped=0, lr=[0.001]\n"), "lr") == {(0, 3): 0.001}


def test_pytorch_rank_prefix_on_warnings_and_tracebacks():
    result = text("[rank1]:iter 7: loss 3.0000, time 12.30ms, mfu 35.12%\n"
                  "[rank1]:[W1030 14:32:58.123456789 ProcessGroupNCCL.cpp:1234] Warning: loss is nan\n"
                  "[rank1]: Traceback (most recent call last):\n"
                  "[rank1]:   File \"train.py\", line 10, in <module>\n"
                  "[rank1]: RuntimeError: CUDA error: an illegal memory access was encountered\n")
    assert ranks_of(result) == {(1, 7): 3.0}
    assert [(e.kind, e.data.get("rank")) for e in result.events] == [("nan", 1), ("error", 1), ("error", 1)]


def test_pdsh_host_is_read_past_and_gives_no_rank():
    # DeepSpeed's multi-node runner: `pdsh -w worker-0,worker-1 ...`; one host runs several ranks behind one prefix
    result = text("worker-0: " + _nanogpt_line(1, 4.0) + "localhost: " + _nanogpt_line(2, 3.9)
                  + "ip-10-0-0-1.ec2.internal: " + _nanogpt_line(3, 3.8))
    assert points(result, "loss") == {1: 4.0, 2: 3.9, 3: 3.8} and "rank" not in result.frame
    head = "worker-1: [2023-07-24 13:21:21,248] [INFO] [logging.py:96:log_dist] [Rank 8] "
    assert ranks_of(text(head + "step=10, skipped=0, lr=[0.0001]\n"), "lr") == {(8, 10): 0.0001}


def test_srun_labelled_ranks_are_separate_series_and_events_keep_their_rank():
    body = "".join(f"{r:2d}: " + _nanogpt_line(s, 4.0 - s / 100 + r / 1000) for s in range(20) for r in (0, 10))
    result = text(body + "10: WARNING: loss is nan\n")
    run = build_run("run", [_piece(result)])
    assert run.series("loss").to_dict() == {s: round(4.0 - s / 100, 4) for s in range(20)}
    assert run.series("loss", rank=10).to_dict() == {s: round(4.01 - s / 100, 4) for s in range(20)}
    assert [(e.kind, e.data.get("rank")) for e in result.events] == [("nan", 10)]
    assert not run.events_of("restart")


def test_mpirun_tagged_traceback_is_an_error_of_its_rank():
    result = text("[1,1]<stdout>:" + _nanogpt_line(7, 3.0) + "[1,1]<stderr>:Traceback (most recent call last):\n"
                  "[1,1]<stderr>:RuntimeError: NCCL error\n")
    assert ranks_of(result) == {(1, 7): 3.0}
    assert [(e.kind, e.data.get("rank")) for e in result.events] == [("error", 1), ("error", 1)]


def test_a_key_is_no_host():
    # a host name needs a digit, `-` or `.`: `Loss: ` stays DeepSpeed's bare loss line (read at the step before it)
    assert points(text("iter 5: loss 4.0000, time 12.30ms, mfu 35.12%\nLoss: 3.5\n"), "loss") == {5: 3.5}


def test_two_ranks_interleaved_are_two_series():
    body = "".join(f"[default0]:{_nanogpt_line(s, 4.0 - s / 100)}[default1]:{_nanogpt_line(s, 4.01 - s / 100)}"
                   for s in range(50))
    result = text(body)
    run = build_run("run", [_piece(result)])
    assert run.series("loss").to_dict() == {s: round(4.0 - s / 100, 4) for s in range(50)}
    assert run.series("loss", rank=1).to_dict() == {s: round(4.01 - s / 100, 4) for s in range(50)}
    assert not run.events_of("restart")


def test_single_rank_prefixed_log():
    result = text("".join(f"[default0]:{_nanogpt_line(s, 4.0)}" for s in range(10)))
    assert set(result.frame["rank"]) == {0}
    # torchrun --local-ranks-filter 1 shows rank 1 alone: its series is the run's
    run = build_run("run", [_piece(text("".join(f"[default1]:{_nanogpt_line(s, 4.0)}" for s in range(10))))])
    assert set(run.scalars["rank"]) == {1} and len(run.series("loss")) == 10


def test_untagged_lines_in_a_tagged_log():
    # an excerpt that lost one line's tag: the point is the tagged trainer's; torchrun's own lines carry no tag
    result = text("[default7]:" + _nanogpt_line(1, 2.0) + _nanogpt_line(2, 1.9)
                  + "WARNING:torch.distributed.run:Setting OMP_NUM_THREADS environment variable\n"
                  + "[default3]:RuntimeError: CUDA error: unknown error\n")
    assert ranks_of(result) == {(7, 1): 2.0, (7, 2): 1.9}
    assert [(e.kind, e.step, e.data.get("rank")) for e in result.events] == [("warning", 2, None), ("error", 2, 3)]


def test_a_line_without_a_step_takes_its_own_ranks_step():
    # rank 1 runs a step behind rank 0: its NaN warning belongs to its own next step line, not to rank 0's
    result = text("[default0]:" + _nanogpt_line(4, 3.0) + "[default1]:" + _nanogpt_line(3, 3.1)
                  + "[default1]:WARNING: loss is nan\n" + "[default0]:" + _nanogpt_line(5, 2.9)
                  + "[default1]:" + _nanogpt_line(4, math.nan) + "[default0]:step 5: train loss 2.9, val loss 3.2\n")
    assert [(e.kind, e.step, e.data["rank"]) for e in result.events] == [("nan", 4, 1)]
    assert ranks_of(result, "val_loss") == {(0, 5): 3.2}


def test_rank_from_path():
    assert textlog.rank_from_path(Path("logs/abc_x1y2/attempt_0/3/stdout.log")) == 3
    assert textlog.rank_from_path(Path("logs/abc_x1y2/attempt_1/0/stderr.log")) == 0
    assert textlog.rank_from_path(Path("rank_logs/20240101120000_rank5.log")) == 5  # DeepSpeed --enable_each_rank_log
    assert textlog.rank_from_path(Path("run/3/stdout.log")) is None  # no attempt_N folder
    assert textlog.rank_from_path(Path("run/train.log")) is None


def test_per_rank_files_of_torchrun_log_dir(tmp_path):
    from analyzer.ingest import read_run

    for rank in (0, 1):  # a loss reduced across ranks: each rank's file prints the same value, still its own point
        folder = tmp_path / "none_k2j4" / "attempt_0" / str(rank)
        folder.mkdir(parents=True)
        (folder / "stdout.log").write_text("".join(_nanogpt_line(s, 4.0 - s / 100) for s in range(20)))
        (folder / "stderr.log").write_text("UserWarning: loss is nan\n" if rank else "")
    run = read_run(tmp_path)
    assert sorted(set(run.scalars["rank"])) == [0, 1]
    assert len(run.series("loss")) == 20 and len(run.series("loss", rank=1)) == 20
    assert [(e.kind, e.data.get("rank")) for e in run.events] == [("nan", 1)]


def test_two_rank_log_where_only_rank_1_goes_nan_end_to_end(tmp_path):
    from analyzer.diagnose import diagnose_path
    from analyzer.ingest import read_run

    body = "".join(f"[default0]:{_nanogpt_line(s, _curve(s))}[default1]:{_nanogpt_line(s, _curve(s, 120))}"
                   for s in range(200))
    (tmp_path / "train.log").write_text(body)
    diagnosis = diagnose_path(tmp_path)
    onset = [f for f in diagnosis.findings if f.name == "nonfinite-onset"]
    assert [(f.first_step, f.metrics["previous_clean_step"]) for f in onset] == [(120, 119)]
    assert "loss is NaN on rank 1" in onset[0].message
    assert read_run(tmp_path).series("loss").notna().all()  # rank 0, the series other detectors read, stays clean


RANK_PREFIXES = st.sampled_from(["", "[default{r}]:", "[rank{r}]:", "[trainer{r}]:", "worker-{r}: ",
                                 "worker-{r}: [default{r}]:", "[{r}]:", "[Rank {r}] "])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(RANK_PREFIXES, st.integers(0, 3), REPEATED_SHAPES, st.integers(0, 50), NUMBERS),
                min_size=1, max_size=60))
def test_fast_path_equals_line_by_line_with_ranks(monkeypatch, rows):
    body = "".join(prefix.format(r=r) + shape.format(i=i, v=v) + "\n" for prefix, r, shape, i, v in rows)
    assert_fast_path_reads_as_line_by_line(monkeypatch, body)
